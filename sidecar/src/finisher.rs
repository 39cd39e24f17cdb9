//! The verdict writer: job tasks hand their verdicts here, and it writes
//! whatever has queued up with one `byok.finish_jobs` call (one round trip,
//! one commit), on its own connection. While one batch is being written the
//! next gathers, so batches grow with the load by themselves: one verdict
//! at a time for a trickle (no added wait), hundreds per commit when a deep
//! queue drains.
//!
//! The batch is only a faster path: when it cannot be used (an extension
//! without `finish_jobs`, a refused verdict that fails its batch, a lost
//! connection) every job of the batch is told to write its verdict itself
//! with `finish_job`, which keeps the per-job retries and error reports.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::db::{self, Db, Finish, FinishRequest, Prepared};
use crate::job::Lease;
use crate::state::Shared;

/// Most verdicts per `finish_jobs` call (the function takes up to 1,000).
pub const MAX_BATCH: usize = 500;

/// Runs until every sender is gone (the last job task and `Shared`).
/// `shared` is weak so that this task does not keep the state alive.
pub async fn run(db: Db, shared: Weak<Shared>, mut rx: mpsc::UnboundedReceiver<FinishRequest>) {
    let mut prepared = Prepared::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let written = write(&db, &mut prepared, &batch).await;
        let mut statuses = match written {
            Ok(rows) => rows.into_iter().collect::<HashMap<i64, String>>(),
            Err(e) => {
                prepared = Prepared::default();
                if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) {
                    tracing::info!("byok.finish_jobs is missing (an older pg_byok): writing verdicts one by one");
                    if let Some(sh) = shared.upgrade() {
                        sh.disable_batch_finish();
                    }
                } else {
                    tracing::warn!(jobs = batch.len(), error = %db::describe(&e), "byok.finish_jobs failed; writing this batch's verdicts one by one");
                }
                HashMap::new()
            }
        };
        for r in batch.drain(..) {
            let _ = r.reply.send(statuses.remove(&r.lease.job_id));
        }
    }
}

async fn write(
    db: &Db,
    prepared: &mut Prepared,
    batch: &[FinishRequest],
) -> Result<Vec<(i64, String)>, tokio_postgres::Error> {
    let Some(client) = db.client(Instant::now() + Duration::from_secs(2)).await else {
        // No connection: each job retries on its own within its lease.
        return Ok(Vec::new());
    };
    let statement = prepared.get(&client, db::FINISH_BATCH_SQL).await?;
    let items: Vec<(Lease, &Finish)> = batch.iter().map(|r| (r.lease, &r.finish)).collect();
    db::finish_batch(&client, &statement, &items).await
}
