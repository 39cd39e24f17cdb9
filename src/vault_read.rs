//! A vault-stored key's secret row, read straight from `vault.secrets`'
//! primary key and decrypted with one direct call of Vault's own
//! `vault._crypto_aead_det_decrypt`, instead of running a query through
//! SPI: for `use_key` the query's executor start and end cost about as much
//! as Vault's whole read (BENCHMARKS.md, "Reading a key").
//!
//! This read takes the place of vault.rs's `READ_SECRET` only where it
//! returns what that query returns, and says "not here" (`None`) otherwise,
//! so the query runs instead -- the rules of active_key.rs:
//! - row-level security does not apply to the definer (`check_enable_rls`;
//!   `byok._vault_problem()` also refuses a vault.secrets that has it on),
//!   and the definer holds USAGE on schema vault and SELECT on the table;
//! - the index is a valid, unique btree on `id` alone whose equality
//!   operator is uuid's `=`;
//! - the snapshot is the one the query would use (active_key.rs's
//!   `query_snapshot`).
//!
//! It is only called once `require_vault()` has vouched for Vault's objects
//! in this backend: the table's oid and the decrypt function's oid come from
//! that check, and a catalog change to either clears it (vault.rs).

use crate::active_key::{column, query_snapshot, readable_as_the_query};
use pgrx::pg_sys::{self, Oid};
use pgrx::{FromDatum, IntoDatum, Uuid};

/// A row of vault.secrets, as READ_SECRET selects it before decrypting.
pub(crate) struct SecretRow {
    pub name: Option<String>,
    /// Base64 text of the ciphertext, as Vault stores it.
    pub secret: Option<String>,
    pub nonce: Option<Vec<u8>>,
}

/// Heap attribute numbers of the columns read.
struct Layout {
    id: i16,
    name: i16,
    secret: i16,
    nonce: i16,
}

/// Secret row `id` of table `relid` (vault.secrets): `Some(Some(row))`,
/// `Some(None)` when there is no such row, `None` when this read cannot
/// stand in for the query and the caller must run it.
pub(crate) fn read(relid: Oid, id: &Uuid) -> Option<Option<SecretRow>> {
    // SAFETY: no active snapshot (a fast-path call): SPI knows how to make
    // one; this read does not try.
    if relid == pg_sys::InvalidOid || !unsafe { pg_sys::ActiveSnapshotSet() } {
        return None;
    }
    // SAFETY: try_table_open locks and opens the relation by oid, NULL when
    // it was dropped since; the relation is open for the checks.
    let rel = unsafe {
        let rel = pg_sys::try_table_open(relid, pg_sys::AccessShareLock as i32);
        if rel.is_null() {
            return None;
        }
        if !readable_as_the_query(rel) {
            pg_sys::table_close(rel, pg_sys::NoLock as i32);
            return None;
        }
        rel
    };
    // SAFETY: `rel` is open and locked.
    let found = unsafe { find_pkey(rel) }.and_then(|(indexid, layout)| {
        // SAFETY: index_open locks and opens the index found in the table's
        // own index list; the locks stay to the end of the transaction.
        let index = unsafe { pg_sys::index_open(indexid, pg_sys::AccessShareLock as i32) };
        // SAFETY: both relations are open and locked; the index was checked
        // against the table in find_pkey; an active snapshot is set.
        let row = unsafe { index_usable(rel, index).then(|| scan(rel, index, &layout, id)) };
        // SAFETY: opened above.
        unsafe { pg_sys::index_close(index, pg_sys::NoLock as i32) };
        row
    });
    // SAFETY: opened above; the lock stays to the end of the transaction.
    unsafe { pg_sys::table_close(rel, pg_sys::NoLock as i32) };
    found
}

/// The table's primary key index and the columns read, if the columns are
/// what Vault 0.3 made.
///
/// # Safety
/// `rel` is open.
unsafe fn find_pkey(rel: pg_sys::Relation) -> Option<(Oid, Layout)> {
    // SAFETY: `rel` is open (the caller's contract).
    unsafe {
        let layout = Layout {
            id: column(rel, c"id", pg_sys::UUIDOID)?.0,
            name: column(rel, c"name", pg_sys::TEXTOID)?.0,
            secret: column(rel, c"secret", pg_sys::TEXTOID)?.0,
            nonce: column(rel, c"nonce", pg_sys::BYTEAOID)?.0,
        };
        let pkey = pg_sys::RelationGetPrimaryKeyIndex(rel);
        (pkey != pg_sys::InvalidOid).then_some((pkey, layout))
    }
}

/// Is `index` a valid unique btree on `rel`'s `id` column alone, searched
/// with uuid's `=`, that any snapshot may use?
///
/// # Safety
/// `rel` and `index` are open.
unsafe fn index_usable(rel: pg_sys::Relation, index: pg_sys::Relation) -> bool {
    // SAFETY: both are open (the caller's contract): their relcache entries,
    // pg_index row and per-column arrays (indnatts entries) are valid.
    unsafe {
        let Some((id, _)) = column(rel, c"id", pg_sys::UUIDOID) else {
            return false;
        };
        let ix = &*(*index).rd_index;
        if ix.indrelid != (*rel).rd_id
            || !ix.indisunique
            || !ix.indisvalid
            || ix.indcheckxmin
            || (*(*index).rd_rel).relam != pg_sys::BTREE_AM_OID
            || ix.indnkeyatts != 1
            || ix.indkey.values.as_slice(1) != [id]
            || !pg_sys::RelationGetIndexPredicate(index).is_null()
            || *(*index).rd_opcintype != pg_sys::UUIDOID
        {
            return false;
        }
        let op = pg_sys::get_opfamily_member(
            *(*index).rd_opfamily,
            pg_sys::UUIDOID,
            pg_sys::UUIDOID,
            pg_sys::BTEqualStrategyNumber as i16,
        );
        op != pg_sys::InvalidOid && pg_sys::get_opcode(op) == Oid::from(pg_sys::F_UUID_EQ)
    }
}

/// The live row whose id is `id`, copied out.
///
/// # Safety
/// `rel` and `index` are open and locked, `index_usable(rel, index)`, and
/// an active snapshot is set.
unsafe fn scan(
    rel: pg_sys::Relation,
    index: pg_sys::Relation,
    layout: &Layout,
    id: &Uuid,
) -> Option<SecretRow> {
    // SAFETY: the caller's contract; the slot, scan and snapshot are made
    // and released here, and each datum is copied out before the next fetch.
    unsafe {
        let snapshot = query_snapshot();
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let scan = pg_sys::index_beginscan(rel, index, snapshot, 1, 0);
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyEntryInitialize(
            &mut key,
            0,
            1,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::UUIDOID,
            pg_sys::InvalidOid,
            Oid::from(pg_sys::F_UUID_EQ),
            id.into_datum().expect("a uuid is a datum"),
        );
        pg_sys::index_rescan(scan, &mut key, 1, std::ptr::null_mut(), 0);
        let mut found = None;
        while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            let get = |attno: i16| {
                let mut isnull = false;
                let datum = pg_sys::slot_getattr(slot, attno.into(), &mut isnull);
                (datum, isnull)
            };
            let (row_id, row_id_null) = get(layout.id);
            if Uuid::from_datum(row_id, row_id_null).as_ref() != Some(id) {
                continue;
            }
            let (name, name_null) = get(layout.name);
            let (secret, secret_null) = get(layout.secret);
            let (nonce, nonce_null) = get(layout.nonce);
            found = Some(SecretRow {
                name: String::from_datum(name, name_null),
                secret: String::from_datum(secret, secret_null),
                nonce: Vec::<u8>::from_datum(nonce, nonce_null),
            });
            break;
        }
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::UnregisterSnapshot(snapshot);
        found
    }
}

/// Decrypt a secret row the way vault.decrypted_secrets does: Vault's
/// `_crypto_aead_det_decrypt(decode(secret, 'base64'), convert_to(id::text,
/// 'utf8'), 0, 'pgsodium', nonce)`, called directly by its oid (`decrypt`,
/// vouched for by require_vault). NULL parts decrypt to None, as the view's
/// strict functions do. Vault's errors are raised as Postgres errors (the
/// caller classifies them).
pub(crate) fn decrypt(decrypt: Oid, id: &Uuid, row: &SecretRow) -> Option<Vec<u8>> {
    let (secret, nonce) = (row.secret.as_deref()?, row.nonce.as_deref()?);
    // SAFETY: decode and the decrypt function take and return
    // by-reference datums built here from owned Rust values, in the current
    // memory context; a NULL result raises an ERROR (fmgr's check) rather
    // than returning a null pointer.
    unsafe {
        let raw = pg_sys::OidFunctionCall2Coll(
            Oid::from(pg_sys::F_DECODE),
            pg_sys::InvalidOid,
            secret.into_datum()?,
            "base64".into_datum()?,
        );
        let plain = pg_sys::OidFunctionCall5Coll(
            decrypt,
            pg_sys::InvalidOid,
            raw,
            id.to_string().into_bytes().into_datum()?,
            0i64.into_datum()?,
            b"pgsodium".to_vec().into_datum()?,
            nonce.to_vec().into_datum()?,
        );
        Vec::<u8>::from_datum(plain, false)
    }
}
