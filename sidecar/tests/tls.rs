//! TLS to Postgres: a server with `ssl = on` and a certificate from a
//! private CA. With `sslmode=require` and `--db-ca-file` the sidecar
//! connects over verified TLS and validates keys; without the CA it refuses
//! (stricter than libpq's `require`), and says which certificate check failed.

mod common;

use std::time::Duration;

use byok_integration::wait_until;
use common::*;
use uuid::Uuid;

/// Waits until `sc`'s log holds `needle` and checks it never got ready.
fn refused(sc: &Sidecar, needle: &str) {
    wait_until(
        &format!("{} logs {needle:?}", sc.name),
        Duration::from_secs(30),
        || sc.log_text().contains(needle),
    );
    let (code, _) = http(&sc.metrics, "GET", "/readyz", None);
    assert_eq!(code, 503, "{} must not be ready", sc.name);
    assert_eq!(sc.metric("byok_sidecar_db_connected"), 0.0);
}

#[test]
fn require_with_the_ca_file_validates_and_without_it_refuses() {
    let mut env = setup(&[], MockOptions::default());
    let pki = pki::generate(&["localhost", "127.0.0.1"]);
    pki::enable_ssl(&mut env.cluster, &pki);
    let ca = env.cluster.dir().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let ca = ca.to_str().unwrap();
    let url = env.cluster.url_as("sidecar");
    let require = format!("{url}?sslmode=require");

    // No CA file: the Mozilla roots do not know our CA.
    let blind = env.spawn_sidecar("blind", &[("--database-url", &require)]);
    // `prefer` (no sslmode) takes the TLS the server offers, verified just
    // the same: no quiet fall-back to plaintext.
    let preferring = env.spawn_sidecar("preferring", &[]);
    refused(&blind, "invalid peer certificate: UnknownIssuer");
    refused(&preferring, "invalid peer certificate: UnknownIssuer");
    for sc in [&blind, &preferring] {
        let log = sc.log_text();
        assert!(log.contains("cannot connect to the database"), "{log}");
        assert!(log.contains("give its CA with --db-ca-file"), "{log}");
    }
    drop((blind, preferring));

    // The CA file given: verified TLS, and the job goes through.
    let sc = env.sidecar(
        "verified",
        &[("--database-url", &require), ("--db-ca-file", ca)],
    );
    let mut db = env.db();
    let key = env.key("anthropic", "", 1);
    let id = add_key(&mut db, Uuid::new_v4(), "anthropic", &key);
    wait_settled(&mut db, &[id], Duration::from_secs(30));
    assert_eq!(status(&mut db, id).0, "active");
    assert_eq!(
        tls_of(&env),
        vec![true, true],
        "both of the sidecar's sessions (claims, verdicts) use TLS"
    );
    drop(sc);

    // `disable` still means plaintext, CA file or not.
    let plain = format!("{url}?sslmode=disable");
    let sc = env.sidecar("plain", &[("--database-url", &plain), ("--db-ca-file", ca)]);
    wait_until("the old session is gone", Duration::from_secs(10), || {
        tls_of(&env).len() == 2
    });
    assert_eq!(tls_of(&env), vec![false, false]);
    drop(sc);

    env.mock.assert_no_malformed();
    env.assert_no_key_in_logs();
}

#[test]
fn a_certificate_for_another_host_is_refused_even_with_the_ca() {
    let mut env = setup(&[], MockOptions::default());
    let pki = pki::generate(&["db.example.com"]);
    pki::enable_ssl(&mut env.cluster, &pki);
    let ca = env.cluster.dir().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let require = format!("{}?sslmode=require", env.cluster.url_as("sidecar"));
    let sc = env.spawn_sidecar(
        "misnamed",
        &[
            ("--database-url", &require),
            ("--db-ca-file", ca.to_str().unwrap()),
        ],
    );
    refused(
        &sc,
        "invalid peer certificate: certificate not valid for name",
    );
    assert!(sc
        .log_text()
        .contains("does not name the host of DATABASE_URL"));
}

/// `pg_stat_ssl.ssl` of every session the `sidecar` role holds.
fn tls_of(env: &Env) -> Vec<bool> {
    env.db()
        .query(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.usename = 'sidecar' ORDER BY a.backend_start",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
