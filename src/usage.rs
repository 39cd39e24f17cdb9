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
//! The table is sized at server start (`byok.usage_slots`). Shared memory
//! exists only when the library is preloaded
//! (`shared_preload_libraries`); without it every use is written through.

use crate::settings::USAGE_SLOTS;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic, PgLwLock, PgSharedMemoryInitialization};
use std::cell::UnsafeCell;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Default and largest `byok.usage_slots`. 65,536 counters take 5 MB of
/// shared memory (the table has half as many entries again, so probes stay
/// short); a counter is taken per key, role and hour used between flushes.
pub const DEFAULT_SLOTS: i32 = 65_536;
pub const MAX_SLOTS: i32 = 4_194_304;

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

/// One entry of the open-addressing table; all zeroes is an empty entry,
/// so the table starts as zeroed shared memory.
#[repr(C)]
#[derive(Clone, Copy)]
struct Entry {
    used: u32,
    db: u32,
    role: u32,
    _pad: u32,
    key_id: [u8; 16],
    hour: i64,
    uses: u64,
    last_used: i64,
}

impl Entry {
    fn slot(&self) -> Slot {
        Slot {
            db: self.db,
            key_id: self.key_id,
            role: self.role,
            hour: self.hour,
        }
    }
}

/// How many counters are taken; the table itself is [`TABLE`]. Both are
/// read and written only under this LWLock.
#[derive(Clone, Copy, Default)]
pub struct TableState {
    taken: usize,
}

// SAFETY: plain data, no pointers.
unsafe impl PGRXSharedMemory for TableState {}

/// The entries, in a shared memory region of their own sized at server
/// start from `byok.usage_slots` (pgrx's by-value initialisation would
/// build megabytes on the postmaster's stack; this region is zeroed in
/// place instead).
pub struct Table {
    entries: UnsafeCell<*mut Entry>,
}

// SAFETY: the pointer is set once in the postmaster before any backend
// exists and inherited; the entries are touched only under COUNTERS.
unsafe impl Sync for Table {}

impl Table {
    const fn new() -> Self {
        Table {
            entries: UnsafeCell::new(std::ptr::null_mut()),
        }
    }
}

/// Entries in the table for `slots` counters: half as many again, so a
/// full table is two-thirds occupied and linear probes stay short.
fn table_len(slots: usize) -> usize {
    slots + slots / 2 + 1
}

fn slot_limit() -> usize {
    usize::try_from(USAGE_SLOTS.get())
        .unwrap_or(1)
        .clamp(1, MAX_SLOTS as usize)
}

impl PgSharedMemoryInitialization for Table {
    type Value = ();

    unsafe fn on_shmem_request(&'static self) {
        let bytes = table_len(slot_limit()) * std::mem::size_of::<Entry>();
        // SAFETY: called from shmem_request_hook (the trait's contract).
        unsafe { pg_sys::RequestAddinShmemSpace(bytes) };
    }

    unsafe fn on_shmem_startup(&'static self, _value: ()) {
        let len = table_len(slot_limit());
        let bytes = len * std::mem::size_of::<Entry>();
        // SAFETY: called from shmem_startup_hook (the trait's contract),
        // under AddinShmemInitLock as Postgres requires (pgrx's own types
        // find it the same way); a region created here is zeroed, which is
        // an empty table.
        unsafe {
            let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
            pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            let mut found = false;
            let ptr = pg_sys::ShmemInitStruct(c"pg_byok usage table".as_ptr(), bytes, &mut found)
                .cast::<Entry>();
            if !found {
                std::ptr::write_bytes(ptr, 0, len);
            }
            *self.entries.get() = ptr;
            pg_sys::LWLockRelease(lock);
        }
    }
}

// SAFETY (the statics below): each name is unique to pg_byok.
static COUNTERS: PgLwLock<TableState> = unsafe { PgLwLock::new(c"pg_byok usage counters") };
static TABLE: Table = Table::new();
/// The database the worker is flushing (0: no worker connected yet).
static FLUSHER_DB: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"pg_byok usage flusher db") };
/// Uses a standby could not count because every slot was taken.
static UNCOUNTED: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"pg_byok usage uncounted") };
/// When the worker last committed a flush (`TimestampTz`; 0: never).
static LAST_FLUSH: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"pg_byok usage last flush") };
/// The flusher's PGPROC number + 1 (0: no flusher), so a backend that fills
/// half the table can wake it before its interval is up.
static FLUSHER_PROC: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"pg_byok usage flusher proc") };
/// A backend has asked for an early flush and the flusher has not woken
/// since: one wake-up per fill, not one per use.
static FLUSH_ASKED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pg_byok usage flush asked") };

/// Set in `_PG_init` when preloading, inherited by every forked process;
/// false in a backend that loaded the library later (no shared memory).
static IN_SHARED_MEMORY: AtomicBool = AtomicBool::new(false);

/// Called from `_PG_init` while `shared_preload_libraries` is processed.
// pgrx's macro tests features of other Postgres versions this crate lacks.
#[allow(unexpected_cfgs)]
pub fn init() {
    pg_shmem_init!(COUNTERS);
    pg_shmem_init!(TABLE);
    pg_shmem_init!(FLUSHER_DB);
    pg_shmem_init!(UNCOUNTED);
    pg_shmem_init!(LAST_FLUSH);
    pg_shmem_init!(FLUSHER_PROC);
    pg_shmem_init!(FLUSH_ASKED);
    IN_SHARED_MEMORY.store(true, Ordering::Relaxed);
}

/// Whether this process has the shared counters (the library was preloaded).
pub fn available() -> bool {
    IN_SHARED_MEMORY.load(Ordering::Relaxed)
}

/// The table's entries. The caller holds COUNTERS (shared to read,
/// exclusive to write) for as long as it uses the slice.
#[allow(clippy::mut_from_ref)]
fn entries<'a>(_held: &TableState) -> &'a mut [Entry] {
    // SAFETY: the region holds table_len(slot_limit()) entries (the setting
    // is fixed at server start, so every process computes the same length),
    // and the caller's guard on COUNTERS serialises access to it.
    unsafe { std::slice::from_raw_parts_mut(*TABLE.entries.get(), table_len(slot_limit())) }
}

fn start_of(slot: &Slot, len: usize) -> usize {
    let mut h = DefaultHasher::new();
    slot.hash(&mut h);
    (h.finish() % len as u64) as usize
}

/// Index of `slot`'s entry, or of the empty entry where it would go.
fn probe(entries: &[Entry], slot: &Slot) -> usize {
    let len = entries.len();
    let mut i = start_of(slot, len);
    loop {
        let e = &entries[i];
        if e.used == 0 || e.slot() == *slot {
            return i;
        }
        i = (i + 1) % len;
    }
}

/// The hour a timestamp falls in.
pub fn hour_of(ts: i64) -> i64 {
    ts.div_euclid(USECS_PER_HOUR) * USECS_PER_HOUR
}

/// Count one use; false when every slot is taken by other counters.
pub fn count(slot: Slot, now: i64) -> bool {
    let mut state = COUNTERS.exclusive();
    let entries = entries(&state);
    let i = probe(entries, &slot);
    let e = &mut entries[i];
    if e.used != 0 {
        e.uses += 1;
        e.last_used = e.last_used.max(now);
        return true;
    }
    if state.taken >= slot_limit() {
        return false;
    }
    *e = Entry {
        used: 1,
        db: slot.db,
        role: slot.role,
        _pad: 0,
        key_id: slot.key_id,
        hour: slot.hour,
        uses: 1,
        last_used: now,
    };
    state.taken += 1;
    let half_full = state.taken * 2 >= slot_limit();
    drop(state);
    if half_full {
        ask_for_flush();
    }
    true
}

/// Wake the flusher now: half the counters are taken, and once they all
/// are, every use is written through (a write and a commit per call) until
/// the next flush. Many keys used between two flushes (100k keys at 10k
/// calls/s) would otherwise fill the table well before the interval ends.
fn ask_for_flush() {
    if FLUSH_ASKED.get().swap(true, Ordering::AcqRel) {
        return;
    }
    let proc = FLUSHER_PROC.get().load(Ordering::Acquire);
    if proc == 0 {
        FLUSH_ASKED.get().store(false, Ordering::Release);
        return;
    }
    // SAFETY: ProcGlobal's array holds every PGPROC for the server's life;
    // `proc - 1` is the number the flusher published from its own MyProc.
    // Setting a latch is allowed from any process; should the flusher have
    // exited and its slot been reused, the owner only wakes up spuriously,
    // which every latch wait allows for.
    unsafe {
        let procs = (*pg_sys::ProcGlobal).allProcs;
        pg_sys::SetLatch(&raw mut (*procs.add(proc as usize - 1)).procLatch);
    }
}

/// The flusher publishes itself (`Some(pgprocno)`) at start and withdraws
/// (`None`) when it stops.
pub fn set_flusher_proc(procno: Option<i32>) {
    let value = procno
        .and_then(|p| u32::try_from(p).ok())
        .map_or(0, |p| p + 1);
    FLUSHER_PROC.get().store(value, Ordering::Release);
}

/// The flusher woke: later fills may ask again.
pub fn flush_asked_done() {
    FLUSH_ASKED.get().store(false, Ordering::Release);
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
    let state = COUNTERS.share();
    entries(&state)
        .iter()
        .filter(|e| e.used != 0 && db.is_none_or(|d| e.db == d))
        .map(|e| {
            (
                e.slot(),
                Count {
                    uses: e.uses,
                    last_used: e.last_used,
                },
            )
        })
        .collect()
}

/// After a flush committed: take away what it wrote. Counters of keys the
/// flush could not find (`missing`) are dropped once unused for an hour: a
/// key not yet visible to the worker (its transaction still open) keeps its
/// counts meanwhile. Emptied entries are removed by rebuilding the table
/// (linear probing has no cheap single delete), under the same lock.
pub fn settle(flushed: &[(Slot, Count)], missing: &[[u8; 16]], now: i64) {
    let mut state = COUNTERS.exclusive();
    let entries = entries(&state);
    let mut emptied = false;
    for (slot, written) in flushed {
        let e = &mut entries[probe(entries, slot)];
        if e.used == 0 {
            continue;
        }
        if missing.contains(&slot.key_id) {
            if e.last_used < now - USECS_PER_HOUR {
                e.uses = 0;
                emptied = true;
            }
            continue;
        }
        e.uses = e.uses.saturating_sub(written.uses);
        emptied |= e.uses == 0;
    }
    if !emptied {
        return;
    }
    let kept: Vec<Entry> = entries
        .iter()
        .filter(|e| e.used != 0 && e.uses > 0)
        .copied()
        .collect();
    entries.fill(Entry {
        used: 0,
        db: 0,
        role: 0,
        _pad: 0,
        key_id: [0; 16],
        hour: 0,
        uses: 0,
        last_used: 0,
    });
    for e in &kept {
        let i = probe(entries, &e.slot());
        entries[i] = *e;
    }
    state.taken = kept.len();
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
// The columns must be spelled out in the signature for pgrx's SQL.
#[allow(clippy::type_complexity)]
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
        let used = COUNTERS.share().taken;
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
