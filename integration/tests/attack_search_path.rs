//! Operators planted on the caller's search_path. `byok.use_key` is the one
//! pg_byok function without a `SET search_path` clause: its hot path runs
//! no query, and everything else pins the search_path first
//! (src/pinned_path.rs). An app role that puts `=` for uuid and for text in
//! its own schema, ahead of pg_catalog on the caller's search_path, must
//! never get them run by use_key: not on the hot path, not for a pending
//! key (the hint's query), not for the per-call audit row, not for a use
//! written through (a database the usage worker does not serve).

mod common;

use byok_integration::postgres::Client;
use byok_integration::{sample_key, Cluster};
use common::lifecycle::*;
use common::*;
use uuid::Uuid;

/// Run by `lurer` (an ordinary LOGIN role) in each database: the planted
/// operators note who ran them, then compare as pg_catalog's do.
const LURE: &str = "
    CREATE SCHEMA lure;
    CREATE TABLE lure.seen (who text NOT NULL);
    GRANT USAGE ON SCHEMA lure TO PUBLIC;
    GRANT INSERT ON lure.seen TO PUBLIC;
    CREATE FUNCTION lure.uuid_eq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql AS $f$
    BEGIN
        INSERT INTO lure.seen VALUES (current_user);
        RETURN $1 OPERATOR(pg_catalog.=) $2;
    END $f$;
    CREATE OPERATOR lure.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = lure.uuid_eq);
    CREATE FUNCTION lure.text_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $f$
    BEGIN
        INSERT INTO lure.seen VALUES (current_user);
        RETURN $1 OPERATOR(pg_catalog.=) $2;
    END $f$;
    CREATE OPERATOR lure.= (LEFTARG = text, RIGHTARG = text, FUNCTION = lure.text_eq);
";

const LURED: &str = "SET search_path = lure, pg_catalog";

fn plant(c: &Cluster, db: &str) {
    c.client_db(db)
        .batch_execute(&format!("GRANT CREATE ON DATABASE {db} TO lurer"))
        .unwrap_or_else(|e| c.fail("grant create", &e));
    c.client_as_in("lurer", db)
        .batch_execute(LURE)
        .unwrap_or_else(|e| c.fail("planting the operators as lurer", &e));
}

/// Who ran a planted operator since the last look (and forget them).
fn seen(c: &Cluster, db: &str) -> Vec<String> {
    c.client_db(db)
        .query("DELETE FROM lure.seen RETURNING who", &[])
        .unwrap_or_else(|e| c.fail("reading lure.seen", &e))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A session as `backend` (byok_consumer) with the planted search_path.
fn lured_backend(c: &Cluster, db: &str) -> Client {
    let mut b = c.client_as_in("backend", db);
    b.batch_execute(LURED)
        .unwrap_or_else(|e| c.fail("setting the lured search_path", &e));
    b
}

#[test]
fn use_key_never_runs_operators_from_the_callers_search_path() {
    let c = cluster();
    create_login(&c, "lurer", &[]);
    plant(&c, "byok");

    // The lure works: a plain comparison under that search_path runs it.
    let mut b = lured_backend(&c, "byok");
    b.query_one("SELECT gen_random_uuid() = gen_random_uuid()", &[])
        .unwrap();
    assert_eq!(seen(&c, "byok"), vec!["backend".to_string()]);

    // The hot path.
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 71);
    add_active(&c, ws, "anthropic", &key);
    for _ in 0..3 {
        assert_eq!(use_key(&mut b, ws, "anthropic").unwrap(), key);
    }
    assert_eq!(seen(&c, "byok"), Vec::<String>::new(), "hot path");

    // A pending key: use_key queries for the hint.
    add_key(
        &mut c.client(),
        ws,
        "openai",
        &sample_key("openai", 72),
        None,
    )
    .unwrap_or_else(|e| c.fail("add_key", &e));
    let e = use_key(&mut b, ws, "openai").unwrap_err();
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "P0002");
    assert_eq!(
        db.hint(),
        Some("A key is pending validation; retry once the sidecar has validated it.")
    );
    assert_eq!(seen(&c, "byok"), Vec::<String>::new(), "pending key");

    // The per-call audit row.
    c.client()
        .batch_execute("ALTER ROLE backend SET byok.use_audit = 'each'")
        .unwrap_or_else(|e| c.fail("ALTER ROLE", &e));
    let mut b = lured_backend(&c, "byok");
    assert_eq!(use_key(&mut b, ws, "anthropic").unwrap(), key);
    assert_eq!(seen(&c, "byok"), Vec::<String>::new(), "each-use audit");
    c.client()
        .batch_execute("ALTER ROLE backend RESET byok.use_audit")
        .unwrap_or_else(|e| c.fail("ALTER ROLE", &e));

    // A use written through, in a database the worker does not serve.
    c.client_db("postgres")
        .batch_execute("CREATE DATABASE other")
        .unwrap_or_else(|e| c.fail("CREATE DATABASE", &e));
    let mut other = c.client_db("other");
    other
        .batch_execute("CREATE EXTENSION pg_byok")
        .unwrap_or_else(|e| c.fail("CREATE EXTENSION", &e));
    plant(&c, "other");
    let ws = Uuid::new_v4();
    let key = sample_key("openai", 73);
    let info = add_key(&mut other, ws, "openai", &key, None).unwrap();
    finish_all(&mut other, "valid");
    let mut b = lured_backend(&c, "other");
    assert_eq!(use_key(&mut b, ws, "openai").unwrap(), key);
    let written: i64 = other
        .query_one(
            "SELECT coalesce(sum(uses), 0)::bigint FROM byok.key_usage WHERE key_id = $1",
            &[&info.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(written, 1, "the use was written through");
    assert_eq!(seen(&c, "other"), Vec::<String>::new(), "written through");
}
