//! Every row of the classification table, end to end: add_key → sidecar →
//! the mock vendor's answer → key status and detail.

mod common;

use std::time::Duration;

use byok_integration::wait_until;
use common::*;
use uuid::Uuid;

struct Case {
    vendor: &'static str,
    marker: &'static str,
    /// Final status.
    status: &'static str,
    /// Text the final status_detail must contain.
    detail: &'static str,
    /// Transient rows: text the job's last_error holds after attempt 1,
    /// while the key is still pending.
    first_error: Option<&'static str>,
}

const fn case(
    vendor: &'static str,
    marker: &'static str,
    status: &'static str,
    detail: &'static str,
    first_error: Option<&'static str>,
) -> Case {
    Case {
        vendor,
        marker,
        status,
        detail,
        first_error,
    }
}

const CASES: [Case; 20] = [
    case(
        "anthropic",
        "",
        "active",
        "accepted the key (HTTP 200)",
        None,
    ),
    case("openai", "", "active", "accepted the key (HTTP 200)", None),
    case(
        "anthropic",
        "mock401",
        "invalid",
        "rotated or revoked",
        None,
    ),
    case("openai", "mock401", "invalid", "rotated or revoked", None),
    case("anthropic", "mockecho", "invalid", "HTTP 401", None),
    case("openai", "mockecho", "invalid", "invalid_api_key", None),
    case("anthropic", "mock403", "invalid", "permission_error", None),
    case(
        "openai",
        "mock403",
        "invalid",
        "country, region or territory",
        None,
    ),
    case(
        "anthropic",
        "mockcredit",
        "active",
        "credit balance is too low",
        None,
    ),
    case("openai", "mockquota", "active", "no quota left", None),
    case(
        "anthropic",
        "mock429",
        "unverified",
        "after 2 attempts",
        Some("rate-limited"),
    ),
    case(
        "openai",
        "mock429",
        "unverified",
        "after 2 attempts",
        Some("rate-limited"),
    ),
    case(
        "anthropic",
        "mock500",
        "unverified",
        "HTTP 500",
        Some("HTTP 500"),
    ),
    case(
        "openai",
        "mock503",
        "unverified",
        "HTTP 503",
        Some("HTTP 503"),
    ),
    case(
        "anthropic",
        "mock529",
        "unverified",
        "HTTP 529 overloaded_error",
        Some("HTTP 529"),
    ),
    case(
        "openai",
        "mock500",
        "unverified",
        "HTTP 500",
        Some("HTTP 500"),
    ),
    case(
        "anthropic",
        "mockhang",
        "unverified",
        "timeout",
        Some("did not answer within the request timeout"),
    ),
    case("openai", "mockreset", "unverified", "reset", Some("reset")),
    case(
        "anthropic",
        "mockreset",
        "unverified",
        "reset",
        Some("reset"),
    ),
    case("openai", "mockslow", "active", "accepted", None),
];

#[test]
fn every_classification_row_end_to_end() {
    let mut env = setup(
        &["byok.max_attempts = 2"],
        MockOptions {
            slow: Duration::from_millis(300),
            hang: Duration::from_secs(60),
        },
    );
    let mut db = env.db();
    let mut ids = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        let key = env.key(c.vendor, c.marker, i as u64);
        ids.push(add_key(&mut db, Uuid::new_v4(), c.vendor, &key));
    }
    // Connection refused and TLS failures need other base URLs (below).
    let refused_key = env.key("openai", "", 100);
    let tls_key = env.key("anthropic", "", 101);

    // Breaker disabled here (it has its own test): every row is seen raw.
    let sc = env.sidecar(
        "classify",
        &[
            ("--request-timeout", "2"),
            ("--breaker-workspaces", "1000"),
            ("--concurrency", "16"),
        ],
    );
    for (id, c) in ids.iter().zip(&CASES) {
        if let Some(expected) = c.first_error {
            wait_until(
                &format!("{} {} first attempt recorded", c.vendor, c.marker),
                Duration::from_secs(30),
                || {
                    let r = db
                    .query_opt("SELECT last_error FROM byok.jobs WHERE key_id = $1 AND lease_token IS NULL AND last_error IS NOT NULL", &[id])
                    .unwrap();
                    r.is_some_and(|r| {
                        let e: String = r.get(0);
                        assert!(
                            e.contains(expected),
                            "{} {}: last_error {e:?} lacks {expected:?}",
                            c.vendor,
                            c.marker
                        );
                        true
                    })
                },
            );
            let (s, _) = status(&mut db, *id);
            assert!(
                s == "pending" || s == "unverified",
                "{} {}: {s} after a transient failure",
                c.vendor,
                c.marker
            );
        }
    }
    wait_settled(&mut db, &ids, Duration::from_secs(90));
    for (id, c) in ids.iter().zip(&CASES) {
        let (s, detail) = status(&mut db, *id);
        let detail = detail.unwrap_or_default();
        assert_eq!(s, c.status, "{} {:?}: {detail}", c.vendor, c.marker);
        assert!(
            detail.contains(c.detail),
            "{} {:?}: detail {detail:?} lacks {:?}",
            c.vendor,
            c.marker,
            c.detail
        );
        assert_eq!(
            verdicts(&mut db, *id),
            1,
            "{} {:?} finished more than once",
            c.vendor,
            c.marker
        );
        if c.marker == "mockcredit" || c.marker == "mockquota" {
            assert!(detail.starts_with("Warning"), "{detail}");
        }
    }
    assert!(sc.metric("byok_sidecar_jobs_total{vendor=\"anthropic\",outcome=\"invalid\"}") >= 3.0);
    drop(sc);

    // Rows without an HTTP answer from a reachable server.
    let refused = add_key(&mut db, Uuid::new_v4(), "openai", &refused_key);
    let tls = add_key(&mut db, Uuid::new_v4(), "anthropic", &tls_key);
    let closed_port = free_port();
    let _sc = env.sidecar(
        "classify-net",
        &[
            (
                "--openai-base-url",
                &format!("http://127.0.0.1:{closed_port}"),
            ),
            (
                "--anthropic-base-url",
                &format!("https://{}", env.mock.addr),
            ),
            ("--breaker-workspaces", "1000"),
        ],
    );
    wait_settled(&mut db, &[refused, tls], Duration::from_secs(60));
    for (id, what) in [(refused, "could not connect"), (tls, "TLS")] {
        let (s, detail) = status(&mut db, id);
        assert_eq!(s, "unverified", "{what}: {detail:?}");
        assert!(detail.unwrap_or_default().contains(what));
    }
    env.mock.assert_no_malformed();
    env.assert_no_key_in_logs();
}
