//! The pg_byok background worker: flushes the shared use counters
//! (usage.rs) into `byok.key_usage` and applies audit retention.
//!
//! One worker per cluster, registered in `_PG_init` only when the library
//! is preloaded, connected to the database `byok.usage_database` names (as
//! pg_cron's cron.database_name). It wakes every `byok.usage_flush_interval`
//! seconds and once more on SIGTERM (a clean shutdown), so a clean shutdown
//! loses no counted use. On a hot standby it writes nothing: it notices
//! recovery and waits for the next tick; the counters stay in shared memory
//! (`byok.key_usage_live`) and are flushed if the standby is promoted. A
//! failed flush is an ERROR that ends the worker (Postgres restarts it after
//! 5 s); the counters are subtracted only after a flush commits, so
//! nothing is lost meanwhile.

use crate::settings::{AUDIT_RETENTION_DAYS, USAGE_FLUSH_INTERVAL};
use crate::usage;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use pgrx::Uuid;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Audit rows deleted per transaction, and batches per tick: retention
/// catches up over several ticks without holding up the flushes.
const PRUNE_BATCH: i64 = 10_000;
const PRUNE_BATCHES_PER_TICK: usize = 10;

pub fn register() {
    BackgroundWorkerBuilder::new("pg_byok usage flusher")
        .set_type("pg_byok usage flusher")
        .set_library("pg_byok")
        .set_function("byok_usage_worker_main")
        .enable_spi_access()
        // Also on a hot standby: it publishes which database it serves and
        // waits, so use_key there counts in shared memory.
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn byok_usage_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = crate::settings::usage_database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // SAFETY: set by BackgroundWorkerInitializeConnection just above.
    let db = unsafe { pg_sys::MyDatabaseId };
    usage::set_flusher_db(db.to_u32());
    // SAFETY: MyProc is this worker's own PGPROC, set up before its main
    // function runs.
    usage::set_flusher_proc(Some(unsafe { (*pg_sys::MyProc).pgprocno }));
    log!("pg_byok usage flusher started in database \"{database}\"");
    let mut installed_logged = false;
    loop {
        let interval = u64::try_from(USAGE_FLUSH_INTERVAL.get())
            .unwrap_or(10)
            .max(1);
        // Woken early when a backend has filled half the counters.
        let running = BackgroundWorker::wait_latch(Some(Duration::from_secs(interval)));
        usage::flush_asked_done();
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a worker to apply a reload.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // SAFETY: reads shared recovery state.
        if !unsafe { pg_sys::RecoveryInProgress() } {
            let ready = BackgroundWorker::transaction(installed);
            if ready {
                flush_once();
                if running {
                    prune_tick();
                }
            } else if !installed_logged {
                log!(
                    "pg_byok usage flusher: pg_byok 0.2.0 is not installed in database \"{database}\"; \
                     nothing to flush there (set byok.usage_database to the database that uses pg_byok)"
                );
                installed_logged = true;
            }
        }
        if !running {
            break;
        }
    }
    usage::set_flusher_proc(None);
}

/// Whether this database has pg_byok with its usage table (0.2.0).
fn installed() -> bool {
    Spi::get_one::<bool>("SELECT to_regclass('byok.key_usage') IS NOT NULL AND to_regprocedure('byok._count_uses(uuid[], bigint[], timestamptz[], bigint[], timestamptz[])') IS NOT NULL")
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// One flush in a transaction of its own, then the counters settled.
fn flush_once() {
    // SAFETY: plain read of a backend global.
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let batch = usage::snapshot(Some(db));
    if batch.is_empty() {
        return;
    }
    let moved = batch.clone();
    let missing = BackgroundWorker::transaction(move || write_counts(&moved));
    // SAFETY: plain clock read.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    usage::settle(&batch, &missing, now);
    usage::note_flush(now);
}

/// Write counters to byok.key_usage (and keys.last_used_at) in the current
/// transaction; returns the key ids it did not find.
pub(crate) fn write_counts(batch: &[(usage::Slot, usage::Count)]) -> Vec<[u8; 16]> {
    let mut keys = Vec::with_capacity(batch.len());
    let mut roles = Vec::with_capacity(batch.len());
    let mut hours = Vec::with_capacity(batch.len());
    let mut uses = Vec::with_capacity(batch.len());
    let mut last = Vec::with_capacity(batch.len());
    for (slot, count) in batch {
        let (Ok(hour), Ok(at)) = (
            TimestampWithTimeZone::try_from(slot.hour),
            TimestampWithTimeZone::try_from(count.last_used),
        ) else {
            continue;
        };
        keys.push(Uuid::from_bytes(slot.key_id));
        roles.push(i64::from(slot.role));
        hours.push(hour);
        uses.push(i64::try_from(count.uses).unwrap_or(i64::MAX));
        last.push(at);
    }
    let missing = Spi::get_one_with_args::<Vec<Uuid>>(
        "SELECT byok._count_uses($1, $2, $3, $4, $5)",
        &[
            keys.into(),
            roles.into(),
            hours.into(),
            uses.into(),
            last.into(),
        ],
    )
    .unwrap_or_else(|e| panic!("pg_byok usage flush: {e}"))
    .unwrap_or_default();
    missing.iter().map(|u| *u.as_bytes()).collect()
}

/// Retention: up to PRUNE_BATCHES_PER_TICK batches, each its own
/// transaction, while the oldest audit row is older than the retention.
fn prune_tick() {
    for _ in 0..PRUNE_BATCHES_PER_TICK {
        let deleted = BackgroundWorker::transaction(|| prune_audit(PRUNE_BATCH));
        if deleted < PRUNE_BATCH {
            break;
        }
    }
}

/// Set only while `prune_audit` runs, in this process: the audit trail's
/// append-only trigger lets a DELETE through only then (`_audit_pruning`).
static PRUNING: AtomicBool = AtomicBool::new(false);

struct PruningGuard;

impl PruningGuard {
    fn start() -> Self {
        PRUNING.store(true, Ordering::Relaxed);
        PruningGuard
    }
}

impl Drop for PruningGuard {
    fn drop(&mut self) {
        PRUNING.store(false, Ordering::Relaxed);
    }
}

/// Delete up to `batch` of the oldest audit rows (by id) that are older
/// than `byok.audit_retention_days`, in the current transaction; returns
/// how many went. The oldest row is looked at first, so a tick with nothing
/// to prune costs one index probe.
pub(crate) fn prune_audit(batch: i64) -> i64 {
    let days = AUDIT_RETENTION_DAYS.get();
    if days <= 0 {
        return 0;
    }
    // A scalar subquery: an empty audit trail gives false, not "no row".
    let due = Spi::get_one_with_args::<bool>(
        "SELECT coalesce((SELECT at < clock_timestamp() - make_interval(days => $1) \
                            FROM byok.audit_log ORDER BY id LIMIT 1), false)",
        &[days.into()],
    )
    .unwrap_or_else(|e| panic!("pg_byok audit retention: {e}"))
    .unwrap_or(false);
    if !due {
        return 0;
    }
    let _pruning = PruningGuard::start();
    Spi::connect_mut(|client| {
        let deleted = client
            .update(
                "DELETE FROM byok.audit_log WHERE id IN \
                   (SELECT id FROM byok.audit_log ORDER BY id LIMIT $1) \
                   AND at < clock_timestamp() - make_interval(days => $2)",
                None,
                &[batch.into(), days.into()],
            )
            .unwrap_or_else(|e| panic!("pg_byok audit retention: {e}"));
        i64::try_from(deleted.len()).unwrap_or(i64::MAX)
    })
}

/// For the audit trail's append-only trigger (sql/bootstrap.sql): true only
/// inside `prune_audit` in this process, and only for a row older than the
/// retention. No SQL caller can set the flag.
#[pg_extern(volatile, name = "_audit_pruning")]
#[search_path(pg_catalog, pg_temp)]
fn audit_pruning(at: Option<TimestampWithTimeZone>) -> bool {
    let days = AUDIT_RETENTION_DAYS.get();
    if !PRUNING.load(Ordering::Relaxed) || days <= 0 {
        return false;
    }
    let Some(at) = at else { return false };
    // SAFETY: plain clock read.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let cutoff = now - i64::from(days) * 86_400_000_000;
    pg_sys::TimestampTz::from(at) < cutoff
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::tests_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn a_flush_moves_a_keys_counters_to_the_table_and_last_used_at() {
        let key = openai_key('f');
        let id = add("openai", &key);
        validate_all("valid");
        // Counted in shared memory only where a worker serves the database
        // (here: pgrx_tests, flushing hourly); elsewhere written through.
        for _ in 0..3 {
            Spi::run(&format!("SELECT byok.use_key('{WS}', 'openai')")).unwrap();
        }
        let uuid = pgrx::Uuid::from_bytes(*uuid::Uuid::parse_str(&id).unwrap().as_bytes());
        let mine: Vec<_> = crate::usage::snapshot(None)
            .into_iter()
            .filter(|(s, _)| s.key_id == *uuid.as_bytes())
            .collect();
        let missing = super::write_counts(&mine);
        assert!(missing.is_empty(), "the key is visible to this transaction");
        crate::usage::settle(&mine, &missing, 0);
        let (table, live) = Spi::get_two::<i64, i64>(&format!(
            "SELECT (SELECT coalesce(sum(uses), 0)::bigint FROM byok.key_usage WHERE key_id = '{id}'),
                    (SELECT coalesce(sum(uses), 0)::bigint FROM byok.key_usage_live WHERE key_id = '{id}')"
        ))
        .unwrap();
        assert_eq!((table, live), (Some(3), Some(0)));
        // keys.last_used_at moves to the hour (a key's row is written at
        // most once an hour): within an hour before the last counted use.
        // Uses written through (the worker not serving yet) each call
        // _count_uses, so the row keeps the first of them.
        let used = Spi::get_one::<bool>(&format!(
            "SELECT k.last_used_at <= u.last_used_at
                AND k.last_used_at > u.last_used_at - interval '1 hour'
               FROM byok.keys k JOIN byok.key_usage u ON u.key_id = k.id WHERE k.id = '{id}'"
        ))
        .unwrap();
        assert_eq!(used, Some(true));
    }

    #[pg_test]
    fn retention_deletes_only_audit_rows_past_it() {
        // An empty trail (as in a fresh database) prunes nothing, and fails not.
        Spi::run("ALTER TABLE byok.audit_log DISABLE TRIGGER audit_log_no_update_delete").unwrap();
        Spi::run("DELETE FROM byok.audit_log").unwrap();
        Spi::run("ALTER TABLE byok.audit_log ENABLE TRIGGER audit_log_no_update_delete").unwrap();
        assert_eq!(super::prune_audit(100), 0);
        Spi::run(
            "INSERT INTO byok.audit_log (at, actor_role, action, detail) VALUES
               (clock_timestamp() - interval '400 days', 'tester', 'add', 'old'),
               (clock_timestamp() - interval '10 days', 'tester', 'add', 'recent')",
        )
        .unwrap();
        // byok.audit_retention_days is 365 (the default).
        assert_eq!(super::prune_audit(100), 1);
        let left = Spi::get_one::<Vec<String>>(
            "SELECT array_agg(detail ORDER BY id) FROM byok.audit_log WHERE actor_role = 'tester'",
        )
        .unwrap()
        .unwrap();
        assert_eq!(left, vec!["recent".to_string()]);
        assert_eq!(super::prune_audit(100), 0, "nothing is due");
        // Outside prune_audit the guard holds, for old rows too.
        Spi::run(
            "INSERT INTO byok.audit_log (at, actor_role, action) \
             VALUES (clock_timestamp() - interval '400 days', 'tester', 'add')",
        )
        .unwrap();
        assert_eq!(
            sqlstate_of("DELETE FROM byok.audit_log WHERE actor_role = 'tester'").as_deref(),
            Some("42501")
        );
    }
}
