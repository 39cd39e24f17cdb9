//! Key lifecycle (issue 2), input validation: every accepted key shape
//! round-trips, and bad inputs raise the documented SQLSTATEs and leave
//! nothing behind.

mod common;

use byok_integration::sample_key;
use common::lifecycle::*;
use common::*;
use uuid::Uuid;

#[test]
fn every_accepted_key_shape_round_trips() {
    let c = cluster();
    for (i, (vendor, shape)) in [
        ("anthropic", "anthropic"),
        ("openai", "openai"),
        ("openai", "openai-svcacct"),
        ("openai", "openai-legacy"),
    ]
    .iter()
    .enumerate()
    {
        let ws = Uuid::new_v4();
        let key = sample_key(shape, 200 + i as u64);
        let info = add_active(&c, ws, vendor, &key);
        assert_eq!(info.status, "active", "{shape}");
        assert_eq!(info.masked, mask(&key), "{shape}");
        assert_eq!(
            use_key(&mut c.client_as("backend"), ws, vendor).unwrap(),
            key,
            "{shape}"
        );
    }
}

/// One bad add_key call: what, workspace_id, vendor, api_key, expected SQLSTATE.
type Case<'a> = (
    &'a str,
    Option<Uuid>,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
);

#[test]
fn bad_inputs_raise_the_documented_sqlstates_and_leave_nothing() {
    let c = cluster();
    let mut db = c.client();
    let ws = Uuid::new_v4();
    let ant = sample_key("anthropic", 1401);
    let oai = sample_key("openai", 1402);
    let inner_space = format!("{} {}", &ant[..50], &ant[50..]);
    let huge = "a".repeat(1 << 20);
    let secrets = [ant.as_str(), oai.as_str()];

    let cases: Vec<Case> = vec![
        (
            "NULL workspace",
            None,
            Some("anthropic"),
            Some(&ant),
            "22004",
        ),
        ("NULL vendor", Some(ws), None, Some(&ant), "22004"),
        ("NULL key", Some(ws), Some("anthropic"), None, "22004"),
        ("empty key", Some(ws), Some("anthropic"), Some(""), "22023"),
        (
            "whitespace key",
            Some(ws),
            Some("anthropic"),
            Some(" \r\n\t "),
            "22023",
        ),
        ("hello", Some(ws), Some("anthropic"), Some("hello"), "22023"),
        (
            "inner space",
            Some(ws),
            Some("anthropic"),
            Some(&inner_space),
            "22023",
        ),
        ("1 MB", Some(ws), Some("anthropic"), Some(&huge), "22023"),
        (
            "openai key for anthropic",
            Some(ws),
            Some("anthropic"),
            Some(&oai),
            "22023",
        ),
        (
            "anthropic key for openai",
            Some(ws),
            Some("openai"),
            Some(&ant),
            "22023",
        ),
        ("gemini", Some(ws), Some("gemini"), Some(&ant), "22023"),
        ("empty vendor", Some(ws), Some(""), Some(&ant), "22023"),
    ];
    let admin_a = sample_key("anthropic-admin", 1403);
    let admin_o = sample_key("openai-admin", 1404);
    let mut cases = cases;
    cases.push((
        "anthropic admin key",
        Some(ws),
        Some("anthropic"),
        Some(&admin_a),
        "22023",
    ));
    cases.push((
        "openai admin key",
        Some(ws),
        Some("openai"),
        Some(&admin_o),
        "22023",
    ));

    for (what, w, v, k, code) in &cases {
        let r = db.query_one(
            "SELECT id FROM byok.add_key(workspace_id => $1, vendor => $2, api_key => $3)",
            &[w, v, k],
        );
        let e = expect_state(r, code, what);
        assert_no_key_material(
            &error_text(&e),
            &[secrets[0], secrets[1], &admin_a, &admin_o],
            what,
        );
        let db_err = e.as_db_error().unwrap();
        assert!(!db_err.message().is_empty(), "{what}: a message");
    }
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM byok.keys"),
        0,
        "no row left behind"
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM byok.jobs"),
        0,
        "no job left behind"
    );

    // Other functions: NULLs, bad vendors, nothing to use.
    let nil: Option<Uuid> = None;
    let none: Option<&str> = None;
    expect_state(
        db.query("SELECT * FROM byok.list_keys(workspace_id => $1)", &[&nil]),
        "22004",
        "list_keys(NULL)",
    );
    expect_state(
        db.query(
            "SELECT byok.use_key(workspace_id => $1, vendor => 'anthropic')",
            &[&nil],
        ),
        "22004",
        "use_key(NULL, ..)",
    );
    expect_state(
        db.query(
            "SELECT byok.use_key(workspace_id => $1, vendor => $2)",
            &[&ws, &none],
        ),
        "22004",
        "use_key(.., NULL)",
    );
    expect_state(
        use_key(&mut db, ws, "gemini"),
        "22023",
        "use_key unknown vendor",
    );
    expect_state(
        use_key(&mut db, ws, "anthropic"),
        "P0002",
        "use_key with no key",
    );
    expect_state(
        db.query("SELECT * FROM byok.revoke_key(key_id => $1)", &[&nil]),
        "22004",
        "revoke_key(NULL)",
    );
    expect_state(
        db.query("SELECT * FROM byok.revalidate_key(key_id => $1)", &[&nil]),
        "22004",
        "revalidate_key(NULL)",
    );
    expect_state(
        db.query("SELECT byok.revoke_workspace(workspace_id => $1)", &[&nil]),
        "22004",
        "revoke_workspace(NULL)",
    );
    expect_state(
        db.query("SELECT * FROM byok.claim_jobs(worker => $1)", &[&none]),
        "22004",
        "claim_jobs(NULL)",
    );

    // mask and redact.
    let m: String = db
        .query_one("SELECT byok.mask(api_key => $1)", &[&ant])
        .unwrap()
        .get(0);
    assert_eq!(m, mask(&ant));
    let m: String = db
        .query_one("SELECT byok.mask(api_key => $1)", &[&oai])
        .unwrap()
        .get(0);
    assert_eq!(m, mask(&oai));
    let text = format!("before {ant} middle {oai}\nafter {admin_a} end");
    let red: String = db
        .query_one("SELECT byok.redact(input => $1)", &[&text])
        .unwrap()
        .get(0);
    assert_no_key_material(&red, &[&ant, &oai, &admin_a], "redact's output");
    for word in ["before ", " middle ", "after ", " end"] {
        assert!(
            red.contains(word),
            "redact keeps the surrounding text {word:?}: {red:?}"
        );
    }

    // finish_job with an unknown outcome is refused; the job stays finishable.
    let info = add_key(&mut db, ws, "anthropic", &ant, None).unwrap();
    let cl = claim_jobs(&mut db, "w", 16, 60).unwrap();
    assert_eq!(cl.len(), 1);
    expect_state(
        finish_job(
            &mut db,
            cl[0].job_id,
            cl[0].lease_token,
            "maybe",
            None,
            None,
            None,
        ),
        "22023",
        "unknown outcome",
    );
    let nil_token: Option<Uuid> = None;
    expect_state(
        db.query(
            "SELECT byok.finish_job(job_id => $1, lease_token => $2, outcome => 'valid')",
            &[&cl[0].job_id, &nil_token],
        ),
        "22004",
        "finish_job NULL lease_token",
    );
    assert_eq!(
        finish_job(
            &mut db,
            cl[0].job_id,
            cl[0].lease_token,
            "valid",
            None,
            None,
            None
        )
        .unwrap(),
        "active"
    );
    assert_eq!(use_key(&mut db, ws, "anthropic").unwrap(), ant);
    assert_eq!(key_by_id(&mut db, ws, info.id).status, "active");
    assert_no_key_material(
        &c.server_log(),
        &[&ant, &oai, &admin_a, &admin_o],
        "the server log",
    );
}
