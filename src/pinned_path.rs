//! The search_path pg_byok's own queries resolve names under, pinned only
//! when a query is about to run.
//!
//! Every pg_byok function declares `SET search_path = pg_catalog, pg_temp`,
//! so no name or operator in its queries can resolve to an object an app
//! role created. `byok.use_key` is the one exception: its hot path runs no
//! query and resolves no name (the key row is read from its index by oid,
//! opened in Rust, and counted in shared memory), and applying the SET
//! clause at every call was about 4 % of the call. It pins the same
//! search_path with [`pinned`] before anything that may query; a kept plan
//! refuses to run under any other ([`require_pinned`]), so a path that
//! forgets fails loudly instead of running with the caller's search_path.

use crate::error::ExtError;
use pgrx::pg_sys;
use std::ffi::CStr;

/// The value every pg_byok function runs its queries under.
const PINNED: &CStr = c"pg_catalog, pg_temp";

/// Run `f` with search_path pinned to `pg_catalog, pg_temp`, in a GUC nest
/// level of its own, as a function's SET clause does.
pub(crate) fn pinned<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: NewGUCNestLevel only increments a counter. On an ERROR the
    // (sub)transaction abort pops this level; on success we pop it below.
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    // SAFETY: both strings are NUL-terminated constants; GUC_ACTION_SAVE
    // at the level just opened is what fmgr_security_definer does for a
    // function's SET clause. search_path is PGC_USERSET, so this cannot
    // fail for lack of privilege.
    unsafe {
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            PINNED.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
    let result = f();
    // SAFETY: pops exactly the level opened above, restoring the caller's
    // search_path.
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    result
}

/// Raise an internal error unless search_path is the pinned one.
pub(crate) fn require_pinned() {
    // SAFETY: namespace_search_path is the GUC's current value, a
    // NUL-terminated string owned by guc.c (never NULL once the GUC system
    // is up, which it is in any backend that runs SQL).
    let current = unsafe { CStr::from_ptr(pg_sys::namespace_search_path) };
    if current != PINNED {
        ExtError::Unpinned.raise()
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn pinned_sets_and_restores_the_callers_search_path() {
        Spi::run("SET search_path = public, pg_catalog").unwrap();
        let inside = super::pinned(|| {
            super::require_pinned();
            Spi::get_one::<String>("SHOW search_path").unwrap().unwrap()
        });
        assert_eq!(inside, "pg_catalog, pg_temp");
        let after = Spi::get_one::<String>("SHOW search_path").unwrap().unwrap();
        assert_eq!(after, "public, pg_catalog");
    }

    #[pg_test(error = "a pg_byok query was about to run without its pinned search_path")]
    fn a_kept_plan_refuses_the_callers_search_path() {
        Spi::run("SET search_path = public, pg_catalog").unwrap();
        super::require_pinned();
    }
}
