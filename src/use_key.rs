//! `byok.use_key`, the hot path: one Rust function instead of PL/pgSQL with
//! a query per PERFORM, and no write per call.
//!
//! Declared SECURITY DEFINER like every other API function (its
//! search_path pinned off the hot path only: pinned_path.rs), it checks
//! what the PL/pgSQL version checked, in the same order and with the same
//! errors: NULL arguments (22004), the caller's membership of byok_consumer
//! (42501), the vendor (22023), an active key (P0002, with the pending
//! hint). The key row is read straight from its index (active_key.rs), or,
//! where that read cannot stand in for the query (row-level security
//! applies to the definer, say), with a plan kept for the backend's life
//! (Postgres re-plans it when the table changes). The use is counted in
//! shared memory (usage.rs) or, where that cannot take it, written to
//! `byok.key_usage` at once; `byok.use_audit = 'each'` also writes the
//! per-call audit row of 0.1.0. The plaintext goes nowhere but the return
//! value: it is never logged, stored, or put in an error.

use crate::active_key::{self, KeyRow};
use crate::error::{ExtError, OrRaise, OrRaiseSpi};
use crate::kept_plan::with_plan;
use crate::pinned_path::pinned;
use crate::settings::{UseAudit, USE_AUDIT};
use crate::text::TextArg;
use crate::usage;
use byok_core::Vendor;
use pgrx::pg_sys::PgBuiltInOids;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::Uuid;
use std::cell::OnceCell;

const ACTIVE_KEY: &str = "SELECT id, ciphertext, vault_secret_id FROM byok.keys \
     WHERE workspace_id = $1 AND vendor = $2 AND status = 'active'";
const PENDING_KEY: &str = "SELECT EXISTS (SELECT 1 FROM byok.keys \
     WHERE workspace_id = $1 AND vendor = $2 AND status = 'pending')";
const WRITE_USE: &str =
    "SELECT byok._count_uses(ARRAY[$1], ARRAY[$2], ARRAY[$3], ARRAY[1::bigint], ARRAY[$4])";
const AUDIT_USE: &str = "SELECT byok._audit('use', $1, $2, $3, 'ok', NULL)";

thread_local! {
    static ACTIVE_PLAN: OnceCell<OwnedPreparedStatement> = const { OnceCell::new() };
    static PENDING_PLAN: OnceCell<OwnedPreparedStatement> = const { OnceCell::new() };
    static WRITE_PLAN: OnceCell<OwnedPreparedStatement> = const { OnceCell::new() };
    static AUDIT_PLAN: OnceCell<OwnedPreparedStatement> = const { OnceCell::new() };
}

/// The plaintext of an active key, from its envelope or its Vault secret
/// (vault.rs). A live key always holds one of them
/// (`keys_storage_holds_the_secret`); a row with neither is reported
/// as tampering, as a ciphertext that fails to open is.
fn decrypt(key: &KeyRow, workspace_id: &Uuid, vendor: Vendor) -> String {
    crate::vault::open_live(
        &key.id,
        workspace_id,
        vendor,
        key.ciphertext.as_deref(),
        key.vault_secret_id,
    )
    .unwrap_or_else(|| {
        ExtError::Core(byok_core::CoreError::Tampered {
            reason: "an active key has no ciphertext",
        })
        .raise()
    })
}

/// The role the caller acts as, as `byok._caller()` names it: the role
/// `SET [LOCAL] ROLE` chose (PostgREST's request role), else the session's
/// login role. Not `current_user`, which is the definer here.
fn caller_role() -> pg_sys::Oid {
    // SAFETY: plain reads of this backend's role state; no preconditions.
    unsafe {
        let role = pg_sys::GetCurrentRoleId();
        if role == pg_sys::InvalidOid {
            pg_sys::GetSessionUserId()
        } else {
            role
        }
    }
}

/// Membership of byok_consumer, as `pg_has_role(caller, 'byok_consumer',
/// 'MEMBER')` decides it (superusers are members of every role). Postgres
/// caches role memberships per backend, invalidated on GRANT/REVOKE.
fn is_consumer(role: pg_sys::Oid) -> bool {
    // SAFETY: get_role_oid with missing_ok returns InvalidOid for a missing
    // role; is_member_of_role takes any two oids.
    unsafe {
        let consumer = pg_sys::get_role_oid(c"byok_consumer".as_ptr(), true);
        if consumer == pg_sys::InvalidOid {
            return pg_sys::superuser_arg(role);
        }
        pg_sys::is_member_of_role(role, consumer)
    }
}

// No `#[search_path]`: the hot path below needs none (pinned_path.rs), and
// everything else runs under `pinned`.
#[pg_extern(volatile, security_definer, name = "use_key")]
fn use_key(workspace_id: Option<Uuid>, vendor: Option<TextArg<'_>>) -> String {
    let workspace_id = workspace_id.unwrap_or_else(|| {
        ExtError::Required {
            name: "workspace_id",
        }
        .raise()
    });
    let vendor = vendor.unwrap_or_else(|| ExtError::Required { name: "vendor" }.raise());
    let caller = caller_role();
    if !is_consumer(caller) {
        ExtError::NotConsumer.raise();
    }
    let vendor = Vendor::parse(vendor.utf8("vendor")).or_raise();
    let each = USE_AUDIT.get() == UseAudit::Each;
    // SAFETY: reads shared recovery state; callable in any backend.
    let in_recovery = unsafe { pg_sys::RecoveryInProgress() };
    if each && in_recovery {
        ExtError::EachUseOnStandby.raise();
    }

    // The hot path: the row straight from the index (active_key.rs), a
    // native envelope opened in Rust, the use counted in shared memory. It
    // runs no query and resolves no name, so the caller's search_path
    // cannot reach it; anything else runs with the search_path pinned.
    let read = active_key::read(&workspace_id, vendor.as_str());
    if let (Some(Some(key)), false) = (&read, each) {
        if let Some(blob) = key.ciphertext.as_deref() {
            let plain = crate::sealing::open_key(&key.id, &workspace_id, vendor, blob);
            record_use(&key.id, caller, in_recovery);
            return plain;
        }
    }
    pinned(|| use_key_pinned(read, &workspace_id, vendor, caller, each, in_recovery))
}

/// Everything but the hot path: the key by the kept query where the direct
/// read could not stand in for it, a Vault-stored key, the pending hint,
/// the written-through use and the per-call audit row.
fn use_key_pinned(
    read: Option<Option<KeyRow>>,
    workspace_id: &Uuid,
    vendor: Vendor,
    caller: pg_sys::Oid,
    each: bool,
    in_recovery: bool,
) -> String {
    let key = match read {
        Some(Some(row)) => Ok(row),
        Some(None) => Err(pending_key(workspace_id, vendor)),
        None => active_key_by_query(workspace_id, vendor),
    };
    let key = key.unwrap_or_else(|pending| {
        ExtError::NoActiveKey {
            vendor: vendor.as_str(),
            workspace_id: workspace_id.to_string(),
            pending,
        }
        .raise()
    });
    let plain = decrypt(&key, workspace_id, vendor);
    record_use(&key.id, caller, in_recovery);
    if each {
        Spi::connect_mut(|client| {
            let args = [
                key.id.into(),
                (*workspace_id).into(),
                vendor.as_str().into(),
            ];
            with_plan(
                &AUDIT_PLAN,
                client,
                AUDIT_USE,
                &[
                    PgBuiltInOids::UUIDOID,
                    PgBuiltInOids::UUIDOID,
                    PgBuiltInOids::TEXTOID,
                ],
                true,
                |plan, client| client.update(plan, None, &args).or_raise_spi(),
            );
        });
    }
    plain
}

/// The active key by the kept query (where active_key.rs cannot stand in
/// for it), or whether a key is pending.
fn active_key_by_query(workspace_id: &Uuid, vendor: Vendor) -> Result<KeyRow, bool> {
    let found = Spi::connect_mut(|client| {
        let args = [(*workspace_id).into(), vendor.as_str().into()];
        with_plan(
            &ACTIVE_PLAN,
            client,
            ACTIVE_KEY,
            &[PgBuiltInOids::UUIDOID, PgBuiltInOids::TEXTOID],
            false,
            |plan, client| {
                let table = client.select(plan, Some(1), &args).or_raise_spi();
                if table.is_empty() {
                    return None;
                }
                let row = table.first();
                let id = row.get::<Uuid>(1).or_raise_spi();
                Some(KeyRow {
                    id: id.expect("byok.keys.id is NOT NULL"),
                    ciphertext: row.get::<Vec<u8>>(2).or_raise_spi(),
                    vault_secret_id: row.get::<Uuid>(3).or_raise_spi(),
                })
            },
        )
    });
    found.ok_or_else(|| pending_key(workspace_id, vendor))
}

/// Is a key of (workspace, vendor) pending validation? Asked only on the
/// error path, for the hint.
fn pending_key(workspace_id: &Uuid, vendor: Vendor) -> bool {
    Spi::connect_mut(|client| {
        let args = [(*workspace_id).into(), vendor.as_str().into()];
        with_plan(
            &PENDING_PLAN,
            client,
            PENDING_KEY,
            &[PgBuiltInOids::UUIDOID, PgBuiltInOids::TEXTOID],
            false,
            |plan, client| {
                let table = client.select(plan, Some(1), &args).or_raise_spi();
                table.first().get_one::<bool>().or_raise_spi() == Some(true)
            },
        )
    })
}

/// Count the use in shared memory when a flusher serves this database (or
/// this is a standby, where nothing else is possible); otherwise (no
/// flusher here, or every slot taken) write it to byok.key_usage in this
/// transaction. That write is a query, so it runs with the search_path
/// pinned (a second level where the caller pinned it already).
fn record_use(key_id: &Uuid, caller: pg_sys::Oid, in_recovery: bool) {
    // SAFETY: plain reads of backend globals.
    let (now, db) = unsafe { (pg_sys::GetCurrentTimestamp(), pg_sys::MyDatabaseId) };
    let hour = usage::hour_of(now);
    let slot = usage::Slot {
        db: db.to_u32(),
        key_id: *key_id.as_bytes(),
        role: caller.to_u32(),
        hour,
    };
    let shared = usage::available() && (in_recovery || usage::flusher_db() == db.to_u32());
    if shared && usage::count(slot, now) {
        return;
    }
    if in_recovery {
        if usage::available() {
            usage::note_uncounted();
        }
        return;
    }
    pinned(|| write_use(key_id, caller, hour, now));
}

/// One use written through to byok.key_usage (and keys.last_used_at).
fn write_use(key_id: &Uuid, role: pg_sys::Oid, hour: i64, now: i64) {
    let hour =
        TimestampWithTimeZone::try_from(hour).expect("the current hour is a valid timestamp");
    let now = TimestampWithTimeZone::try_from(now).expect("the current time is a valid timestamp");
    Spi::connect_mut(|client| {
        let args = [
            (*key_id).into(),
            i64::from(role.to_u32()).into(),
            hour.into(),
            now.into(),
        ];
        with_plan(
            &WRITE_PLAN,
            client,
            WRITE_USE,
            &[
                PgBuiltInOids::UUIDOID,
                PgBuiltInOids::INT8OID,
                PgBuiltInOids::TIMESTAMPTZOID,
                PgBuiltInOids::TIMESTAMPTZOID,
            ],
            true,
            |plan, client| client.update(plan, None, &args).or_raise_spi(),
        );
    });
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::tests_support::*;
    use pgrx::prelude::*;

    fn active_key(vendor: &str, key: &str) -> String {
        let id = add(vendor, key);
        validate_all("valid");
        id
    }

    /// Uses of a key counted so far: in shared memory and in the table.
    fn counted(id: &str) -> i64 {
        Spi::get_one::<i64>(&format!(
            "SELECT ((SELECT coalesce(sum(uses), 0) FROM byok.key_usage_live WHERE key_id = '{id}')
                  + (SELECT coalesce(sum(uses), 0) FROM byok.key_usage WHERE key_id = '{id}'))::bigint"
        ))
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn use_key_keeps_the_errors_and_hints_of_0_1_0() {
        let cases = [
            (
                "SELECT byok.use_key(NULL, 'openai')".to_string(),
                "22004",
                "workspace_id must not be NULL",
                "Pass a non-NULL workspace_id.",
            ),
            (
                format!("SELECT byok.use_key('{WS}', NULL)"),
                "22004",
                "vendor must not be NULL",
                "Pass a non-NULL vendor.",
            ),
            (
                format!("SELECT byok.use_key('{WS}', 'openai')"),
                "P0002",
                "no active openai key for workspace 11111111-1111-1111-1111-111111111111",
                "Ask the workspace to add a key with byok.add_key.",
            ),
        ];
        for (sql, state, msg, hint) in cases {
            let (got, m, h) = error_of(&sql);
            assert_eq!(
                (got.as_str(), m.as_str(), h.as_deref()),
                (state, msg, Some(hint))
            );
        }
        assert_eq!(
            error_of(&format!("SELECT byok.use_key('{WS}', 'gemini')")).0,
            "22023"
        );
        add("anthropic", &anthropic_key('p'));
        let (state, _, hint) = error_of(&format!("SELECT byok.use_key('{WS}', 'anthropic')"));
        assert_eq!(
            (state.as_str(), hint.as_deref()),
            (
                "P0002",
                Some("A key is pending validation; retry once the sidecar has validated it.")
            )
        );
        // A role that may execute the function but is no member of
        // byok_consumer is refused by use_key's own check.
        Spi::run(
            "CREATE ROLE byok_test_stranger;
             GRANT USAGE ON SCHEMA byok TO byok_test_stranger;
             GRANT EXECUTE ON FUNCTION byok.use_key(uuid, text) TO byok_test_stranger;
             SET LOCAL ROLE byok_test_stranger",
        )
        .unwrap();
        // error_of's function exists already (created above, as superuser);
        // called directly, since the stranger may not replace it.
        let refused = Spi::get_three_with_args::<String, String, String>(
            "SELECT state, msg, nullif(hint, '') FROM pg_temp.error_of($1)",
            &[format!("SELECT byok.use_key('{WS}', 'anthropic')")
                .as_str()
                .into()],
        )
        .unwrap();
        Spi::run("RESET ROLE").unwrap();
        let refused = (
            refused.0.unwrap_or_default(),
            refused.1.unwrap_or_default(),
            refused.2,
        );
        assert_eq!(
            (refused.0.as_str(), refused.1.as_str(), refused.2.as_deref()),
            (
                "42501",
                "permission denied: byok.use_key is for the byok_consumer role",
                Some(
                    "Call it from your backend as a role granted byok_consumer (service_role on Supabase)."
                )
            )
        );
    }

    #[pg_test]
    fn each_mode_audits_every_use_and_aggregate_mode_only_counts() {
        let key = openai_key('e');
        let id = active_key("openai", &key);
        let audited = || {
            Spi::get_one::<i64>(&format!(
                "SELECT count(*) FROM byok.audit_log WHERE action = 'use' AND key_id = '{id}'"
            ))
            .unwrap()
            .unwrap()
        };
        Spi::run("SET LOCAL byok.use_audit = 'each'").unwrap();
        for _ in 0..2 {
            let got =
                Spi::get_one::<String>(&format!("SELECT byok.use_key('{WS}', 'openai')")).unwrap();
            assert_eq!(got.as_deref(), Some(key.as_str()));
        }
        assert_eq!(audited(), 2);
        Spi::run("SET LOCAL byok.use_audit = 'aggregate'").unwrap();
        Spi::run(&format!("SELECT byok.use_key('{WS}', 'openai')")).unwrap();
        assert_eq!(audited(), 2, "aggregate mode writes no audit row");
        assert_eq!(counted(&id), 3, "every use is counted in both modes");
    }

    #[pg_test]
    fn the_caller_is_the_set_role_not_the_definer() {
        let key = anthropic_key('r');
        let id = active_key("anthropic", &key);
        Spi::run(
            "CREATE ROLE byok_test_backend IN ROLE byok_consumer;
             SET LOCAL ROLE byok_test_backend",
        )
        .unwrap();
        let got =
            Spi::get_one::<String>(&format!("SELECT byok.use_key('{WS}', 'anthropic')")).unwrap();
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(got.as_deref(), Some(key.as_str()));
        let roles = Spi::get_one::<Vec<String>>(&format!(
            "SELECT array_agg(DISTINCT role) FROM (
                SELECT role FROM byok.key_usage_live WHERE key_id = '{id}'
                UNION ALL SELECT role FROM byok.key_usage WHERE key_id = '{id}') r"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(roles, vec!["byok_test_backend".to_string()]);
    }

    /// Revoked and activated in the caller's own transaction: use_key sees
    /// it at once, as a query in its place would.
    #[pg_test]
    fn use_key_sees_its_own_transactions_changes() {
        let key = openai_key('t');
        let id = active_key("openai", &key);
        let got = Spi::get_one::<String>(&format!("SELECT byok.use_key('{WS}', 'openai')"));
        assert_eq!(got.unwrap().as_deref(), Some(key.as_str()));
        Spi::run(&format!("SELECT byok.revoke_key('{id}')")).unwrap();
        let (state, _, hint) = error_of(&format!("SELECT byok.use_key('{WS}', 'openai')"));
        assert_eq!(
            (state.as_str(), hint.as_deref()),
            (
                "P0002",
                Some("Ask the workspace to add a key with byok.add_key.")
            )
        );
        let again = openai_key('u');
        active_key("openai", &again);
        let got = Spi::get_one::<String>(&format!("SELECT byok.use_key('{WS}', 'openai')"));
        assert_eq!(got.unwrap().as_deref(), Some(again.as_str()));
    }

    /// Where row-level security or privileges bind the definer (an owner
    /// that is no superuser and lacks BYPASSRLS), use_key reads by the query,
    /// which applies them: the same errors and the same policy.
    #[pg_test]
    fn where_the_definer_is_bound_by_security_the_query_decides() {
        let key = openai_key('s');
        active_key("openai", &key);
        let use_sql = format!("SELECT byok.use_key('{WS}', 'openai')");
        Spi::run(
            "CREATE ROLE byok_test_definer NOSUPERUSER NOBYPASSRLS;
             ALTER FUNCTION byok.use_key(uuid, text) OWNER TO byok_test_definer",
        )
        .unwrap();
        let (state, msg, _) = error_of(&use_sql);
        assert_eq!(
            (state.as_str(), msg.as_str()),
            ("42501", "permission denied for schema byok")
        );
        Spi::run("GRANT USAGE ON SCHEMA byok TO byok_test_definer").unwrap();
        let (state, msg, _) = error_of(&use_sql);
        assert_eq!(
            (state.as_str(), msg.as_str()),
            ("42501", "permission denied for table keys")
        );
        Spi::run("GRANT SELECT ON byok.keys TO byok_test_definer").unwrap();
        Spi::run("SET LOCAL row_security = off").unwrap();
        let (state, msg, _) = error_of(&use_sql);
        assert_eq!(
            (state.as_str(), msg.as_str()),
            (
                "42501",
                "query would be affected by row-level security policy for table \"keys\""
            )
        );
    }
}
