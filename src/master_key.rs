//! Where the master keyring comes from, and the one place that holds it.
//!
//! Loaded from the file that `byok.master_key_file` names, else from the
//! server's `BYOK_MASTER_KEY` environment variable. When the library is
//! preloaded this happens once in the postmaster, and every backend inherits
//! the keyring through fork; when it is loaded lazily, a backend loads it on
//! first use. Nothing here is reachable from SQL: no function returns key
//! bytes, and the setting holds only a path.
//!
//! Rotation without a restart: after a configuration reload (SIGHUP,
//! `pg_reload_conf()`), each backend reads the keyring file again the next
//! time it needs a key. The trigger is Postgres's own `PgReloadTime`, which
//! every process updates when it processes SIGHUP and which a new backend
//! inherits from the postmaster; comparing it costs one load per call, and
//! the file is read only once per reload. A file that fails to load on
//! reload is reported (WARNING) and the keyring already in use is kept, the
//! way Postgres keeps its old settings when postgresql.conf is broken. The
//! environment variable is scrubbed at first load, so a keyring from it
//! cannot be reloaded.

use crate::error::ExtError;
use crate::settings::MASTER_KEY_FILE;
use byok_core::keyring::Keyring;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex, PoisonError};

const ENV_VAR: &str = "BYOK_MASTER_KEY";
const FROM_FILE: &str = "file";
const FROM_ENV: &str = "environment";

/// The keyring in use and what it was loaded from. A failed first load is
/// not cached: fixing the file and retrying must work without restarting
/// every backend.
struct Loaded {
    ring: Arc<Keyring>,
    source: &'static str,
    /// `PgReloadTime` when this keyring was (re)loaded.
    reload_time: pgrx::pg_sys::TimestampTz,
}

/// Backends are single-threaded; the mutex only satisfies `static`.
static STATE: Mutex<Option<Loaded>> = Mutex::new(None);

/// The keyring, loading it on first use and again after a reload. Old
/// keyrings are dropped (and their keys wiped) once no caller holds them.
pub fn keyring() -> Result<Arc<Keyring>, ExtError> {
    let now = last_reload_time();
    let mut state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    match state.as_mut() {
        Some(loaded) if loaded.reload_time == now => Ok(loaded.ring.clone()),
        Some(loaded) => {
            // Marked first: a broken file warns once per reload, not per call.
            loaded.reload_time = now;
            if loaded.source == FROM_FILE {
                match configured_file().map(|p| read_keyring_file(&p)) {
                    Some(Ok(ring)) => loaded.ring = Arc::new(ring),
                    Some(Err(e)) => pgrx::warning!(
                        "pg_byok: keyring file not reloaded; keeping master key versions {:?}: {e}",
                        loaded.ring.versions()
                    ),
                    None => {}
                }
            }
            Ok(loaded.ring.clone())
        }
        None => {
            let (ring, source) = load()?;
            let ring = Arc::new(ring);
            *state = Some(Loaded {
                ring: ring.clone(),
                source,
                reload_time: now,
            });
            Ok(ring)
        }
    }
}

/// The keyring, read again from the file if it lacks `version` and that
/// version is newer than its primary: another backend may already have
/// sealed or rewrapped a key under a version this backend would only see
/// after its pending SIGHUP. Older missing versions are not re-read for:
/// they stay missing until an operator reloads.
pub fn keyring_holding(version: u32) -> Result<Arc<Keyring>, ExtError> {
    let ring = keyring()?;
    if ring.get(version).is_some() || version <= ring.primary_version() {
        return Ok(ring);
    }
    let mut state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(loaded) = state.as_mut().filter(|l| l.source == FROM_FILE) else {
        return Ok(ring);
    };
    if let Some(Ok(fresh)) = configured_file().map(|p| read_keyring_file(&p)) {
        loaded.ring = Arc::new(fresh);
    }
    Ok(loaded.ring.clone())
}

/// When this process last processed postgresql.conf (start or SIGHUP).
fn last_reload_time() -> pgrx::pg_sys::TimestampTz {
    // SAFETY: a plain read of a Postgres global that only this process's
    // single thread writes (in ProcessConfigFile, never concurrently with us).
    unsafe { pgrx::pg_sys::PgReloadTime }
}

/// Called from `_PG_init` in the postmaster: load early so the environment
/// variable is scrubbed before any backend is forked. A failure is logged,
/// not fatal: the server must start, and listings work without a key.
pub fn preload() {
    if let Err(e) = keyring() {
        pgrx::warning!("pg_byok: master key not loaded at startup: {e}");
    }
}

/// Where the keyring in use came from (`file` or `environment`).
pub fn source() -> Option<&'static str> {
    STATE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|l| l.source)
}

fn configured_file() -> Option<String> {
    MASTER_KEY_FILE
        .get()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.trim().is_empty())
}

fn load() -> Result<(Keyring, &'static str), ExtError> {
    // Scrubbed even when the file wins: a key left in the environment would
    // otherwise sit in /proc/<pid>/environ and every core dump.
    let env_key = take_env_key();
    if let Some(path) = configured_file() {
        return Ok((read_keyring_file(&path)?, FROM_FILE));
    }
    match env_key {
        Some(hex) => Ok((Keyring::from_env_value(&hex)?, FROM_ENV)),
        None => Err(ExtError::NoMasterKey),
    }
}

fn read_keyring_file(path: &str) -> Result<Keyring, ExtError> {
    let problem = |problem: String| ExtError::KeyringFile {
        path: path.to_string(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| problem(format!("cannot be read: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(problem(format!(
            "is readable or writable by group or others (mode {mode:o}); run chmod 600 on it"
        )));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| problem(format!("cannot be read: {e}")))?,
    );
    Ok(Keyring::parse_file(&text)?)
}

/// Read `BYOK_MASTER_KEY` and remove it from this process's environment.
///
/// Unsetting is not enough: Postgres moves `environ` to a copy at start-up
/// (to make room for its process title), while `/proc/<pid>/environ` keeps
/// showing the original block. So the value is overwritten in both places,
/// then the variable is unset.
fn take_env_key() -> Option<zeroize::Zeroizing<String>> {
    let name = c"BYOK_MASTER_KEY";
    // SAFETY: getenv/unsetenv are called from the backend's (or postmaster's)
    // only thread, during start-up or a function call; nothing else reads the
    // environment concurrently. The pointer getenv returns points at a
    // NUL-terminated string in this process's own memory, which we may
    // overwrite before unsetting the variable.
    let value = unsafe {
        let ptr = libc::getenv(name.as_ptr());
        if ptr.is_null() {
            return None;
        }
        let len = libc::strlen(ptr);
        let bytes = std::slice::from_raw_parts(ptr as *const u8, len);
        let value = zeroize::Zeroizing::new(String::from_utf8_lossy(bytes).into_owned());
        std::ptr::write_bytes(ptr, b'0', len);
        libc::unsetenv(name.as_ptr());
        value
    };
    scrub_original_environment(b"BYOK_MASTER_KEY=");
    debug_assert!(std::env::var_os(ENV_VAR).is_none());
    Some(value)
}

/// Overwrite `NAME=value` entries in the process's original environment
/// block (the range /proc/self/stat gives as env_start..env_end).
fn scrub_original_environment(prefix: &[u8]) {
    let Some((start, end)) = original_environment_range() else {
        return;
    };
    // SAFETY: env_start..env_end is this process's initial environment block,
    // mapped read-write at the top of its own stack for the life of the
    // process; nothing else refers to it once Postgres has copied `environ`,
    // and we only overwrite bytes inside it.
    let block = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
    let mut i = 0;
    while let Some(off) = memchr::memmem::find(&block[i..], prefix) {
        let value_start = i + off + prefix.len();
        let value_end = block[value_start..]
            .iter()
            .position(|&b| b == 0)
            .map_or(block.len(), |p| value_start + p);
        block[value_start..value_end].fill(b'0');
        i = value_end;
    }
}

/// env_start and env_end (fields 50 and 51 of /proc/self/stat).
fn original_environment_range() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let start: usize = fields.get(50 - 3)?.parse().ok()?;
    let end: usize = fields.get(51 - 3)?.parse().ok()?;
    (start != 0 && end > start).then_some((start, end))
}
