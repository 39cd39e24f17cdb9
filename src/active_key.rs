//! The active key's row for `byok.use_key`, read straight from the index
//! `byok.keys_one_active_per_vendor` instead of through SPI: running a kept
//! plan costs an executor start and end per call, about twice what the rest
//! of use_key costs.
//!
//! This read takes the place of the SPI query
//!
//! ```sql
//! SELECT id, ciphertext, vault_secret_id FROM byok.keys
//!  WHERE workspace_id = $1 AND vendor = $2 AND status = 'active'
//! ```
//!
//! only where it returns what that query returns, and says "not here"
//! (`None`) otherwise, so use_key runs the query instead:
//! - row-level security: byok.keys has FORCE ROW LEVEL SECURITY, so the
//!   query applies its policy even to the definer, unless the definer is a
//!   superuser or has BYPASSRLS (`check_enable_rls`, the planner's own test).
//!   Where the policy applies, the query runs; it also raises the same error
//!   with `row_security = off`.
//! - privileges: the definer must hold USAGE on the schema (as parsing the
//!   query checks) and SELECT on the table (as the executor checks); short
//!   of that the query runs and decides (and raises its error).
//! - the index must be what sql/bootstrap.sql created: a valid, unique btree
//!   on (workspace_id, vendor) WHERE status = 'active', whose equality
//!   operators are the `=` the query uses, with the column's collation.
//! - a snapshot: the one the query would use. pgrx runs a SELECT read-only
//!   (the statement's active snapshot) while the transaction has no xid, and
//!   otherwise as SPI runs a writing statement: after a command counter
//!   increment, with a fresh snapshot (READ COMMITTED: it sees what committed
//!   since the statement began; the transaction's own earlier writes in this
//!   statement too). The same rule is applied here.
//!
//! Each fetched row is checked again (workspace, vendor, status), and the
//! values are copied out (bytea detoasted) before the buffer is released.
//! Locks are kept to the end of the transaction (closed with NoLock), as the
//! executor keeps them. An error part way leaves the scan, pins, snapshot and
//! relation references to the (sub)transaction's abort, as the executor does.

use pgrx::pg_sys::{self, Oid};
use pgrx::{FromDatum, IntoDatum, Uuid};
use std::ffi::CStr;

/// The active key's row, as use_key's query returns it.
pub(crate) struct KeyRow {
    pub id: Uuid,
    pub ciphertext: Option<Vec<u8>>,
    pub vault_secret_id: Option<Uuid>,
}

/// Heap attribute numbers of the columns read, and how to search the index.
struct Layout {
    id: i16,
    workspace_id: i16,
    vendor: i16,
    status: i16,
    ciphertext: i16,
    vault_secret_id: i16,
    /// Equality procedures and collations of the two index columns.
    eq_procs: [Oid; 2],
    collations: [Oid; 2],
}

/// The active key of (workspace, vendor): `Some(Some(row))`, `Some(None)`
/// when there is none, `None` when this read cannot stand in for the query
/// (see the module comment) and use_key must run the query.
pub(crate) fn read(workspace_id: &Uuid, vendor: &str) -> Option<Option<KeyRow>> {
    // SAFETY: catalog lookups by name with missing_ok (InvalidOid when
    // absent); called inside a transaction, as every SQL function is.
    let (relid, indexid) = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"byok".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        (
            pg_sys::get_relname_relid(c"keys".as_ptr(), nsp),
            pg_sys::get_relname_relid(c"keys_one_active_per_vendor".as_ptr(), nsp),
        )
    };
    if relid == pg_sys::InvalidOid || indexid == pg_sys::InvalidOid {
        return None;
    }
    // SAFETY: no active snapshot (a fast-path call, a non-atomic CALL):
    // SPI knows how to make one; this read does not try.
    if !unsafe { pg_sys::ActiveSnapshotSet() } {
        return None;
    }
    // SAFETY: table_open locks and opens the relation by oid (raising an
    // ERROR if it was dropped since the name lookup); the relation is open
    // for the checks.
    let rel = unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
        if !readable_as_the_query(rel) {
            pg_sys::table_close(rel, pg_sys::NoLock as i32);
            return None;
        }
        rel
    };
    // SAFETY: index_open locks and opens the index by oid; `rel` is open.
    let index = unsafe { pg_sys::index_open(indexid, pg_sys::AccessShareLock as i32) };
    // SAFETY: both relations are open and locked for the checks.
    let Some(layout) = (unsafe { layout(rel, index) }) else {
        // SAFETY: both were opened above; the locks stay to the end of the
        // transaction, as the executor's do.
        unsafe {
            pg_sys::index_close(index, pg_sys::NoLock as i32);
            pg_sys::table_close(rel, pg_sys::NoLock as i32);
        }
        return None;
    };
    // SAFETY: both relations are open and locked, `layout` was checked
    // against them, and an active snapshot is set (checked above).
    let row = unsafe { scan(rel, index, &layout, workspace_id, vendor) };
    // SAFETY: as above.
    unsafe {
        pg_sys::index_close(index, pg_sys::NoLock as i32);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
    }
    Some(row)
}

/// Would a query read `rel` as this read does? A plain table, no
/// row-level security binding the current user (`check_enable_rls`, the
/// planner's own test), USAGE on its schema (as parsing checks) and SELECT
/// on it (as the executor checks). Otherwise the caller leaves the read to
/// the query, which applies the policy or raises the permission error.
/// Shared by the direct reads of byok.keys and vault.secrets.
///
/// # Safety
/// `rel` is open and locked.
pub(crate) unsafe fn readable_as_the_query(rel: pg_sys::Relation) -> bool {
    // SAFETY: `rel` is open (the caller's contract); the checks read the
    // syscache for it and the current user.
    unsafe {
        let relid = (*rel).rd_id;
        let user = pg_sys::GetUserId();
        let rls = pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, true);
        let usage = pg_sys::pg_namespace_aclcheck(
            (*(*rel).rd_rel).relnamespace,
            user,
            pg_sys::ACL_USAGE as pg_sys::AclMode,
        );
        let acl = pg_sys::pg_class_aclcheck(relid, user, pg_sys::ACL_SELECT as pg_sys::AclMode);
        (*(*rel).rd_rel).relkind == pg_sys::RELKIND_RELATION as core::ffi::c_char
            && rls != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
            && usage == pg_sys::AclResult::ACLCHECK_OK
            && acl == pg_sys::AclResult::ACLCHECK_OK
    }
}

/// The column of `rel` named `name` of type `typ`, not dropped.
///
/// # Safety
/// `rel` is an open relation.
pub(crate) unsafe fn column(rel: pg_sys::Relation, name: &CStr, typ: Oid) -> Option<(i16, Oid)> {
    // SAFETY: `rel` is open (the caller's contract): its tuple descriptor
    // and attribute names are valid for the call.
    unsafe {
        let desc = (*rel).rd_att;
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        attrs
            .iter()
            .find(|a| !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == name)
            .filter(|a| a.atttypid == typ)
            .map(|a| (a.attnum, a.attcollation))
    }
}

/// What the read needs from the table and its index, if the index is the
/// one sql/bootstrap.sql made and the query would use.
///
/// # Safety
/// `rel` and `index` are open; `index` is an index.
unsafe fn layout(rel: pg_sys::Relation, index: pg_sys::Relation) -> Option<Layout> {
    // SAFETY: `rel` and `index` are open (the caller's contract): their
    // relcache entries, pg_index row and per-column arrays (of indnatts
    // entries, at least the 2 read) are valid; the rest are syscache reads.
    unsafe {
        let (id, _) = column(rel, c"id", pg_sys::UUIDOID)?;
        let (workspace_id, _) = column(rel, c"workspace_id", pg_sys::UUIDOID)?;
        let (vendor, vendor_collation) = column(rel, c"vendor", pg_sys::TEXTOID)?;
        let (status, _) = column(rel, c"status", pg_sys::TEXTOID)?;
        let (ciphertext, _) = column(rel, c"ciphertext", pg_sys::BYTEAOID)?;
        let (vault_secret_id, _) = column(rel, c"vault_secret_id", pg_sys::UUIDOID)?;

        let ix = &*(*index).rd_index;
        // indcheckxmin: a snapshot older than the index may not use it (the
        // planner skips it then); leave that case to the planner.
        if ix.indrelid != (*rel).rd_id
            || !ix.indisunique
            || !ix.indisvalid
            || ix.indcheckxmin
            || (*(*index).rd_rel).relam != pg_sys::BTREE_AM_OID
            || ix.indnkeyatts != 2
            || ix.indkey.values.as_slice(2) != [workspace_id, vendor]
        {
            return None;
        }
        let opfamily = std::slice::from_raw_parts((*index).rd_opfamily, 2);
        let opcintype = std::slice::from_raw_parts((*index).rd_opcintype, 2);
        let collations = std::slice::from_raw_parts((*index).rd_indcollation, 2);
        if opcintype != [pg_sys::UUIDOID, pg_sys::TEXTOID] || collations[1] != vendor_collation {
            return None;
        }
        // The btree equality operator of each column must be the `=` the query
        // resolves (pg_catalog's uuid = uuid and text = text).
        let mut eq_procs = [pg_sys::InvalidOid; 2];
        for (i, want) in [pg_sys::F_UUID_EQ, pg_sys::F_TEXTEQ]
            .into_iter()
            .enumerate()
        {
            let op = pg_sys::get_opfamily_member(
                opfamily[i],
                opcintype[i],
                opcintype[i],
                pg_sys::BTEqualStrategyNumber as i16,
            );
            if op == pg_sys::InvalidOid || pg_sys::get_opcode(op) != Oid::from(want) {
                return None;
            }
            eq_procs[i] = Oid::from(want);
        }
        if !predicate_is_status_active(index, status) {
            return None;
        }
        Some(Layout {
            id,
            workspace_id,
            vendor,
            status,
            ciphertext,
            vault_secret_id,
            eq_procs,
            collations: [collations[0], collations[1]],
        })
    }
}

/// Is the index's predicate exactly `status = 'active'` (so it holds every
/// active row)?
///
/// # Safety
/// `index` is open.
unsafe fn predicate_is_status_active(index: pg_sys::Relation, status: i16) -> bool {
    // SAFETY: `index` is open (the caller's contract); the predicate is a
    // copied node tree whose node tags are checked before each cast.
    unsafe {
        let pred = pg_sys::RelationGetIndexPredicate(index);
        if pred.is_null() || (*pred).length != 1 {
            return false;
        }
        let expr = (*(*pred).elements).ptr_value as *mut pg_sys::Node;
        if (*expr).type_ != pg_sys::NodeTag::T_OpExpr {
            return false;
        }
        let op = &*(expr as *mut pg_sys::OpExpr);
        if op.opno != Oid::from(pg_sys::TextEqualOperator) || (*op.args).length != 2 {
            return false;
        }
        let cells = std::slice::from_raw_parts((*op.args).elements, 2);
        let (left, right) = (
            cells[0].ptr_value as *mut pg_sys::Node,
            cells[1].ptr_value as *mut pg_sys::Node,
        );
        if (*left).type_ != pg_sys::NodeTag::T_Var || (*right).type_ != pg_sys::NodeTag::T_Const {
            return false;
        }
        let var = &*(left as *mut pg_sys::Var);
        let value = &*(right as *mut pg_sys::Const);
        var.varattno == status
            && value.consttype == pg_sys::TEXTOID
            && <&str>::from_datum(value.constvalue, value.constisnull) == Some("active")
    }
}

/// The snapshot the SPI query would have run with, registered.
///
/// # Safety
/// An active snapshot is set.
pub(crate) unsafe fn query_snapshot() -> pg_sys::Snapshot {
    // SAFETY: an active snapshot is set (the caller's contract); the
    // snapshot is registered, so it stays valid until unregistered.
    unsafe {
        if pg_sys::GetCurrentTransactionIdIfAny() == pg_sys::InvalidTransactionId {
            pg_sys::RegisterSnapshot(pg_sys::GetActiveSnapshot())
        } else {
            pg_sys::CommandCounterIncrement();
            pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot())
        }
    }
}

/// Search the index for (workspace, vendor) and return the first live row
/// that is active, copied out.
///
/// # Safety
/// `rel` and `index` are open and locked, `layout` was made from them, and
/// an active snapshot is set.
unsafe fn scan(
    rel: pg_sys::Relation,
    index: pg_sys::Relation,
    layout: &Layout,
    workspace_id: &Uuid,
    vendor: &str,
) -> Option<KeyRow> {
    // SAFETY: the caller's contract: open, locked relations, a layout made
    // from them and an active snapshot; the slot and scan are made here and
    // ended here, and each datum is copied out before the next fetch.
    unsafe {
        let snapshot = query_snapshot();
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let scan = pg_sys::index_beginscan(rel, index, snapshot, 2, 0);
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        let args = [
            workspace_id.into_datum().expect("a uuid is a datum"),
            vendor.into_datum().expect("a text is a datum"),
        ];
        for (i, key) in keys.iter_mut().enumerate() {
            pg_sys::ScanKeyEntryInitialize(
                key,
                0,
                (i + 1) as pg_sys::AttrNumber,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                if i == 0 {
                    pg_sys::UUIDOID
                } else {
                    pg_sys::TEXTOID
                },
                layout.collations[i],
                layout.eq_procs[i],
                args[i],
            );
        }
        pg_sys::index_rescan(scan, keys.as_mut_ptr(), 2, std::ptr::null_mut(), 0);
        let mut found = None;
        while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            let get = |attno: i16| {
                let mut isnull = false;
                let datum = pg_sys::slot_getattr(slot, attno.into(), &mut isnull);
                (datum, isnull)
            };
            let (ws, ws_null) = get(layout.workspace_id);
            let (vd, vd_null) = get(layout.vendor);
            let (st, st_null) = get(layout.status);
            if Uuid::from_datum(ws, ws_null).as_ref() != Some(workspace_id)
                || <&str>::from_datum(vd, vd_null) != Some(vendor)
                || <&str>::from_datum(st, st_null) != Some("active")
            {
                continue;
            }
            let (id, id_null) = get(layout.id);
            let (ct, ct_null) = get(layout.ciphertext);
            let (vs, vs_null) = get(layout.vault_secret_id);
            found = Some(KeyRow {
                id: Uuid::from_datum(id, id_null).expect("byok.keys.id is NOT NULL"),
                ciphertext: Vec::<u8>::from_datum(ct, ct_null),
                vault_secret_id: Uuid::from_datum(vs, vs_null),
            });
            break;
        }
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::UnregisterSnapshot(snapshot);
        found
    }
}
