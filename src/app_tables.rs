//! The only places pg_byok reads an app table (not a trigger's transition
//! table): the membership test, the workspace state add_key checks, and the
//! ids a TRUNCATE removes.
//!
//! Each first locks the table by OID (AccessShareLock, held to the end of
//! the transaction: no rename, retype or swap can happen after the check),
//! then checks it is still a plain table with the columns pg_byok attached,
//! then builds its query from that OID's current name (byok_core::app_sql)
//! and runs it as the table's owner (as_owner.rs). None of these functions
//! has a `SET search_path`: nothing here resolves a name through it, and
//! they sit on the hot path of authorize and add_key.

use std::ffi::{CStr, CString};

use crate::as_owner::run_as_owner;
use crate::error::ExtError;
use byok_core::app_sql::{self, IdKind, StatusKind};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::Uuid;

/// What pg_byok needs to know of a locked table.
struct AppTable {
    owner: pg_sys::Oid,
    relkind: u8,
    /// `"schema"."table"` as it is named now.
    qualified: String,
}

/// Lock `oid` for the rest of the transaction and describe it, or None when
/// no relation has that OID (the table was dropped).
fn lock(oid: pg_sys::Oid) -> Option<AppTable> {
    // SAFETY: try_relation_open takes the lock first and returns NULL, with
    // the lock released, when the relation does not exist; otherwise a valid
    // open relation whose rd_rel we only read, then close keeping the lock.
    unsafe {
        let rel = pg_sys::try_relation_open(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        if rel.is_null() {
            return None;
        }
        let form = (*rel).rd_rel;
        let name = CStr::from_ptr((*form).relname.data.as_ptr())
            .to_string_lossy()
            .into_owned();
        let schema_ptr = pg_sys::get_namespace_name((*form).relnamespace);
        let schema = if schema_ptr.is_null() {
            String::new()
        } else {
            CStr::from_ptr(schema_ptr).to_string_lossy().into_owned()
        };
        let table = AppTable {
            owner: (*form).relowner,
            relkind: (*form).relkind as u8,
            qualified: app_sql::qualified(&schema, &name),
        };
        pg_sys::relation_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        Some(table)
    }
}

/// The type of column `col` of `oid` (a user column, not dropped).
fn column_type(oid: pg_sys::Oid, col: &str) -> Option<pg_sys::Oid> {
    let col = CString::new(col).ok()?;
    // SAFETY: syscache lookups by a live relation OID (locked by the caller)
    // and a NUL-terminated name; both return plain values.
    unsafe {
        let attnum = pg_sys::get_attnum(oid, col.as_ptr());
        (attnum > 0).then(|| pg_sys::get_atttype(oid, attnum))
    }
}

fn id_kind(typ: pg_sys::Oid) -> Option<IdKind> {
    match typ {
        pg_sys::UUIDOID => Some(IdKind::Uuid),
        pg_sys::TEXTOID | pg_sys::VARCHAROID => Some(IdKind::Text),
        _ => None,
    }
}

fn status_kind(typ: pg_sys::Oid) -> Option<StatusKind> {
    match typ {
        pg_sys::TEXTOID | pg_sys::VARCHAROID => Some(StatusKind::Text),
        // SAFETY: a syscache lookup by type OID; returns a plain char.
        _ if unsafe { pg_sys::get_typtype(typ) } as u8 == b'e' => Some(StatusKind::Enum),
        _ => None,
    }
}

/// The id column's kind, when `t` is a plain table and the column one
/// pg_byok can compare.
fn checked_id(oid: pg_sys::Oid, t: &AppTable, col: &str) -> Option<IdKind> {
    if t.relkind != pg_sys::RELKIND_RELATION {
        return None;
    }
    column_type(oid, col).and_then(id_kind)
}

fn changed(t: &AppTable) -> ! {
    ExtError::AppTableChanged {
        table: t.qualified.clone(),
    }
    .raise()
}

/// Lock an attached table by OID for the rest of the transaction; false
/// when it no longer exists. Callers check the catalog only after this.
#[pg_extern(volatile, strict, name = "_lock_app_table")]
fn lock_app_table(tbl: pg_sys::Oid) -> bool {
    lock(tbl).is_some()
}

/// Is `subject` a member of `workspace_id` in the member table? False (fail
/// closed) when the table is gone, no longer a plain table, or its columns
/// are no longer ones pg_byok can compare.
#[pg_extern(stable, strict, name = "_is_member")]
fn is_member(
    member_table: pg_sys::Oid,
    workspace_column: &str,
    user_column: &str,
    workspace_id: Uuid,
    subject: Uuid,
) -> bool {
    let Some(t) = lock(member_table) else {
        return false;
    };
    let (Some(ws), Some(user)) = (
        checked_id(member_table, &t, workspace_column),
        checked_id(member_table, &t, user_column),
    ) else {
        return false;
    };
    let query = app_sql::membership(&t.qualified, workspace_column, ws, user_column, user);
    run_as_owner(
        t.owner,
        &query,
        vec![workspace_id.into(), subject.into()],
        |rows| rows.first().get_one::<bool>().ok().flatten(),
    )
    .unwrap_or(false)
}

/// The workspace's status in an attached table ('' without a status
/// column), NULL when the table has no such row or no longer exists; 55000
/// when the table or its columns changed since attach_workspaces.
#[pg_extern(stable, name = "_workspace_row_state")]
fn workspace_row_state(
    workspace_table: pg_sys::Oid,
    id_column: &str,
    status_column: Option<&str>,
    workspace_id: Uuid,
) -> Option<String> {
    let t = lock(workspace_table)?;
    let id = checked_id(workspace_table, &t, id_column).unwrap_or_else(|| changed(&t));
    let status = status_column.map(|col| {
        let kind = column_type(workspace_table, col)
            .and_then(status_kind)
            .unwrap_or_else(|| changed(&t));
        (col, kind)
    });
    let query = app_sql::workspace_state(&t.qualified, id_column, id, status);
    run_as_owner(t.owner, &query, vec![workspace_id.into()], |rows| {
        if rows.is_empty() {
            None
        } else {
            rows.first().get_one::<String>().ok().flatten()
        }
    })
}

/// Every id in an attached workspace table, as text (the BEFORE TRUNCATE
/// trigger revokes their keys); 55000 when the table changed.
#[pg_extern(volatile, strict, name = "_workspace_ids")]
fn workspace_ids(workspace_table: pg_sys::Oid, id_column: &str) -> Vec<Option<String>> {
    let Some(t) = lock(workspace_table) else {
        return Vec::new();
    };
    checked_id(workspace_table, &t, id_column).unwrap_or_else(|| changed(&t));
    let query = app_sql::workspace_ids(&t.qualified, id_column);
    run_as_owner(t.owner, &query, Vec::new(), |rows| {
        rows.map(|row| row.get::<String>(1).ok().flatten())
            .collect()
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// A table owned by a non-superuser, with a statistics expression (run
    /// at every planning) calling IMMUTABLE `app.probe()`, which runs the
    /// VOLATILE `app.payload()` with the given body.
    fn owned_table(payload_body: &str) {
        Spi::run(&format!(
            "CREATE ROLE byok_test_owner NOLOGIN;
             CREATE SCHEMA app AUTHORIZATION byok_test_owner;
             SET LOCAL ROLE byok_test_owner;
             CREATE TABLE app.m (w uuid, u uuid);
             CREATE FUNCTION app.payload() RETURNS integer LANGUAGE plpgsql VOLATILE AS
               $f$ BEGIN {payload_body} RETURN 1; END $f$;
             CREATE FUNCTION app.probe() RETURNS integer LANGUAGE plpgsql IMMUTABLE AS
               $f$ BEGIN RETURN app.payload(); END $f$;
             CREATE STATISTICS app.s ON (w::text || app.probe()::text), u FROM app.m;
             RESET ROLE;"
        ))
        .unwrap();
    }

    /// The error message `byok._is_member` on app.m raised ('' for none).
    fn is_member_error() -> String {
        Spi::get_one::<String>(
            "CREATE FUNCTION pg_temp.try() RETURNS text LANGUAGE plpgsql AS $f$
             DECLARE msg text;
             BEGIN
                 PERFORM byok._is_member('app.m'::regclass, 'w', 'u', gen_random_uuid(), gen_random_uuid());
                 RETURN '';
             EXCEPTION WHEN OTHERS THEN
                 GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
                 RETURN msg;
             END $f$;
             SELECT pg_temp.try()",
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn the_owners_code_runs_as_the_owner_and_the_user_comes_back_after_its_error() {
        owned_table("RAISE EXCEPTION 'ran as %', current_user;");
        assert_eq!(is_member_error(), "ran as byok_test_owner");
        let back = Spi::get_one::<bool>("SELECT current_user = session_user").unwrap();
        assert_eq!(back, Some(true), "the user id was not restored");
    }

    #[pg_test]
    fn settings_the_owners_code_changes_are_undone() {
        owned_table(
            "PERFORM set_config('request.jwt.claims', '{\"sub\":\"forged\"}', true);
             PERFORM set_config('search_path', 'app', true);",
        );
        Spi::run("SELECT set_config('request.jwt.claims', '{\"sub\":\"real\"}', true)").unwrap();
        assert_eq!(
            is_member_error(),
            "",
            "nobody is a member of an empty table"
        );
        let claims =
            Spi::get_one::<String>("SELECT current_setting('request.jwt.claims')").unwrap();
        assert_eq!(claims.as_deref(), Some("{\"sub\":\"real\"}"));
        let path = Spi::get_one::<String>("SELECT current_setting('search_path')").unwrap();
        assert_ne!(path.as_deref(), Some("app"));
    }

    #[pg_test]
    fn the_owners_code_cannot_set_role() {
        owned_table("SET ROLE NONE;");
        let msg = is_member_error();
        assert!(msg.contains("role"), "SET ROLE was not refused: {msg:?}");
    }
}
