//! The log redaction hook (`byok.redact_logs`, issue 5).
//!
//! Postgres calls `emit_log_hook` for every report that will be written to
//! the server log, before it is formatted for any destination (stderr,
//! csvlog, jsonlog, syslog). While `byok.redact_logs` is on, this hook masks
//! every key-shaped run (byok-core's `redact`, the rule used everywhere) in
//! each field the server writes: message, detail, detail_log, hint,
//! context, internal query and backtrace.
//!
//! The `STATEMENT:` line is not a field of the report: the log writers copy
//! it from the global `debug_query_string`. When that text would be written
//! for this report and holds a key, the hook sets `hide_stmt` (the original
//! is not written) and appends a redacted copy, labelled
//! `STATEMENT (redacted):`, to `detail_log`, the one field that reaches the
//! server log and never the client. The global itself is left alone: other
//! code (and other extensions) may hold or free that pointer.
//!
//! The hook runs on every log line, so a line without a key costs one scan
//! per field and allocates nothing. It never calls anything that can raise
//! a Postgres error (allocation uses `MCXT_ALLOC_NO_OOM`), never panics
//! across the FFI boundary, and fails closed: a line it cannot redact is not
//! written to the server log at all.
//!
//! The hook edits the report itself, so the client also receives the masked
//! message, detail, hint and context of a report that was logged.
//!
//! `utility.rs` (installed by the same `install`, governed by the same
//! setting) masks keys in the text of utility statements before
//! pg_stat_statements stores it.

use std::borrow::Cow;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use byok_core::redact::redact;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::settings::REDACT_LOGS;

mod utility;

/// Label of the redacted statement appended to `detail_log`.
const STATEMENT_LABEL: &[u8] = b"STATEMENT (redacted):  ";

/// The hook that was installed before ours (another extension's), called
/// after redaction so it sees masked text too.
static mut PREV_EMIT_LOG_HOOK: pg_sys::emit_log_hook_type = None;

static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;

/// Install the hooks (this file's `emit_log_hook` and `utility.rs`'s
/// `ProcessUtility_hook`). Called once from `_PG_init`.
///
/// Both must be the outermost hooks of their kind, so that every other
/// library's hook (a log shipper, pg_stat_statements) only ever sees masked
/// text, whatever the order of `shared_preload_libraries`. When preloaded
/// they are therefore installed from `shmem_request_hook`, which the
/// postmaster runs after every preloaded library's `_PG_init` (backends
/// inherit them by fork); when loaded into a single backend, every preloaded
/// library's hooks are already in place, so they are installed at once.
pub fn install() {
    // SAFETY: _PG_init runs on the only thread, during library load; these
    // statics are ours and read only by our hooks.
    unsafe {
        if pg_sys::process_shared_preload_libraries_in_progress {
            PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(byok_shmem_request);
        } else {
            install_hooks();
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn byok_shmem_request() {
    // SAFETY: our own static, set once in install().
    let prev = unsafe { PREV_SHMEM_REQUEST };
    if let Some(prev) = prev {
        // SAFETY: the previously installed hook, called as Postgres would.
        unsafe { prev() };
    }
    // SAFETY: the postmaster calls shmem_request_hook once, after all
    // preloaded libraries are loaded, on its only thread.
    unsafe { install_hooks() };
}

/// # Safety
/// Library load or postmaster startup, single thread.
unsafe fn install_hooks() {
    // SAFETY: caller's contract.
    unsafe {
        let ours: pg_sys::emit_log_hook_type = Some(byok_emit_log_hook);
        let current = pg_sys::emit_log_hook;
        // Never chain to ourselves (a second call changes nothing).
        if current.map(|f| f as usize) != ours.map(|f| f as usize) {
            PREV_EMIT_LOG_HOOK = current;
            pg_sys::emit_log_hook = ours;
        }
        utility::install_process_utility();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn byok_emit_log_hook(edata: *mut pg_sys::ErrorData) {
    if !edata.is_null() && REDACT_LOGS.get() {
        // Nothing below is expected to panic; if it does, the line is not
        // written (it may still hold a key), and the panic stops here
        // instead of turning into an ERROR raised inside error reporting.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: Postgres passes the report being emitted, valid and
            // exclusively ours for the duration of the call.
            unsafe { redact_error_data(edata) }
        }));
        if !matches!(outcome, Ok(true)) {
            // SAFETY: as above; clearing output_to_server is the documented
            // way for a hook to suppress the server-log copy of a report.
            unsafe { (*edata).output_to_server = false };
        }
    }
    // SAFETY: a plain read of our own static, set once in install().
    let prev = unsafe { PREV_EMIT_LOG_HOOK };
    if let Some(prev) = prev {
        // SAFETY: calling the previously installed hook with the report
        // Postgres gave us, as the hook contract requires.
        unsafe { prev(edata) };
    }
}

/// Mask every key-shaped run in the report's fields and, when needed, swap
/// the `STATEMENT:` line for a redacted copy. Returns false when a field
/// could not be replaced (allocation failed), in which case the caller
/// keeps the report out of the server log.
///
/// # Safety
/// `edata` must point to a valid `ErrorData` whose string fields are NULL
/// or NUL-terminated strings allocated with palloc (as `elog.c` makes them).
unsafe fn redact_error_data(edata: *mut pg_sys::ErrorData) -> bool {
    // SAFETY: caller's contract; every field pointer is checked for NULL
    // inside redact_field.
    unsafe {
        let e = &mut *edata;
        let cx = if e.assoc_context.is_null() {
            pg_sys::ErrorContext
        } else {
            e.assoc_context
        };
        let mut ok = true;
        for field in [
            &mut e.message,
            &mut e.detail,
            &mut e.detail_log,
            &mut e.hint,
            &mut e.context,
            &mut e.internalquery,
            &mut e.backtrace,
        ] {
            ok &= redact_field(cx, field);
        }
        ok && redact_statement(cx, e)
    }
}

/// Replace `*field` by a redacted copy allocated in `cx` when it holds a
/// key; the original is zeroed and freed. No allocation when it holds none.
///
/// # Safety
/// `*field` is NULL or a palloc'd NUL-terminated string owned by the report.
unsafe fn redact_field(cx: pg_sys::MemoryContext, field: &mut *mut c_char) -> bool {
    if field.is_null() {
        return true;
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let bytes = unsafe { CStr::from_ptr(*field) }.to_bytes();
    let Some(redacted) = redact_bytes(bytes) else {
        return true; // fast path: nothing key-shaped, nothing allocated
    };
    // SAFETY: cx is the report's memory context; redacted has no NUL
    // (redaction only removes bytes or adds "…" and ASCII key characters).
    let copy = unsafe { palloc_cstring(cx, &[&redacted]) };
    if copy.is_null() {
        return false;
    }
    // SAFETY: the original is exclusively the report's (FreeErrorDataContents
    // would pfree it); zero it so the key does not linger in freed memory.
    unsafe { zero_and_pfree(*field) };
    *field = copy;
    true
}

/// When this report will be followed by a `STATEMENT:` line holding a key,
/// hide that line and append a redacted copy to `detail_log` instead.
///
/// # Safety
/// `e` is the report being emitted (see [`redact_error_data`]).
unsafe fn redact_statement(cx: pg_sys::MemoryContext, e: &mut pg_sys::ErrorData) -> bool {
    // SAFETY: plain reads of backend-local globals on the backend's thread.
    let (query, min_level) =
        unsafe { (pg_sys::debug_query_string, pg_sys::log_min_error_statement) };
    // Mirrors elog.c's check_log_of_query(): these are exactly the reports
    // the stderr, csvlog and jsonlog writers append the statement to.
    if e.hide_stmt || query.is_null() || !is_log_level_output(e.elevel, min_level) {
        return true;
    }
    // SAFETY: debug_query_string is NULL or a NUL-terminated query text.
    let query = unsafe { CStr::from_ptr(query) }.to_bytes();
    let Some(redacted) = redact_bytes(query) else {
        return true;
    };
    // detail_log replaces detail in the server log, so it must carry the
    // (already redacted) detail along.
    let base_ptr = if !e.detail_log.is_null() {
        e.detail_log
    } else {
        e.detail
    };
    let base: &[u8] = if base_ptr.is_null() {
        b""
    } else {
        // SAFETY: a field of the report, NUL-terminated.
        unsafe { CStr::from_ptr(base_ptr) }.to_bytes()
    };
    let sep: &[u8] = if base.is_empty() { b"" } else { b"\n" };
    // SAFETY: as in redact_field; no part holds a NUL.
    let combined = unsafe { palloc_cstring(cx, &[base, sep, STATEMENT_LABEL, &redacted]) };
    if combined.is_null() {
        return false;
    }
    if !e.detail_log.is_null() {
        // SAFETY: the old detail_log is the report's own palloc'd string,
        // already copied into `combined`.
        unsafe { pg_sys::pfree(e.detail_log.cast()) };
    }
    e.detail_log = combined;
    e.hide_stmt = true;
    true
}

/// elog.c's `is_log_level_output` (static there): whether a report of
/// `elevel` passes a threshold of `log_min_level`, with LOG ranked between
/// ERROR and FATAL.
fn is_log_level_output(elevel: i32, log_min_level: i32) -> bool {
    let (log, log_server_only, warning_client_only, error, fatal) = (
        pg_sys::LOG as i32,
        pg_sys::LOG_SERVER_ONLY as i32,
        pg_sys::WARNING_CLIENT_ONLY as i32,
        pg_sys::PGERROR as i32,
        pg_sys::FATAL as i32,
    );
    if elevel == log || elevel == log_server_only {
        log_min_level == log || log_min_level <= error
    } else if elevel == warning_client_only {
        false
    } else if log_min_level == log {
        elevel >= fatal
    } else {
        elevel >= log_min_level
    }
}

/// `bytes` with every key-shaped run masked, or `None` (no allocation) when
/// there is none. Log text is in the server encoding and may not be UTF-8
/// (another database of the cluster, e.g. SQL_ASCII, writes the same log):
/// then a byte that is not part of valid UTF-8 counts as a key character, so
/// a key broken by such a byte is still masked whole (head and tail), and
/// every other byte is kept as it is.
fn redact_bytes(bytes: &[u8]) -> Option<Vec<u8>> {
    if !may_hold_key(bytes) {
        return None;
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        return match redact(text) {
            Cow::Borrowed(_) => None,
            Cow::Owned(masked) => Some(masked.into_bytes()),
        };
    }
    let ranges = key_ranges_of_bytes(bytes);
    if ranges.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0;
    for (start, end) in ranges {
        out.extend_from_slice(&bytes[copied..start]);
        // The mask of byok-core: '…' and the last 4 characters, here bytes
        // (every byte of a range is an ASCII key character or a lone byte).
        out.extend_from_slice("…".as_bytes());
        out.extend_from_slice(&bytes[end.saturating_sub(4).max(start)..end]);
        copied = end;
    }
    out.extend_from_slice(&bytes[copied..]);
    Some(out)
}

/// byok-core's [`key_ranges`] of text that may not be UTF-8: a byte that is
/// not part of valid UTF-8 counts as a key character (see [`redact_bytes`]).
///
/// [`key_ranges`]: byok_core::redact::key_ranges
pub(crate) fn key_ranges_of_bytes(bytes: &[u8]) -> Vec<(usize, usize)> {
    if std::str::from_utf8(bytes).is_ok() {
        return byok_core::redact::key_ranges(bytes);
    }
    let mut probe = bytes.to_vec();
    let mut pos = 0;
    for chunk in bytes.utf8_chunks() {
        pos += chunk.valid().len();
        let bad = chunk.invalid().len();
        probe[pos..pos + bad].fill(b'x');
        pos += bad;
    }
    byok_core::redact::key_ranges(&probe)
}

/// byok-core's cheap pre-check (`sk-`, or a long stretch of key
/// characters): the fast path of every log line, no UTF-8 validation, no
/// allocation.
pub(crate) fn may_hold_key(bytes: &[u8]) -> bool {
    byok_core::redact::may_hold_key(bytes)
}

/// A NUL-terminated concatenation of `parts`, allocated in `cx`; NULL when
/// memory is short (never raises an ERROR: this runs inside error
/// reporting).
///
/// # Safety
/// `cx` is a valid memory context; no part contains a NUL byte.
unsafe fn palloc_cstring(cx: pg_sys::MemoryContext, parts: &[&[u8]]) -> *mut c_char {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let flags = (pg_sys::MCXT_ALLOC_NO_OOM | pg_sys::MCXT_ALLOC_HUGE) as i32;
    // SAFETY: NO_OOM makes the allocator return NULL instead of raising;
    // HUGE lifts the 1 GB limit, so no size here can raise either.
    let dst = unsafe { pg_sys::MemoryContextAllocExtended(cx, len + 1, flags) } as *mut u8;
    if dst.is_null() {
        return ptr::null_mut();
    }
    let mut at = 0;
    for part in parts {
        // SAFETY: dst has len + 1 bytes; the parts add up to len.
        unsafe { ptr::copy_nonoverlapping(part.as_ptr(), dst.add(at), part.len()) };
        at += part.len();
    }
    // SAFETY: at == len, the last byte of the allocation.
    unsafe { *dst.add(at) = 0 };
    dst.cast()
}

/// Overwrite a NUL-terminated palloc'd string with zeros, then free it.
///
/// # Safety
/// `p` is a live palloc'd NUL-terminated string nobody else will use.
unsafe fn zero_and_pfree(p: *mut c_char) {
    // SAFETY: caller's contract; strlen bytes are inside the allocation.
    unsafe {
        let len = CStr::from_ptr(p).to_bytes().len();
        ptr::write_bytes(p, 0, len);
        pg_sys::pfree(p.cast());
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn key() -> String {
        crate::tests_support::anthropic_key('q')
    }

    /// A palloc'd copy of `s` in the current memory context.
    fn pstr(s: &str) -> *mut c_char {
        let c = CString::new(s).unwrap();
        // SAFETY: pstrdup copies a NUL-terminated string into CurrentMemoryContext.
        unsafe { pg_sys::pstrdup(c.as_ptr()) }
    }

    fn text(p: *const c_char) -> Option<String> {
        // SAFETY: test-owned fields, NULL or NUL-terminated.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    #[test]
    fn key_free_bytes_are_not_copied() {
        assert!(redact_bytes(b"").is_none());
        assert!(redact_bytes(b"duration: 0.1 ms  statement: SELECT 1").is_none());
        assert!(redact_bytes(b"sk-learn \xff\xfe ask-me").is_none());
    }

    #[test]
    fn the_fast_path_looks_for_the_prefix_only() {
        assert!(!may_hold_key(b""));
        assert!(!may_hold_key(b"s"));
        assert!(!may_hold_key(b"plain log line \xff with - dashes sk"));
        assert!(may_hold_key(b"x sk-"));
        assert!(may_hold_key(b"sk-learn"));
        assert!(may_hold_key(&[b'k'; 40]));
    }

    #[test]
    fn a_key_broken_by_an_invalid_byte_is_masked_whole() {
        let k = key();
        let (head, tail) = k.split_at(k.len() - 30);
        let mut input = b"key ".to_vec();
        input.extend_from_slice(head.as_bytes());
        input.push(0xff);
        input.extend_from_slice(tail.as_bytes());
        input.extend_from_slice(b" \xfe end");
        let mut expected = b"key ".to_vec();
        expected.extend_from_slice("…qqAA".as_bytes());
        expected.extend_from_slice(b" \xfe end");
        assert_eq!(redact_bytes(&input).unwrap(), expected);
    }

    #[test]
    fn bytes_around_invalid_utf8_are_kept() {
        let k = key();
        let mut input = b"\xffa ".to_vec();
        input.extend_from_slice(k.as_bytes());
        input.extend_from_slice(b" \xfe");
        let mut expected = b"\xffa ".to_vec();
        expected.extend_from_slice("…qqAA".as_bytes());
        expected.extend_from_slice(b" \xfe");
        assert_eq!(redact_bytes(&input).unwrap(), expected);
    }

    #[pg_test]
    fn every_field_and_the_statement_are_masked() {
        let k = key();
        let query = CString::new(format!("SELECT byok.add_key(x, 'anthropic', '{k}')")).unwrap();
        let mut e = pg_sys::ErrorData::default();
        // SAFETY: a synthetic report whose fields are palloc'd in the current
        // context, which outlives this test function.
        unsafe {
            e.elevel = pg_sys::PGERROR as i32;
            e.output_to_server = true;
            e.assoc_context = pg_sys::CurrentMemoryContext;
            e.message = pstr(&format!("bad key {k}"));
            e.detail = pstr(&format!("Key: {k}."));
            e.hint = pstr("no key here");
            e.context = pstr(&format!("SQL function with {k}"));
            e.internalquery = pstr(&format!("SELECT '{k}'"));
            let saved = pg_sys::debug_query_string;
            pg_sys::debug_query_string = query.as_ptr();
            let ok = redact_error_data(&mut e);
            pg_sys::debug_query_string = saved;
            assert!(ok);
        }
        assert_eq!(text(e.message).unwrap(), "bad key …qqAA");
        assert_eq!(text(e.detail).unwrap(), "Key: …qqAA.");
        assert_eq!(text(e.hint).unwrap(), "no key here");
        assert_eq!(text(e.context).unwrap(), "SQL function with …qqAA");
        assert_eq!(text(e.internalquery).unwrap(), "SELECT '…qqAA'");
        assert!(e.hide_stmt);
        assert_eq!(
            text(e.detail_log).unwrap(),
            "Key: …qqAA.\nSTATEMENT (redacted):  SELECT byok.add_key(x, 'anthropic', '…qqAA')"
        );
    }

    #[pg_test]
    fn a_statement_that_would_not_be_logged_is_left_alone() {
        let k = key();
        let query = CString::new(format!("SELECT '{k}'")).unwrap();
        let mut e = pg_sys::ErrorData::default();
        // SAFETY: as above.
        unsafe {
            e.elevel = pg_sys::NOTICE as i32;
            e.assoc_context = pg_sys::CurrentMemoryContext;
            e.message = pstr("plain");
            let saved = (pg_sys::debug_query_string, pg_sys::log_min_error_statement);
            pg_sys::debug_query_string = query.as_ptr();
            pg_sys::log_min_error_statement = pg_sys::PGERROR as i32;
            let ok = redact_error_data(&mut e);
            pg_sys::debug_query_string = saved.0;
            pg_sys::log_min_error_statement = saved.1;
            assert!(ok);
        }
        assert!(!e.hide_stmt);
        assert!(e.detail_log.is_null());
        assert_eq!(text(e.message).unwrap(), "plain");
    }

    #[pg_test]
    fn the_log_hook_is_installed_outermost() {
        // SAFETY: reading a hook pointer.
        let current = unsafe { pg_sys::emit_log_hook };
        assert_eq!(
            current.map(|f| f as usize),
            Some(byok_emit_log_hook as *const () as usize),
            "pg_byok's emit_log_hook is the outermost one"
        );
    }

    #[test]
    fn log_level_ranking_matches_elog_c() {
        let (log, err, warn, fatal, debug1) = (
            pg_sys::LOG as i32,
            pg_sys::PGERROR as i32,
            pg_sys::WARNING as i32,
            pg_sys::FATAL as i32,
            pg_sys::DEBUG1 as i32,
        );
        assert!(is_log_level_output(log, err));
        assert!(is_log_level_output(log, debug1));
        assert!(!is_log_level_output(log, fatal));
        assert!(is_log_level_output(err, err));
        assert!(!is_log_level_output(warn, err));
        assert!(!is_log_level_output(err, log));
        assert!(is_log_level_output(fatal, log));
        assert!(!is_log_level_output(
            pg_sys::WARNING_CLIENT_ONLY as i32,
            debug1
        ));
    }
}
