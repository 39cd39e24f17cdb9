//! The prober against the mock vendor (started in-process, a real HTTP
//! server on loopback): every behaviour classified as the table says, the
//! requests well formed, and transport failures sorted into the right kind.

use std::time::Duration;

use byok_core::samples::sample_key_marked;
use byok_core::Vendor;
use byok_mock_vendor::stats::Stats;
use byok_mock_vendor::MockHandle;
use zeroize::Zeroizing;

use crate::classify::{classify_transport, Outcome, TransportError};
use crate::config::{Probe, Target};
use crate::probe::Prober;

fn anthropic_key(marker: &str) -> String {
    sample_key_marked("anthropic", marker, 1)
}

fn openai_key(marker: &str) -> String {
    sample_key_marked("openai", marker, 1)
}

async fn mock() -> MockHandle {
    byok_mock_vendor::start(
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(300),
        Duration::from_secs(30),
    )
    .await
    .unwrap()
}

fn prober_at(anthropic: &str, openai: &str, probe: Probe, timeout: Duration) -> Prober {
    Prober::new(
        Target::new(anthropic, probe, "claude-haiku-4-5"),
        Target::new(openai, probe, "gpt-4o-mini"),
        timeout,
    )
    .unwrap()
}

fn prober(m: &MockHandle, probe: Probe, timeout: Duration) -> Prober {
    prober_at(&m.anthropic_base(), &m.openai_base(), probe, timeout)
}

async fn stats(m: &MockHandle) -> Stats {
    reqwest::get(format!("http://{}/__mock/stats", m.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn prober_classifies_every_mock_behaviour() {
    let m = mock().await;
    for probe in [Probe::Completion, Probe::Models] {
        let p = prober(&m, probe, Duration::from_secs(2));
        let completion = probe == Probe::Completion;
        let cases: [(&str, Outcome, bool, bool, Option<u16>); 11] = [
            // marker, outcome, warning, vendor_fault, status
            ("", Outcome::Valid, false, false, Some(200)),
            ("mock401", Outcome::Invalid, false, false, Some(401)),
            ("mockecho", Outcome::Invalid, false, false, Some(401)),
            ("mock403", Outcome::Invalid, false, false, Some(403)),
            (
                "mockcredit",
                Outcome::Valid,
                completion,
                false,
                Some(if completion { 0 } else { 200 }),
            ),
            ("mock429", Outcome::Retry, false, false, Some(429)),
            ("mock500", Outcome::Retry, false, true, Some(500)),
            ("mock503", Outcome::Retry, false, true, Some(503)),
            ("mock529", Outcome::Retry, false, true, Some(0)),
            ("mockslow", Outcome::Valid, false, false, Some(200)),
            ("mockreset", Outcome::Retry, false, true, None),
        ];
        for vendor in Vendor::ALL {
            for (marker, outcome, warning, fault, status) in cases {
                let key = if vendor == Vendor::Anthropic {
                    anthropic_key(marker)
                } else {
                    openai_key(marker)
                };
                let r = p.probe(vendor, Zeroizing::new(key.clone())).await;
                let v = &r.verdict;
                let ctx = format!("{probe:?} {vendor} {marker}: {v:?} {:?}", r.http_status);
                assert_eq!(
                    (v.outcome, v.warning, v.vendor_fault),
                    (outcome, warning, fault),
                    "{ctx}"
                );
                match (status, r.http_status) {
                    (Some(0), Some(_)) | (None, None) => {}
                    (s, got) => assert_eq!(s, got, "{ctx}"),
                }
                assert!(
                    !v.detail.contains(&key[20..60]),
                    "key leaked into detail: {ctx}"
                );
                if marker == "mock429" {
                    assert_eq!(v.retry_after_seconds, Some(2), "{ctx}");
                }
            }
        }
    }
    let s = stats(&m).await;
    assert!(
        s.malformed.is_empty(),
        "the prober sent malformed requests: {:?}",
        s.malformed_reasons
    );
}

#[tokio::test]
async fn hangs_time_out_and_refused_ports_are_connect_errors() {
    let m = mock().await;
    let p = prober(&m, Probe::Completion, Duration::from_millis(500));
    let r = p
        .probe(Vendor::Anthropic, Zeroizing::new(anthropic_key("mockhang")))
        .await;
    assert_eq!(r.verdict.outcome, Outcome::Retry);
    assert!(r.verdict.vendor_fault);
    assert_eq!(
        r.verdict,
        classify_transport(Vendor::Anthropic, TransportError::Timeout)
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = format!("http://127.0.0.1:{port}");
    let r = prober_at(
        &m.anthropic_base(),
        &refused,
        Probe::Completion,
        Duration::from_secs(2),
    )
    .probe(Vendor::OpenAi, Zeroizing::new(openai_key("")))
    .await;
    assert_eq!(
        r.verdict,
        classify_transport(Vendor::OpenAi, TransportError::Connect)
    );
    // TLS spoken to a plain-HTTP server fails the handshake.
    let tls = format!("https://{}", m.addr);
    let r = prober_at(
        &tls,
        &m.openai_base(),
        Probe::Completion,
        Duration::from_secs(2),
    )
    .probe(Vendor::Anthropic, Zeroizing::new(anthropic_key("")))
    .await;
    assert_eq!(
        r.verdict,
        classify_transport(Vendor::Anthropic, TransportError::Tls)
    );
}
