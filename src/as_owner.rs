//! Running a query over an app table as that table's owner.
//!
//! Planning a query over a table evaluates code its owner wrote: index
//! expressions and partial-index predicates (when the relcache loads them),
//! extended-statistics expressions (at every planning), row-security
//! policies. pg_byok's SQL functions run as the extension's owner (a
//! superuser), so a query they planned themselves would run that code as the
//! superuser. Instead, every query pg_byok runs over an app table goes
//! through [`run_as_owner`]: the user id is switched to the table's owner
//! under `SECURITY_RESTRICTED_OPERATION | SECURITY_LOCAL_USERID_CHANGE`, and
//! GUC changes are rolled back afterwards — exactly what Postgres does for
//! ANALYZE, VACUUM, REINDEX and REFRESH MATERIALIZED VIEW on that table. The
//! owner's code then runs as the owner, who gains nothing.
//!
//! Plans are prepared once per backend and query text and kept (the text
//! holds the table's current schema-qualified name, read by OID under a
//! lock, so a renamed table gets a new plan and a look-alike never inherits
//! an old one); Postgres' plan cache replans them after any DDL on the
//! table, and does so inside the switched user id, because preparation and
//! execution both happen here.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiTupleTable};

/// Plans kept per backend; past this many (tables renamed over and over),
/// the cache starts afresh.
const MAX_PLANS: usize = 64;

type PlanKey = (String, Vec<pg_sys::Oid>);

thread_local! {
    /// Query text + argument types → its kept plan. Postgres backends run
    /// one thread, so this is per backend.
    static PLANS: RefCell<HashMap<PlanKey, Rc<OwnedPreparedStatement>>> =
        RefCell::new(HashMap::new());
}

/// Puts back the user id and security context saved at construction, on
/// every exit: normal return, or an ERROR unwinding through this frame.
/// (Postgres would restore them at (sub)transaction abort too; this makes
/// the restoration not depend on where the error is caught.)
struct RestoreUser {
    user: pg_sys::Oid,
    context: i32,
}

impl Drop for RestoreUser {
    fn drop(&mut self) {
        // SAFETY: SetUserIdAndSecContext only assigns two backend globals;
        // the values were read from GetUserIdAndSecContext in this backend.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) }
    }
}

/// Run `f` as `owner`, in a security-restricted operation with its own GUC
/// nest level (settings the owner's code changes are undone).
pub fn as_user<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut user = pg_sys::Oid::INVALID;
    let mut context = 0;
    // SAFETY: both pointers are to live locals; the function only writes them.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut context) };
    let restore = RestoreUser { user, context };
    let restricted =
        (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32;
    // SAFETY: as in RestoreUser::drop; owner is a role OID read from pg_class.
    unsafe { pg_sys::SetUserIdAndSecContext(owner, context | restricted) };
    // SAFETY: NewGUCNestLevel only increments a counter. On an ERROR the
    // (sub)transaction abort pops this level; on success we pop it below.
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    let result = f();
    // SAFETY: pops exactly the level opened above, undoing any SET LOCAL /
    // set_config(…, true) the owner's code made, as Postgres does after
    // ANALYZE and REFRESH MATERIALIZED VIEW.
    unsafe { pg_sys::AtEOXact_GUC(false, nest) };
    drop(restore);
    result
}

/// Prepare (once per backend) and run `query` with `args`, as `owner`;
/// `read` turns the result into a value before SPI's memory is released.
pub fn run_as_owner<R>(
    owner: pg_sys::Oid,
    query: &str,
    args: Vec<DatumWithOid<'_>>,
    read: impl FnOnce(SpiTupleTable<'_>) -> R,
) -> R {
    let types: Vec<pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
    let key = (query.to_owned(), types);
    as_user(owner, || {
        Spi::connect(|client| {
            // The borrow ends before the query runs: the owner's code may
            // re-enter pg_byok (with its own privileges), and must find the
            // cache usable.
            let cached = PLANS.with(|plans| plans.borrow().get(&key).cloned());
            let plan = match cached {
                Some(plan) => plan,
                None => {
                    let pg_types: Vec<PgOid> = key.1.iter().map(|o| PgOid::from(*o)).collect();
                    let plan = Rc::new(
                        client
                            .prepare(query, &pg_types)
                            .unwrap_or_else(|e| {
                                panic!("pg_byok: preparing an app-table query: {e}")
                            })
                            .keep(),
                    );
                    PLANS.with(|plans| {
                        let mut plans = plans.borrow_mut();
                        if plans.len() >= MAX_PLANS {
                            plans.clear();
                        }
                        plans.insert(key.clone(), Rc::clone(&plan));
                    });
                    plan
                }
            };
            let table = client
                .select(&*plan, None, &args)
                .unwrap_or_else(|e| panic!("pg_byok: an app-table query: {e}"));
            read(table)
        })
    })
}
