//! Security finding 10: databases whose encoding is not UTF-8.
//!
//! pg_byok refuses to be installed in one (55000 with a hint). The library
//! is loaded into every backend all the same (preloaded for the log hook),
//! and can be called there (a 0.1.0 install, a function declared by hand):
//! a text argument that is not UTF-8 gives 22021, never a Rust panic or a
//! backtrace; and a key broken by such a byte is masked whole in the log.

mod common;

use byok_integration::postgres::{self, Client, NoTls};
use byok_integration::{sample_key, sqlstate, Cluster, ClusterOptions};
use common::*;

/// Non-UTF-8 databases created next to the cluster's `byok` database.
const DATABASES: &[(&str, &str)] = &[("ascii_db", "SQL_ASCII"), ("latin1_db", "LATIN1")];

fn cluster() -> Cluster {
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.client();
    for (name, encoding) in DATABASES {
        db.batch_execute(&format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING '{encoding}' \
             LC_COLLATE 'C' LC_CTYPE 'C'"
        ))
        .unwrap_or_else(|e| c.fail(&format!("create database {name}"), &e));
    }
    c
}

fn connect(c: &Cluster, dbname: &str) -> Client {
    postgres::Config::new()
        .host("127.0.0.1")
        .port(c.port())
        .user("postgres")
        .dbname(dbname)
        .connect(NoTls)
        .unwrap_or_else(|e| c.fail(&format!("connect to {dbname}"), &e))
}

/// Text in a SQL_ASCII database holding exactly these bytes.
const RAW_TEXT: &str = "convert_from(decode($1, 'hex'), 'SQL_ASCII')";

#[test]
fn create_extension_refuses_non_utf8_databases() {
    let c = cluster();
    for (name, encoding) in DATABASES {
        let mut db = connect(&c, name);
        let e = expect_state(
            db.batch_execute("CREATE EXTENSION pg_byok"),
            "55000",
            &format!("CREATE EXTENSION in a {encoding} database"),
        );
        let db_err = e.as_db_error().unwrap();
        assert!(
            db_err.message().contains("UTF8") && db_err.message().contains(encoding),
            "the message names both encodings: {}",
            db_err.message()
        );
        assert!(
            db_err.hint().is_some_and(|h| h.contains("ENCODING 'UTF8'")),
            "the hint says how to get a UTF8 database: {:?}",
            db_err.hint()
        );
        let left: i64 = db
            .query_one(
                "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'byok')
                      + (SELECT count(*) FROM pg_extension WHERE extname = 'pg_byok')",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "nothing of pg_byok is left in {name}");
    }
    // The UTF8 database of the same cluster has it (the harness installed it).
    let n: i64 = c
        .client()
        .query_one(
            "SELECT count(*) FROM pg_extension WHERE extname = 'pg_byok'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[test]
fn rust_functions_given_bytes_that_are_not_utf8_raise_22021_not_a_panic() {
    let c = cluster();
    let mut db = connect(&c, "ascii_db");
    // What a 0.1.0 install there declared, pointing at this library.
    db.batch_execute(
        "CREATE FUNCTION public.b_mask(text) RETURNS text LANGUAGE c STRICT
             AS '$libdir/pg_byok', 'mask_wrapper';
         CREATE FUNCTION public.b_redact(text) RETURNS text LANGUAGE c STRICT
             AS '$libdir/pg_byok', 'redact_wrapper';
         CREATE FUNCTION public.b_vendor(text) RETURNS text LANGUAGE c
             AS '$libdir/pg_byok', 'vendor_name_wrapper';
         CREATE FUNCTION public.b_seal(uuid, text, text)
             RETURNS TABLE(id uuid, vendor text, masked text, ciphertext bytea) LANGUAGE c
             AS '$libdir/pg_byok', 'seal_wrapper';",
    )
    .unwrap_or_else(|e| c.fail("declare the library's functions", &e));

    let key = sample_key("anthropic", 10);
    // ASCII input still works there.
    let masked: String = db
        .query_one("SELECT public.b_mask($1)", &[&key])
        .unwrap_or_else(|e| c.fail("b_mask of an ASCII key", &e))
        .get(0);
    assert_eq!(masked, mask(&key));

    let (head, tail) = key.split_at(60);
    let broken = format!("{}ff{}", hex(head), hex(tail));
    let calls = [
        format!("SELECT public.b_mask({RAW_TEXT})"),
        format!("SELECT public.b_redact({RAW_TEXT})"),
        format!("SELECT public.b_vendor({RAW_TEXT})"),
        format!("SELECT * FROM public.b_seal(gen_random_uuid(), 'anthropic', {RAW_TEXT})"),
        format!("SELECT * FROM public.b_seal(gen_random_uuid(), {RAW_TEXT}, 'x')"),
    ];
    for sql in &calls {
        let e = match db.query(sql.as_str(), &[&broken]) {
            Ok(rows) => panic!("{sql}: expected 22021, got {} rows", rows.len()),
            Err(e) => e,
        };
        let text = error_text(&e);
        assert_eq!(sqlstate(&e), "22021", "{sql}: {text}");
        let db_err = e.as_db_error().unwrap();
        assert!(
            db_err.message().contains("not valid UTF-8") && db_err.hint().is_some(),
            "{sql}: a clear message and a hint: {text}"
        );
        for rust_word in [
            "panic",
            "backtrace",
            "datums converted",
            ".rs:",
            "rust_begin_unwind",
        ] {
            assert!(
                !text.to_lowercase().contains(rust_word),
                "{sql}: the client got Rust internals ({rust_word}): {text}"
            );
        }
        assert!(db_err.detail().is_none(), "{sql}: no DETAIL: {text}");
        assert_no_key_material(&text, &[&key], sql);
    }
}

#[test]
fn a_key_broken_by_a_byte_that_is_not_utf8_is_masked_whole_in_the_log() {
    let c = cluster();
    let mut db = connect(&c, "ascii_db");
    let key = sample_key("anthropic", 11);
    // Cut 30 characters before the end: the tail alone is shorter than any
    // rule's run and has no "sk-", so only treating the byte as part of the
    // key masks it.
    let (head, tail) = key.split_at(key.len() - 30);
    let broken = format!("{}ff{}", hex(head), hex(tail));
    db.execute(
        &format!(
            "DO $$ BEGIN RAISE LOG 'byok-broken-key: %', \
             convert_from(decode('{broken}', 'hex'), 'SQL_ASCII'); END $$"
        ),
        &[],
    )
    .unwrap_or_else(|e| c.fail("RAISE LOG of a broken key", &e));
    let log = c.server_log();
    let line = log
        .lines()
        .find(|l| l.contains("byok-broken-key: "))
        .unwrap_or_else(|| panic!("the RAISE LOG line was not written:\n{log}"));
    assert!(
        line.contains(&format!("byok-broken-key: …{}", &key[key.len() - 4..])),
        "the broken key is masked as one: {line}"
    );
    assert_no_key_material(&log, &[&key], "server log");
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
