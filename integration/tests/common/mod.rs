//! Shared helpers for the integration tests: typed wrappers that call the
//! public functions of API.md exactly as written (named arguments, the
//! documented column names), and assertion helpers.
#![allow(dead_code)]

pub mod lifecycle;
pub mod supabase;

use byok_integration::postgres::{self, GenericClient, Row};
use byok_integration::{sqlstate, Cluster};
use std::fmt::Debug;
use std::time::SystemTime;
use uuid::Uuid;

/// The columns of `byok.key_info`, in API.md's order.
pub const KEY_INFO: &str = "id, workspace_id, vendor, label, masked, status, status_detail, \
                            created_at, validated_at, revoked_at";

#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub vendor: String,
    pub label: Option<String>,
    pub masked: String,
    pub status: String,
    pub status_detail: Option<String>,
    pub created_at: SystemTime,
    pub validated_at: Option<SystemTime>,
    pub revoked_at: Option<SystemTime>,
}

impl KeyInfo {
    pub fn from_row(r: &Row) -> KeyInfo {
        KeyInfo {
            id: r.get("id"),
            workspace_id: r.get("workspace_id"),
            vendor: r.get("vendor"),
            label: r.get("label"),
            masked: r.get("masked"),
            status: r.get("status"),
            status_detail: r.get("status_detail"),
            created_at: r.get("created_at"),
            validated_at: r.get("validated_at"),
            revoked_at: r.get("revoked_at"),
        }
    }
}

/// One row of `byok.claim_jobs`.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job_id: i64,
    pub key_id: Uuid,
    pub workspace_id: Uuid,
    pub vendor: String,
    pub api_key: String,
    pub attempt: i32,
    pub lease_token: Uuid,
}

/// API.md's mask: '…' followed by the last 4 characters.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("…{tail}")
}

pub fn add_key(
    db: &mut impl GenericClient,
    workspace_id: Uuid,
    vendor: &str,
    api_key: &str,
    label: Option<&str>,
) -> Result<KeyInfo, postgres::Error> {
    let sql = format!(
        "SELECT {KEY_INFO} FROM byok.add_key(workspace_id => $1, vendor => $2, api_key => $3, label => $4)"
    );
    db.query_one(sql.as_str(), &[&workspace_id, &vendor, &api_key, &label])
        .map(|r| KeyInfo::from_row(&r))
}

/// add_key without the label argument (its DEFAULT).
pub fn add_key_default_label(
    db: &mut impl GenericClient,
    workspace_id: Uuid,
    vendor: &str,
    api_key: &str,
) -> Result<KeyInfo, postgres::Error> {
    let sql = format!(
        "SELECT {KEY_INFO} FROM byok.add_key(workspace_id => $1, vendor => $2, api_key => $3)"
    );
    db.query_one(sql.as_str(), &[&workspace_id, &vendor, &api_key])
        .map(|r| KeyInfo::from_row(&r))
}

pub fn list_keys(
    db: &mut impl GenericClient,
    workspace_id: Uuid,
) -> Result<Vec<KeyInfo>, postgres::Error> {
    let sql = format!("SELECT {KEY_INFO} FROM byok.list_keys(workspace_id => $1)");
    db.query(sql.as_str(), &[&workspace_id])
        .map(|rows| rows.iter().map(KeyInfo::from_row).collect())
}

pub fn key_by_id(db: &mut impl GenericClient, workspace_id: Uuid, id: Uuid) -> KeyInfo {
    list_keys(db, workspace_id)
        .expect("list_keys")
        .into_iter()
        .find(|k| k.id == id)
        .unwrap_or_else(|| panic!("key {id} not in list_keys({workspace_id})"))
}

pub fn revoke_key(
    db: &mut impl GenericClient,
    key_id: Uuid,
    reason: Option<&str>,
) -> Result<KeyInfo, postgres::Error> {
    let r = match reason {
        Some(reason) => db.query_one(
            format!("SELECT {KEY_INFO} FROM byok.revoke_key(key_id => $1, reason => $2)").as_str(),
            &[&key_id, &reason],
        ),
        None => db.query_one(
            format!("SELECT {KEY_INFO} FROM byok.revoke_key(key_id => $1)").as_str(),
            &[&key_id],
        ),
    };
    r.map(|r| KeyInfo::from_row(&r))
}

pub fn revoke_workspace(
    db: &mut impl GenericClient,
    workspace_id: Uuid,
    reason: Option<&str>,
) -> Result<i32, postgres::Error> {
    match reason {
        Some(reason) => db
            .query_one(
                "SELECT byok.revoke_workspace(workspace_id => $1, reason => $2)",
                &[&workspace_id, &reason],
            )
            .map(|r| r.get(0)),
        None => db
            .query_one(
                "SELECT byok.revoke_workspace(workspace_id => $1)",
                &[&workspace_id],
            )
            .map(|r| r.get(0)),
    }
}

pub fn revalidate_key(
    db: &mut impl GenericClient,
    key_id: Uuid,
) -> Result<KeyInfo, postgres::Error> {
    db.query_one(
        format!("SELECT {KEY_INFO} FROM byok.revalidate_key(key_id => $1)").as_str(),
        &[&key_id],
    )
    .map(|r| KeyInfo::from_row(&r))
}

pub fn use_key(
    db: &mut impl GenericClient,
    workspace_id: Uuid,
    vendor: &str,
) -> Result<String, postgres::Error> {
    db.query_one(
        "SELECT byok.use_key(workspace_id => $1, vendor => $2)",
        &[&workspace_id, &vendor],
    )
    .map(|r| r.get(0))
}

pub fn claim_jobs(
    db: &mut impl GenericClient,
    worker: &str,
    max_jobs: i32,
    lease_seconds: i32,
) -> Result<Vec<Claim>, postgres::Error> {
    let rows = db.query(
        "SELECT job_id, key_id, workspace_id, vendor, api_key, attempt, lease_token \
           FROM byok.claim_jobs(worker => $1, max_jobs => $2, lease_seconds => $3)",
        &[&worker, &max_jobs, &lease_seconds],
    )?;
    Ok(rows
        .iter()
        .map(|r| Claim {
            job_id: r.get("job_id"),
            key_id: r.get("key_id"),
            workspace_id: r.get("workspace_id"),
            vendor: r.get("vendor"),
            api_key: r.get("api_key"),
            attempt: r.get("attempt"),
            lease_token: r.get("lease_token"),
        })
        .collect())
}

pub fn finish_job(
    db: &mut impl GenericClient,
    job_id: i64,
    lease_token: Uuid,
    outcome: &str,
    detail: Option<&str>,
    http_status: Option<i32>,
    retry_after_seconds: Option<i32>,
) -> Result<String, postgres::Error> {
    db.query_one(
        "SELECT byok.finish_job(job_id => $1, lease_token => $2, outcome => $3, detail => $4, \
                                http_status => $5, retry_after_seconds => $6)",
        &[
            &job_id,
            &lease_token,
            &outcome,
            &detail,
            &http_status,
            &retry_after_seconds,
        ],
    )
    .map(|r| r.get(0))
}

/// Claim every ready job and finish each with `outcome`; returns the claims
/// and the statuses finish_job returned.
pub fn finish_all(db: &mut impl GenericClient, outcome: &str) -> Vec<(Claim, String)> {
    let mut done = Vec::new();
    for _ in 0..100 {
        let batch = claim_jobs(db, "test-worker", 100, 60).expect("claim_jobs");
        if batch.is_empty() {
            return done;
        }
        for c in batch {
            let st = finish_job(db, c.job_id, c.lease_token, outcome, None, Some(200), None)
                .expect("finish_job");
            done.push((c, st));
        }
    }
    panic!("finish_all: more than 10,000 jobs?");
}

/// Create a LOGIN role (if missing) that is a member of `grants`.
pub fn create_login(c: &Cluster, name: &str, grants: &[&str]) {
    let mut db = c.client();
    db.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN \
           CREATE ROLE \"{name}\" LOGIN; END IF; END $$;"
    ))
    .unwrap_or_else(|e| c.fail(&format!("create role {name}"), &e));
    for g in grants {
        db.batch_execute(&format!("GRANT \"{g}\" TO \"{name}\""))
            .unwrap_or_else(|e| c.fail(&format!("grant {g} to {name}"), &e));
    }
}

/// The full text of a database error (message, detail, hint), to search for leaks.
pub fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} | {} | {}",
            db.message(),
            db.detail().unwrap_or(""),
            db.hint().unwrap_or("")
        ),
        None => format!("{e:?}"),
    }
}

/// Assert that `r` failed with SQLSTATE `code`; `what` names the check.
#[track_caller]
pub fn expect_state<T: Debug>(
    r: Result<T, postgres::Error>,
    code: &str,
    what: &str,
) -> postgres::Error {
    match r {
        Ok(v) => panic!("{what}: expected SQLSTATE {code}, but it succeeded with {v:?}"),
        Err(e) => {
            let got = sqlstate(&e);
            assert_eq!(
                got,
                code,
                "{what}: expected SQLSTATE {code}, got {got}: {}",
                error_text(&e)
            );
            e
        }
    }
}

/// Superuser view of a key's stored ciphertext (NULL once erased).
pub fn ciphertext(db: &mut impl GenericClient, key_id: Uuid) -> Option<Vec<u8>> {
    db.query_one("SELECT ciphertext FROM byok.keys WHERE id = $1", &[&key_id])
        .expect("select ciphertext as superuser")
        .get(0)
}

/// Windows of `len` characters of the key's random body (after its fixed
/// prefix): none of them may appear anywhere a key must not be.
pub fn key_fragments(key: &str, len: usize) -> Vec<String> {
    // Fixed prefixes are not key material (the error may well say "admin key").
    let prefix = [
        "sk-ant-api03-",
        "sk-ant-admin01-",
        "sk-proj-",
        "sk-svcacct-",
        "sk-admin-",
        "sk-",
    ]
    .iter()
    .find(|p| key.starts_with(**p))
    .map(|p| p.len())
    .unwrap_or(0);
    let body = &key[prefix..];
    (0..=body.len().saturating_sub(len))
        .map(|i| body[i..i + len].to_string())
        .collect()
}

/// Assert that `text` holds no 12-character fragment of any of `keys`.
#[track_caller]
pub fn assert_no_key_material(text: &str, keys: &[&str], where_: &str) {
    for key in keys {
        assert!(!text.contains(key), "{where_} contains a whole key");
        for f in key_fragments(key, 12) {
            assert!(!text.contains(&f), "{where_} contains key fragment {f:?}");
        }
    }
}
