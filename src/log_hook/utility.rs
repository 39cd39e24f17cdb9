//! Keys in utility statements, before pg_stat_statements stores their text.
//!
//! pg_stat_statements replaces constants by `$n` in plannable statements,
//! but stores utility statements (`DO`, `CALL`, `EXPLAIN`, `COPY`, `SET`,
//! `DECLARE … CURSOR`, `CREATE TABLE … AS`, …) verbatim, in its view and in
//! a file under the data directory. This `ProcessUtility_hook` hands the
//! rest of the chain (pg_stat_statements, then Postgres) a copy of the query
//! text in which every key-shaped run is masked (letters and digits become
//! `x`, dashes stay) except its last 4 characters, **keeping every byte
//! offset**: statement locations, error
//! positions and pg_stat_statements' cut of a multi-statement string stay
//! valid. Execution is unaffected: utility commands run from their parse
//! trees, not from the text, which only serves as a label (error positions
//! use the original text, via `debug_query_string`). As side effects
//! `pg_prepared_statements.statement` and `pg_cursors.statement` show the
//! masked text too.
//!
//! To see the statement before pg_stat_statements does, the hook must be
//! the outermost one, whatever the order of `shared_preload_libraries`; see
//! `log_hook::install` for how.
//!
//! The hook is not `#[pg_guard]`ed on purpose: errors raised by the utility
//! command must travel through it untouched (pgrx would re-raise them as its
//! own, losing fields). It holds nothing that needs dropping while it calls
//! down the chain, catches any panic of its own code, and calls nothing that
//! can raise before that.

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pgrx::pg_sys;

use super::{key_ranges_of_bytes, may_hold_key, palloc_cstring};
use crate::settings::REDACT_LOGS;

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

unsafe extern "C-unwind" {
    /// The same symbol as `pg_sys::standard_ProcessUtility`, without pgrx's
    /// error-converting wrapper (see the module docs).
    #[link_name = "standard_ProcessUtility"]
    fn raw_standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// Install the hook as the outermost `ProcessUtility_hook` (called by
/// `log_hook::install_hooks`, see there for when).
///
/// # Safety
/// Postmaster startup or library load, single thread.
pub(super) unsafe fn install_process_utility() {
    // SAFETY: caller's contract.
    unsafe {
        let ours: pg_sys::ProcessUtility_hook_type = Some(byok_process_utility);
        let current = pg_sys::ProcessUtility_hook;
        if current.map(|f| f as usize) == ours.map(|f| f as usize) {
            return;
        }
        PREV_PROCESS_UTILITY = current;
        pg_sys::ProcessUtility_hook = ours;
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn byok_process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // Everything Rust owns is dropped inside this call; from here on the
    // frame holds only plain values, so an ERROR raised below may jump over it.
    let text = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: query_string is NULL or the NUL-terminated source text.
        unsafe { masked_query_string(query_string) }
    }))
    .unwrap_or(query_string);
    // SAFETY: our own static, set once at startup.
    let prev = unsafe { PREV_PROCESS_UTILITY };
    // SAFETY: passing Postgres' own arguments down the chain, with a query
    // text of the same length that lives in the current memory context
    // (which outlives this call).
    unsafe {
        call_down(
            prev,
            pstmt,
            text,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        );
    }
    if text != query_string {
        // The copy is ours and nothing keeps it past the call (whoever needs
        // the text later copies it: PREPARE, DECLARE CURSOR, pg_stat_statements).
        // Free it now: a SQL-language function hands every utility statement
        // its whole body, in a context that lives until the outer query ends,
        // so one copy per statement per call would pile up. Not reached when
        // the command raises an ERROR: then the context's reset frees it.
        // SAFETY: `text` was palloc'd by masked_query_string in the context
        // that was current on entry, which is still alive on normal return.
        unsafe { pgrx::pg_sys::pfree(text.cast_mut().cast()) };
    }
}

/// The next `ProcessUtility` in the chain: the hook installed before ours,
/// or Postgres' own.
///
/// # Safety
/// Postgres' `ProcessUtility` arguments, unchanged but for the query text.
#[allow(clippy::too_many_arguments)]
unsafe fn call_down(
    prev: pg_sys::ProcessUtility_hook_type,
    pstmt: *mut pg_sys::PlannedStmt,
    text: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: the caller's contract.
    unsafe {
        match prev {
            Some(prev) => prev(
                pstmt,
                text,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => raw_standard_process_utility(
                pstmt,
                text,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}

/// `query_string` itself, or (when it holds a key and redaction is on) a
/// same-length masked copy in the current memory context. Never raises.
///
/// # Safety
/// `query_string` is NULL or NUL-terminated.
unsafe fn masked_query_string(query_string: *const c_char) -> *const c_char {
    if query_string.is_null() || !REDACT_LOGS.get() {
        return query_string;
    }
    // SAFETY: caller's contract.
    let bytes = unsafe { CStr::from_ptr(query_string) }.to_bytes();
    let Some(masked) = mask_same_length(bytes) else {
        return query_string;
    };
    // SAFETY: the current context is valid during ProcessUtility; masked
    // has no NUL (only key bytes were replaced, by 'x').
    let copy = unsafe { palloc_cstring(pg_sys::CurrentMemoryContext, &[&masked]) };
    if copy.is_null() {
        query_string // out of memory: the statement still runs
    } else {
        copy
    }
}

/// `bytes` with each key-shaped run (byok-core's `key_ranges`, the rule
/// used everywhere, with bytes that are not UTF-8 counted as key characters:
/// [`key_ranges_of_bytes`]) overwritten (see [`blank`]) except its last 4
/// characters, same length; `None` when there is none.
fn mask_same_length(bytes: &[u8]) -> Option<Vec<u8>> {
    if !may_hold_key(bytes) {
        return None;
    }
    let ranges = key_ranges_of_bytes(bytes);
    if ranges.is_empty() {
        return None;
    }
    let mut out = bytes.to_vec();
    for (start, end) in ranges {
        blank(&mut out[start..end.saturating_sub(4).max(start)]);
    }
    Some(out)
}

/// Overwrite key characters with `x`, keeping every `-`. Letters cannot
/// open or close a quote, a comment or an operator, and keeping the dashes
/// keeps any `--` comment where it was, so the masked text lexes into the
/// same tokens at the same offsets (pg_stat_statements re-lexes the text of
/// a statement analysed inside a utility command, e.g. `PREPARE`, to find
/// its constants). `sk-` becomes `xx-`, so nothing is key-shaped anymore.
fn blank(run: &mut [u8]) {
    for b in run.iter_mut().filter(|b| **b != b'-') {
        *b = b'x';
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn same_length_masking_keeps_offsets_and_the_last_four() {
        let k = crate::tests_support::anthropic_key('z');
        let q = format!("SELECT 1; DO $$ BEGIN PERFORM length('{k}'); END $$; -- Bearer{k}");
        let m = mask_same_length(q.as_bytes()).unwrap();
        assert_eq!(m.len(), q.len());
        let m = String::from_utf8(m).unwrap();
        // The blanked run is still a long stretch of key characters (so the
        // log hook would mask it again), but none of the key is left.
        assert!(!m.contains("sk-") && !m.contains("zzzzzzzz"), "{m}");
        let masked_key = format!("xx-xxx-xxxxx-{}zzAA", "x".repeat(91));
        assert_eq!(masked_key.len(), k.len());
        // Glued to "Bearer", the whole 40+ stretch is masked, "Bearer" too.
        assert_eq!(
            m,
            format!("SELECT 1; DO $$ BEGIN PERFORM length('{masked_key}'); END $$; -- xxxxxx{masked_key}")
        );
    }

    #[pg_test]
    fn dashes_stay_so_comments_stay() {
        let k = format!("sk-{}--{}", "a".repeat(30), "b".repeat(30));
        let m = mask_same_length(k.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(m).unwrap(),
            format!("xx-{}--{}bbbb", "x".repeat(30), "x".repeat(26))
        );
    }

    #[pg_test]
    fn text_without_a_key_is_not_copied() {
        assert!(mask_same_length(b"DO $$ BEGIN PERFORM 1; END $$").is_none());
        assert!(mask_same_length(b"SET search_path = 'sk-learn'").is_none());
        assert!(mask_same_length("é sk-short é".as_bytes()).is_none());
    }

    #[pg_test]
    fn the_hook_is_installed_outermost() {
        // SAFETY: reading a hook pointer.
        let current = unsafe { pg_sys::ProcessUtility_hook };
        assert_eq!(
            current.map(|f| f as usize),
            Some(byok_process_utility as *const () as usize),
            "pg_byok's ProcessUtility_hook is the outermost one"
        );
    }
}
