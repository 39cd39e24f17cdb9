//! The record of uses: per (database, key, calling role, hour) counters in
//! shared memory, so that `use_key` writes nothing per call.
//!
//! `use_key` adds one to its counter under an LWLock; the background worker
//! (usage_worker.rs) copies the counters of its database into
//! `byok.key_usage` every `byok.usage_flush_interval` seconds and, once that
//! transaction has committed, subtracts what it wrote. A crash therefore
//! loses at most the uses counted since the last flush, and a failed flush
//! loses nothing. When every slot is taken, `use_key` writes its use to the
//! table itself (use_key.rs); on a hot standby, where nothing can be written,
//! the counters stay here and `byok.key_usage_live` shows them.
//!
//! Shared memory exists only when the library is preloaded
//! (`shared_preload_libraries`); without it every use is written through.

use crate::settings::USAGE_SLOTS;
use heapless::FnvIndexMap;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic, PgLwLock};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Compiled slot count (a power of two, as heapless's map needs): 8192
/// slots of 56 bytes, under half a megabyte. `byok.usage_slots` may use fewer.
pub const CAPACITY: usize = 8192;

/// One hour in Postgres timestamp units (microseconds).
const USECS_PER_HOUR: i64 = 3_600_000_000;

/// What a counter counts: uses of a key, in a database, by a role, in an hour.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Slot {
    pub db: u32,
    pub key_id: [u8; 16],
    pub role: u32,
    /// Start of the hour (Postgres `TimestampTz`, microseconds since 2000).
    pub hour: i64,
}

/// Uses not yet flushed, and the last one's time (`TimestampTz`).
#[derive(Clone, Copy, Debug)]
pub struct Count {
    pub uses: u64,
    pub last_used: i64,
}

pub struct Counters(FnvIndexMap<Slot, Count, CAPACITY>);

impl Default for Counters {
    fn default() -> Self {
        Counters(FnvIndexMap::new())
    }
}

// SAFETY: the map is plain data stored inline (no pointers, no heap), so it
// means the same in every process that maps the segment; access goes
// through the PgLwLock below.
unsafe impl PGRXSharedMemory for Counters {}

// SAFETY (the three statics below): each name is unique to pg_byok.
static COUNTERS: PgLwLock<Counters> = unsafe { PgLwLock::new(c"pg_byok usage counters") };
/// The database the worker is flushing (0: no worker connected yet).
static FLUSHER_DB: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"pg_byok usage flusher db") };
/// Uses a standby could not count because every slot was taken.
static UNCOUNTED: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"pg_byok usage uncounted") };
/// When the worker last committed a flush (`TimestampTz`; 0: never).
static LAST_FLUSH: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"pg_byok usage last flush") };

/// Set in `_PG_init` when preloading, inherited by every forked process;
/// false in a backend that loaded the library later (no shared memory).
static IN_SHARED_MEMORY: AtomicBool = AtomicBool::new(false);

/// Called from `_PG_init` while `shared_preload_libraries` is processed.
// pgrx's macro tests features of other Postgres versions this crate lacks.
#[allow(unexpected_cfgs)]
pub fn init() {
    pg_shmem_init!(COUNTERS);
    pg_shmem_init!(FLUSHER_DB);
    pg_shmem_init!(UNCOUNTED);
    pg_shmem_init!(LAST_FLUSH);
    IN_SHARED_MEMORY.store(true, Ordering::Relaxed);
}

/// Whether this process has the shared counters (the library was preloaded).
pub fn available() -> bool {
    IN_SHARED_MEMORY.load(Ordering::Relaxed)
}

fn slot_limit() -> usize {
    usize::try_from(USAGE_SLOTS.get())
        .unwrap_or(CAPACITY)
        .clamp(1, CAPACITY)
}

/// The hour a timestamp falls in.
pub fn hour_of(ts: i64) -> i64 {
    ts.div_euclid(USECS_PER_HOUR) * USECS_PER_HOUR
}

/// Count one use; false when every slot is taken by other counters.
pub fn count(slot: Slot, now: i64) -> bool {
    let limit = slot_limit();
    let mut counters = COUNTERS.exclusive();
    if let Some(c) = counters.0.get_mut(&slot) {
        c.uses += 1;
        c.last_used = c.last_used.max(now);
        return true;
    }
    if counters.0.len() >= limit {
        return false;
    }
    counters
        .0
        .insert(
            slot,
            Count {
                uses: 1,
                last_used: now,
            },
        )
        .is_ok()
}

/// A use a standby could not count (every slot taken, nothing writable).
pub fn note_uncounted() {
    UNCOUNTED.get().fetch_add(1, Ordering::Relaxed);
}

/// The database the worker flushes, 0 while no worker is connected.
pub fn flusher_db() -> u32 {
    FLUSHER_DB.get().load(Ordering::Relaxed)
}

pub fn set_flusher_db(db: u32) {
    FLUSHER_DB.get().store(db, Ordering::Relaxed);
}

pub fn note_flush(at: i64) {
    LAST_FLUSH.get().store(at, Ordering::Relaxed);
}

/// A copy of the counters, all databases' or one's.
pub fn snapshot(db: Option<u32>) -> Vec<(Slot, Count)> {
    let counters = COUNTERS.share();
    counters
        .0
        .iter()
        .filter(|(s, _)| db.is_none_or(|d| s.db == d))
        .map(|(s, c)| (*s, *c))
        .collect()
}

/// After a flush committed: take away what it wrote. Counters of keys the
/// flush could not find (`missing`) are dropped once unused for an hour: a
/// key not yet visible to the worker (its transaction still open) keeps its
/// counts meanwhile.
pub fn settle(flushed: &[(Slot, Count)], missing: &[[u8; 16]], now: i64) {
    let mut counters = COUNTERS.exclusive();
    for (slot, written) in flushed {
        let gone = missing.contains(&slot.key_id);
        let Some(c) = counters.0.get_mut(slot) else {
            continue;
        };
        if gone {
            if c.last_used < now - USECS_PER_HOUR {
                counters.0.remove(slot);
            }
            continue;
        }
        c.uses = c.uses.saturating_sub(written.uses);
        if c.uses == 0 {
            counters.0.remove(slot);
        }
    }
}

/// The live counters of every database, as `byok.key_usage_live` shows
/// them (names and times are resolved in SQL, sql/usage.sql).
#[pg_extern(volatile, name = "_usage_counters")]
#[search_path(pg_catalog, pg_temp)]
fn usage_counters() -> TableIterator<
    'static,
    (
        name!(database_oid, i64),
        name!(key_id, pgrx::Uuid),
        name!(role_oid, i64),
        name!(hour, TimestampWithTimeZone),
        name!(uses, i64),
        name!(last_used_at, TimestampWithTimeZone),
    ),
> {
    let rows: Vec<_> = if available() {
        snapshot(None)
            .into_iter()
            .filter_map(|(s, c)| {
                Some((
                    i64::from(s.db),
                    pgrx::Uuid::from_bytes(s.key_id),
                    i64::from(s.role),
                    TimestampWithTimeZone::try_from(s.hour).ok()?,
                    i64::try_from(c.uses).unwrap_or(i64::MAX),
                    TimestampWithTimeZone::try_from(c.last_used).ok()?,
                ))
            })
            .collect()
    } else {
        Vec::new()
    };
    TableIterator::new(rows)
}

/// The state of the shared counters, for operators (`byok.usage_status`).
#[pg_extern(volatile, name = "usage_status")]
#[search_path(pg_catalog, pg_temp)]
fn usage_status() -> TableIterator<
    'static,
    (
        name!(preloaded, bool),
        name!(slots_used, i32),
        name!(slots, i32),
        name!(flusher_database_oid, Option<i64>),
        name!(last_flush_at, Option<TimestampWithTimeZone>),
        name!(uncounted, i64),
    ),
> {
    let row = if available() {
        let used = COUNTERS.share().0.len();
        let db = flusher_db();
        let last = LAST_FLUSH.get().load(Ordering::Relaxed);
        (
            true,
            i32::try_from(used).unwrap_or(i32::MAX),
            i32::try_from(slot_limit()).unwrap_or(i32::MAX),
            (db != 0).then_some(i64::from(db)),
            if last == 0 {
                None
            } else {
                TimestampWithTimeZone::try_from(last).ok()
            },
            i64::try_from(UNCOUNTED.get().load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        )
    } else {
        (false, 0, 0, None, None, 0)
    };
    TableIterator::once(row)
}
