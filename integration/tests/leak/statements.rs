//! The leak scenario, part 1: keys through SQL statements, both protocols,
//! and statements that fail while holding a key.

use super::*;

/// Keys added through literals (simple protocol), of every accepted shape,
/// and one pasted with whitespace inside a CTE.
pub(super) fn keys_through_literals(db: &mut Client, keys: &mut Keys) {
    let ws_lit = Uuid::new_v4();
    for vendor in ["anthropic", "openai", "openai-svcacct", "openai-legacy"] {
        let key = keys.mint(vendor, &format!("{vendor} key added as a literal"));
        let ws = Uuid::new_v4();
        let sql_vendor = if vendor.starts_with("openai") {
            "openai"
        } else {
            vendor
        };
        assert_eq!(add_literal(db, ws, sql_vendor, &key), mask(&key));
    }
    // Mixed case vendor, whitespace around the key, inside a CTE.
    let k = keys.mint(
        "anthropic",
        "anthropic key pasted with whitespace, literal in a CTE",
    );
    simple(
        db,
        &format!("WITH k AS (SELECT E'\\r\\n  {k}\\t' AS v) SELECT (byok.add_key('{ws_lit}', 'Anthropic', v)).masked FROM k"),
    )
    .unwrap();
}

/// Keys added through bound parameters (extended protocol), each also
/// pasted into its label; returns their ids (the sidecar validates them).
pub(super) fn keys_through_bound_parameters(db: &mut Client, keys: &mut Keys) -> Vec<Uuid> {
    let ws_bound = Uuid::new_v4();
    let mut sidecar_ids = Vec::new();
    for vendor in ["anthropic", "openai"] {
        let key = keys.mint(vendor, &format!("{vendor} key added as a bound parameter"));
        // The key also pasted into the label: the label is redacted.
        sidecar_ids.push(add_bound(
            db,
            ws_bound,
            vendor,
            &key,
            Some(&format!("prod {key}")),
        ));
    }
    sidecar_ids
}

/// Statements that fail while holding a key (wrong types, bad vendors,
/// errors after add_key ran, constraint violations quoting the row, syntax
/// errors, failed transactions), then utility statements holding a key and
/// refused admin keys; none of them may leave a key in `ws_err`.
pub(super) fn failing_and_utility_statements(db: &mut Client, keys: &mut Keys) {
    let ws_err = Uuid::new_v4();
    failing_statements(db, keys, ws_err);
    utility_statements(db, keys, ws_err);
    admin_keys_refused(db, keys, ws_err);
    assert_eq!(
        db.query_one(
            "SELECT count(*) FROM byok.keys WHERE workspace_id = $1",
            &[&ws_err]
        )
        .unwrap()
        .get::<_, i64>(0),
        0,
        "every failing statement rolled back"
    );
}

fn failing_statements(db: &mut Client, keys: &mut Keys, ws_err: Uuid) {
    for vendor in ["anthropic", "openai"] {
        let k = keys.mint(vendor, &format!("{vendor} key in failing statements"));
        // wrong argument type
        simple_fails(
            db,
            &format!("SELECT byok.add_key('not-a-uuid', '{vendor}', '{k}')"),
            "22P02",
        );
        simple_fails(
            db,
            &format!("SELECT byok.add_key(42, '{vendor}', '{k}')"),
            "42883",
        );
        bound_fails(
            db,
            "SELECT byok.add_key($1::text::uuid, $2, $3)",
            &[&"nope", &vendor, &k],
            "22P02",
        );
        // the key itself cast to a wrong type: the message quotes the value
        simple_fails(db, &format!("SELECT '{k}'::int"), "22P02");
        bound_fails(db, "SELECT $1::text::int", &[&k], "22P02");
        // a bad vendor
        simple_fails(
            db,
            &format!("SELECT byok.add_key('{ws_err}', 'gemini', '{k}')"),
            "22023",
        );
        bound_fails(
            db,
            "SELECT byok.add_key($1, $2, $3)",
            &[&ws_err, &"gemini", &k],
            "22023",
        );
        // the other vendor's name
        let other = if vendor == "anthropic" {
            "openai"
        } else {
            "anthropic"
        };
        simple_fails(
            db,
            &format!("SELECT byok.add_key('{ws_err}', '{other}', '{k}')"),
            "22023",
        );
        // division by zero in the same statement: folded at plan time, and at run time after add_key ran
        simple_fails(
            db,
            &format!("SELECT byok.add_key('{ws_err}', '{vendor}', '{k}'), 1/0"),
            "22012",
        );
        simple_fails(
            db,
            &format!(
                "SELECT 1/(count(*) - count(*)) FROM byok.add_key('{ws_err}', '{vendor}', '{k}')"
            ),
            "22012",
        );
        bound_fails(
            db,
            "SELECT 1/(count(*) - $4::int) FROM byok.add_key($1, $2, $3)",
            &[&ws_err, &vendor, &k, &1i32],
            "22012",
        );
        // constraint violations whose DETAIL quotes the failing row
        simple_fails(
            db,
            &format!("INSERT INTO app_secrets VALUES (1, '{k}')"),
            "23514",
        );
        bound_fails(
            db,
            "INSERT INTO app_secrets VALUES ($1, $2)",
            &[&2i32, &k],
            "23514",
        );
        simple_fails(
            db,
            &format!("INSERT INTO app_required VALUES ('{k}', NULL)"),
            "23502",
        );
        // syntax errors: the statement is all there is to log
        simple_fails(
            db,
            &format!("SELECT byok.add_key('{ws_err}', '{vendor}', '{k}'"),
            "42601",
        );
        simple_fails(db, &format!("SELECT '{k}"), "42601");
        // several statements in one simple query, the last one failing
        simple_fails(
            db,
            &format!("SELECT 1; SELECT byok.add_key('{ws_err}', '{vendor}', '{k}'); SELECT 1/0"),
            "22012",
        );
        // a failed transaction: the key inside, then a statement that errors
        db.batch_execute("BEGIN").unwrap();
        simple(
            db,
            &format!("SELECT byok.add_key('{ws_err}', '{vendor}', '{k}')"),
        )
        .unwrap();
        simple_fails(db, "SELECT 1/0", "22012");
        simple_fails(db, &format!("SELECT '{k}'"), "25P02");
        db.batch_execute("ROLLBACK").unwrap();
    }
}

/// Utility statements holding a key. pg_stat_statements stores these
/// verbatim (track_utility is on by default); pg_byok's ProcessUtility
/// hook hands it a same-length masked text.
fn utility_statements(db: &mut Client, keys: &mut Keys, ws_err: Uuid) {
    let k = keys.mint("openai", "openai key in utility statements");
    let a = keys.mint("anthropic", "anthropic key in utility statements");
    db.batch_execute(
        "CREATE PROCEDURE leak_proc(k text) LANGUAGE plpgsql AS $$ BEGIN PERFORM length(k); END $$",
    )
    .unwrap();
    simple(
        db,
        &format!(
            "DO $$ BEGIN PERFORM byok.add_key('{ws_err}', 'openai', '{k}'); RAISE EXCEPTION 'undo'; \
             EXCEPTION WHEN raise_exception THEN NULL; END $$"
        ),
    )
    .unwrap();
    simple(db, &format!("CALL leak_proc('{a}')")).unwrap();
    simple(
        db,
        &format!("EXPLAIN (ANALYZE, VERBOSE) SELECT length('{k}')"),
    )
    .unwrap();
    let mut copied = String::new();
    db.copy_out(format!("COPY (SELECT length('{k}')) TO STDOUT").as_str())
        .unwrap()
        .read_to_string(&mut copied)
        .unwrap();
    assert_eq!(copied.trim(), k.len().to_string());
    simple(db, &format!("SET myapp.note = 'vendor key {a}'")).unwrap();
    simple(db, "RESET myapp.note").unwrap();
    simple(
        db,
        &format!("CREATE TEMP TABLE leak_ctas AS SELECT length('{a}') AS n"),
    )
    .unwrap();
    simple(
        db,
        &format!("BEGIN; DECLARE leak_cur CURSOR FOR SELECT length('{k}'); FETCH ALL FROM leak_cur; COMMIT"),
    )
    .unwrap();
    // A utility statement in the middle of a multi-statement string
    // (pg_stat_statements cuts it out by offset).
    simple(
        db,
        &format!("SELECT 1; DO $$ BEGIN PERFORM length('{a}'); END $$; SELECT 2"),
    )
    .unwrap();
    simple(db, &format!("PREPARE p_lit AS SELECT length('{k}')")).unwrap();
    assert_eq!(simple(db, "EXECUTE p_lit").unwrap(), [k.len().to_string()]);
    let shown = simple(
        db,
        "SELECT statement FROM pg_prepared_statements WHERE name = 'p_lit'",
    )
    .unwrap();
    assert!(
        !shown[0].contains(&k[30..50]),
        "pg_prepared_statements shows the key: {shown:?}"
    );
    simple(db, "PREPARE p_arg(text) AS SELECT length($1)").unwrap();
    simple(db, &format!("EXECUTE p_arg('{k}')")).unwrap();
    simple(db, "DEALLOCATE ALL").unwrap();
    // A literal in the extended protocol's Parse, failing at parse time.
    match db.query(format!("SELECT '{k}'::int").as_str(), &[]) {
        Err(e) => assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("22P02")),
        Ok(_) => panic!("expected 22P02"),
    }
    // Errors raised inside a utility statement pass through the hook
    // untouched, also when PL/pgSQL catches them in a subtransaction.
    simple_fails(
        db,
        &format!(
            "DO $$ BEGIN RAISE EXCEPTION 'length %', length('{a}') USING ERRCODE = '22023'; END $$"
        ),
        "22023",
    );
    let caught = simple(
        db,
        &format!(
            "DO $$ BEGIN BEGIN EXECUTE 'DO $i$ BEGIN PERFORM 1/0, length(''{a}''); END $i$'; \
             EXCEPTION WHEN division_by_zero THEN RAISE NOTICE 'caught'; END; END $$; SELECT 'still fine'"
        ),
    )
    .unwrap();
    assert_eq!(caught, ["still fine"]);
    // The utility statements were tracked (with their keys masked).
    let tracked: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_statements WHERE query LIKE 'DO $$ BEGIN PERFORM %' \
             OR query LIKE 'CALL leak_proc(%' OR query LIKE 'COPY (SELECT length(%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        tracked >= 3,
        "pg_stat_statements tracked the utility statements ({tracked})"
    );
}

/// Admin keys are refused; they are secrets all the same.
fn admin_keys_refused(db: &mut Client, keys: &mut Keys, ws_err: Uuid) {
    for vendor in ["anthropic-admin", "openai-admin"] {
        let k = keys.mint(vendor, &format!("{vendor} key (refused)"));
        let v = if vendor.starts_with("openai") {
            "openai"
        } else {
            "anthropic"
        };
        simple_fails(
            db,
            &format!("SELECT byok.add_key('{ws_err}', '{v}', '{k}')"),
            "22023",
        );
        bound_fails(
            db,
            "SELECT byok.add_key($1, $2, $3)",
            &[&ws_err, &v, &k],
            "22023",
        );
    }
}
