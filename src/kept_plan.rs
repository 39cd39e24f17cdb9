//! SPI plans kept for a backend's life, for the calls on the hot path
//! (use_key, the read of a vault-stored key): parsing and planning a query
//! costs more than running it. Postgres re-plans a kept plan when a table
//! or function it depends on changes, so a kept plan never runs against a
//! stale catalog; what it calls is resolved under the pinned search_path
//! (pinned_path.rs) when it is (re-)planned, and it refuses to run under
//! any other.

use pgrx::pg_sys::{PgBuiltInOids, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::OnceCell;

/// Where a kept plan lives: a `thread_local!` cell, one per statement.
pub(crate) type PlanCell = std::thread::LocalKey<OnceCell<OwnedPreparedStatement>>;

/// Run `f` with the kept plan of `sql`, preparing it on first use
/// (`writes`: the statement writes, so it must not run read-only).
pub(crate) fn with_plan<'c, R>(
    cell: &'static PlanCell,
    client: &mut SpiClient<'c>,
    sql: &'static str,
    types: &[PgBuiltInOids],
    writes: bool,
    f: impl FnOnce(&OwnedPreparedStatement, &mut SpiClient<'c>) -> R,
) -> R {
    // A kept plan is re-planned, and so resolves names, under whatever
    // search_path is current: only ever the pinned one.
    crate::pinned_path::require_pinned();
    cell.with(|c| {
        let plan = c.get_or_init(|| {
            let oids: Vec<PgOid> = types.iter().map(|t| PgOid::BuiltIn(*t)).collect();
            let prepared = if writes {
                client.prepare_mut(sql, &oids)
            } else {
                client.prepare(sql, &oids)
            };
            prepared
                .unwrap_or_else(|e| panic!("pg_byok: preparing a kept statement failed: {e}"))
                .keep()
        });
        f(plan, client)
    })
}
