//! The leak scenario, part 2: the sidecar's validation cycle, rotation,
//! use and revocation, pg_stat_activity, and the controls.

use super::*;

/// The sidecar's full validation cycle against the mock vendor (or, with no
/// sidecar binary outside CI, the same through SQL); its output goes to
/// `artifacts/sidecar-output.txt`. `sidecar_ids` are the bound keys added
/// earlier; every key still pending afterwards is validated by a careless
/// worker echoing the key in the detail.
pub(super) fn sidecar_validation(
    c: &Cluster,
    db: &mut Client,
    keys: &mut Keys,
    mut sidecar_ids: Vec<Uuid>,
    artifacts: &Path,
) {
    let ws_side = Uuid::new_v4();
    for (vendor, marker) in [
        ("anthropic", None),
        ("openai", None),
        ("anthropic", Some("mockecho")),
        ("openai", Some("mockecho")),
        ("anthropic", Some("mock401")),
        ("openai", Some("mockquota")),
    ] {
        let key = match marker {
            Some(m) => keys.mint_marked(
                vendor,
                m,
                &format!("{vendor} key marked {m} for the sidecar"),
            ),
            None => keys.mint(vendor, &format!("{vendor} key for the sidecar")),
        };
        sidecar_ids.push(add_bound(db, ws_side, vendor, &key, None));
    }
    let sidecar_output: Vec<u8> = match sidecar_bin() {
        Some(bin) => {
            eprintln!(
                "leak suite: running the sidecar {} against its mock vendor",
                bin.display()
            );
            let out = sidecar_cycle(c, &bin, "sidecar", &sidecar_ids);
            assert!(
                out.len() > 200,
                "the sidecar printed almost nothing: {}",
                String::from_utf8_lossy(&out)
            );
            out
        }
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: target/debug/byok-sidecar or byok-mock-vendor is missing (build them: cargo build -p byok-sidecar -p byok-mock-vendor)"
            );
            eprintln!(
                "leak suite: WARNING: no sidecar binary (cargo build -p byok-sidecar); \
                 validating through claim_jobs/finish_job in SQL instead"
            );
            validate_by_sql(c, "valid", true);
            Vec::new()
        }
    };
    fs::write(artifacts.join("sidecar-output.txt"), &sidecar_output).unwrap();
    for id in &sidecar_ids {
        let st = status_of(db, *id);
        assert_ne!(st, "pending", "key {id} got no verdict");
    }
    // Everything else still pending (the literal keys) is validated the way
    // a careless worker would: echoing the key in the detail.
    validate_by_sql(c, "valid", true);
}

/// Rotate, use (results, errors, warnings, a function body failing on the
/// key), revalidate, revoke with the key in the reason, revoke a workspace;
/// both vendors.
pub(super) fn rotate_use_revoke(c: &Cluster, db: &mut Client, keys: &mut Keys) {
    for vendor in ["anthropic", "openai"] {
        let ws = Uuid::new_v4();
        let k1 = keys.mint(vendor, &format!("{vendor} key before rotation"));
        let id1 = add_bound(db, ws, vendor, &k1, None);
        validate_by_sql(c, "valid", false);
        let k2 = keys.mint(vendor, &format!("{vendor} key after rotation (literal)"));
        add_literal(db, ws, vendor, &k2);
        validate_by_sql(c, "valid", false);
        assert_eq!(
            status_of(db, id1),
            "revoked",
            "rotation supersedes the old key"
        );

        let mut backend = c.client_as("backend");
        let used: String = backend
            .query_one(
                "SELECT byok.use_key(workspace_id => $1, vendor => $2)",
                &[&ws, &vendor],
            )
            .unwrap()
            .get(0);
        assert_eq!(used, k2);
        simple(
            &mut backend,
            &format!("SELECT byok.use_key('{ws}', '{vendor}')"),
        )
        .unwrap();
        // The plaintext inside an error message and a warning, never typed by the client.
        simple_fails(
            &mut backend,
            &format!("SELECT byok.use_key('{ws}', '{vendor}')::int"),
            "22P02",
        );
        simple_fails(
            &mut backend,
            &format!("SELECT length(k) / 0 FROM byok.use_key('{ws}', '{vendor}') AS k"),
            "22012",
        );
        simple(
            db,
            &format!(
                "DO $$ BEGIN RAISE WARNING 'using %', byok.use_key('{ws}', '{vendor}'); \
                 RAISE LOG 'detail test' USING DETAIL = byok.use_key('{ws}', '{vendor}'), \
                 HINT = byok.use_key('{ws}', '{vendor}'); END $$"
            ),
        )
        .unwrap();
        simple_fails(
            db,
            &format!(
                "DO $$ BEGIN RAISE EXCEPTION 'boom %', byok.use_key('{ws}', '{vendor}') \
                 USING DETAIL = byok.use_key('{ws}', '{vendor}'); END $$"
            ),
            "P0001",
        );
        // A SQL function whose body fails on the key: CONTEXT quotes the body.
        simple(
            db,
            "CREATE OR REPLACE FUNCTION pg_temp.check_len(k text) RETURNS int LANGUAGE plpgsql AS \
             $f$ BEGIN RETURN k::int; END $f$",
        )
        .unwrap();
        simple_fails(
            db,
            &format!("SELECT pg_temp.check_len(byok.use_key('{ws}', '{vendor}'))"),
            "22P02",
        );

        let rk: Uuid = db
            .query_one(
                "SELECT id FROM byok.keys WHERE workspace_id = $1 AND status = 'active'",
                &[&ws],
            )
            .unwrap()
            .get(0);
        db.query_one("SELECT byok.revalidate_key(key_id => $1)", &[&rk])
            .unwrap();
        validate_by_sql(c, "valid", true);
        db.query_one(
            "SELECT byok.revoke_key(key_id => $1, reason => $2)",
            &[&rk, &format!("leaked? {k2}")],
        )
        .unwrap();
        let k3 = keys.mint(vendor, &format!("{vendor} key revoked with its workspace"));
        add_literal(db, ws, vendor, &k3);
        db.query_one("SELECT byok.revoke_workspace(workspace_id => $1)", &[&ws])
            .unwrap();
        let live: i64 = db
            .query_one(
                "SELECT count(*) FROM byok.keys WHERE workspace_id = $1 AND status <> 'revoked'",
                &[&ws],
            )
            .unwrap()
            .get(0);
        assert_eq!(live, 0, "revoke_workspace revoked every key");
    }
}

/// pg_stat_activity: a literal key is visible while the session shows that
/// statement (documented; superusers and the same role only), a bound one
/// never is.
pub(super) fn pg_stat_activity(c: &Cluster, db: &mut Client, keys: &mut Keys) {
    let mut s1 = c.client();
    let pid: i32 = s1.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let lit = keys.mint("anthropic", "anthropic key in pg_stat_activity (literal)");
    add_literal(&mut s1, Uuid::new_v4(), "anthropic", &lit);
    let q: String = db
        .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .unwrap()
        .get(0);
    assert!(
        q.contains(&lit),
        "the documented limitation holds: a literal shows in pg_stat_activity"
    );
    let mut tenant = c.client_as("tenant");
    let tq: Option<String> = tenant
        .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .unwrap()
        .get(0);
    assert!(
        !tq.unwrap_or_default().contains(&lit[20..40]),
        "another role cannot read it"
    );
    let bound = keys.mint("openai", "openai key in pg_stat_activity (bound)");
    add_bound(&mut s1, Uuid::new_v4(), "openai", &bound, None);
    let q: String = db
        .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .unwrap()
        .get(0);
    assert!(
        !q.contains(&bound[20..40]) && q.contains("$3"),
        "bound parameters stay out: {q}"
    );
    validate_by_sql(c, "valid", false);
}

/// The controls: a key planted in an ordinary table, and one logged on
/// purpose with `byok.redact_logs = off` (which a non-superuser cannot
/// switch off). Returns (table control, log control).
pub(super) fn plant_controls(c: &Cluster, db: &mut Client, keys: &Keys) -> (String, String) {
    let ctl_table = sample_key("anthropic", keys.seed + 500);
    let ctl_log = sample_key("openai", keys.seed + 501);
    db.batch_execute("CREATE TABLE control_leak(t text)")
        .unwrap();
    db.execute("INSERT INTO control_leak VALUES ($1)", &[&ctl_table])
        .unwrap();
    simple(db, "SET byok.redact_logs = off").unwrap();
    simple(db, &format!("SELECT '{ctl_log}'")).unwrap();
    simple(db, "RESET byok.redact_logs").unwrap();
    // A non-superuser cannot switch redaction off for itself.
    let mut tenant = c.client_as("tenant");
    simple_fails(&mut tenant, "SET byok.redact_logs = off", "42501");
    drop(tenant);
    (ctl_table, ctl_log)
}
