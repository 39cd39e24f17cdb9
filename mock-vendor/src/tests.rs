//! The mock, hit over real HTTP: vendor shapes, request checks, faults.
//! (The sidecar's own prober is classified against it in the sidecar's
//! tests, which start it in-process.)

use std::time::Duration;

use serde_json::{json, Value};

use super::stats::Stats;
use super::*;
use byok_core::samples::sample_key_marked;

/// The header value the real Anthropic API requires.
const ANTHROPIC_VERSION: &str = "2023-06-01";

fn anthropic_key(marker: &str) -> String {
    sample_key_marked("anthropic", marker, 1)
}

fn openai_key(marker: &str) -> String {
    sample_key_marked("openai", marker, 1)
}

async fn mock() -> MockHandle {
    start(
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(300),
        Duration::from_secs(30),
    )
    .await
    .unwrap()
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
async fn anthropic_shapes_and_checks() {
    let m = mock().await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/messages", m.anthropic_base());
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]});
    let ok = c
        .post(&url)
        .header("x-api-key", anthropic_key(""))
        .header("anthropic-version", ANTHROPIC_VERSION)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.headers()["request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let v: Value = ok.json().await.unwrap();
    assert_eq!(
        (
            v["type"].as_str(),
            v["stop_reason"].as_str(),
            v["usage"]["output_tokens"].as_u64()
        ),
        (Some("message"), Some("max_tokens"), Some(1))
    );

    let no_version = c
        .post(&url)
        .header("x-api-key", anthropic_key(""))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_version.status(), 400);
    let e: Value = no_version.json().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["error"]["type"].as_str()),
        (Some("error"), Some("invalid_request_error"))
    );
    assert!(e["request_id"].as_str().is_some());

    let send = |b: Value| {
        c.post(&url)
            .header("x-api-key", anthropic_key(""))
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(&b)
            .send()
    };
    for bad in [
        json!({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 1, "messages": []}),
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "robot", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "bogus": 1}),
    ] {
        assert_eq!(send(bad.clone()).await.unwrap().status(), 400, "{bad}");
    }
    let no_key = c
        .get(format!("{}/v1/models", m.anthropic_base()))
        .header("anthropic-version", ANTHROPIC_VERSION)
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let s = stats(&m).await;
    assert_eq!(
        s.malformed.get("anthropic"),
        Some(&8),
        "{:?}",
        s.malformed_reasons
    );
}

#[tokio::test]
async fn openai_shapes_and_checks() {
    let m = mock().await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", m.openai_base());
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]});
    let ok = c
        .post(&url)
        .bearer_auth(openai_key(""))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().contains_key("x-request-id"));
    let v: Value = ok.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    let models = c
        .get(format!("{}/v1/models", m.openai_base()))
        .bearer_auth(openai_key(""))
        .send()
        .await
        .unwrap();
    assert_eq!(models.json::<Value>().await.unwrap()["object"], "list");

    let no_auth = c.post(&url).json(&body).send().await.unwrap();
    assert_eq!(no_auth.status(), 401);
    let missing = c
        .post(&url)
        .bearer_auth(openai_key(""))
        .json(&json!({"model": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let e: Value = missing.json().await.unwrap();
    assert_eq!(
        (e["error"]["type"].as_str(), e["error"]["param"].as_str()),
        (Some("invalid_request_error"), Some("messages"))
    );
    let not_a_key = c
        .post(&url)
        .bearer_auth("hello")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(not_a_key.status(), 401);
    let unknown = c
        .get(format!("{}/v1/nope", m.openai_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(stats(&m).await.malformed.get("openai"), Some(&2));
}

#[tokio::test]
async fn scripted_outage_hits_every_key_then_ends() {
    let m = mock().await;
    let c = reqwest::Client::new();
    let ctl = format!("http://{}/__mock/outage", m.addr);
    let r = c
        .post(&ctl)
        .json(&json!({"vendor": "anthropic", "status": 529, "seconds": 0.6}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let anthropic_models = || {
        c.get(format!("{}/v1/models", m.anthropic_base()))
            .header("x-api-key", anthropic_key(""))
            .header("anthropic-version", ANTHROPIC_VERSION)
            .send()
    };
    assert_eq!(anthropic_models().await.unwrap().status(), 529);
    let other = c
        .get(format!("{}/v1/models", m.openai_base()))
        .bearer_auth(openai_key(""))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "an outage is per vendor");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(anthropic_models().await.unwrap().status(), 200);
    assert_eq!(stats(&m).await.requests["anthropic"]["outage"], 1);
    assert_eq!(
        c.post(&ctl)
            .json(&json!({"vendor": "gemini", "status": 500, "seconds": 1}))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    let reset = c
        .post(format!("http://{}/__mock/reset", m.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(stats(&m).await.total("anthropic"), 0);
}

#[tokio::test]
async fn refuses_to_listen_beyond_loopback() {
    assert!(
        start("0.0.0.0:0".parse().unwrap(), Duration::ZERO, Duration::ZERO)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn scripted_keys_are_refused_later_and_name_their_account() {
    let m = mock().await;
    let c = reqwest::Client::new();
    let (a, o) = (anthropic_key(""), openai_key(""));
    let anthropic = |key: String| {
        c.get(format!("{}/v1/models", m.anthropic_base()))
            .header("x-api-key", key)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .send()
    };
    let header =
        |r: &reqwest::Response, n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    let r = anthropic(a.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "anthropic-organization-id").as_deref(),
        Some("org-mock-default")
    );

    let script = |body: Value| {
        c.post(format!("http://{}/__mock/key", m.addr))
            .json(&body)
            .send()
    };
    let suffix = &a[a.len() - 8..];
    let ok = script(json!({"vendor": "anthropic", "suffix": suffix, "account": "org-b"}));
    assert_eq!(ok.await.unwrap().status(), 200);
    let r = anthropic(a.clone()).await.unwrap();
    assert_eq!(
        header(&r, "anthropic-organization-id").as_deref(),
        Some("org-b")
    );
    script(json!({"vendor": "anthropic", "suffix": suffix, "refuse": true}))
        .await
        .unwrap();
    let r = anthropic(a.clone()).await.unwrap();
    assert_eq!(r.status(), 401, "refused once scripted");
    assert_eq!(
        header(&r, "anthropic-organization-id"),
        None,
        "a 401 names no account"
    );

    let osuffix = &o[o.len() - 8..];
    script(json!({"vendor": "openai", "suffix": osuffix, "account": "org-o/proj_1"}))
        .await
        .unwrap();
    let r = c
        .get(format!("{}/v1/models", m.openai_base()))
        .bearer_auth(&o)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "openai-organization").as_deref(), Some("org-o"));
    assert_eq!(header(&r, "openai-project").as_deref(), Some("proj_1"));

    let bad = script(json!({"vendor": "anthropic", "suffix": "abc"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "suffix too short");
    c.post(format!("http://{}/__mock/reset", m.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(
        anthropic(a).await.unwrap().status(),
        200,
        "reset clears scripts"
    );
}

#[tokio::test]
async fn latency_delays_every_call_and_peak_in_flight_counts_them() {
    let m = mock().await;
    let c = reqwest::Client::new();
    let set = c
        .post(format!("http://{}/__mock/latency", m.addr))
        .json(&json!({"ms": 200}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let url = format!("{}/v1/models", m.openai_base());
    let started = std::time::Instant::now();
    let calls = (0..5).map(|_| c.get(&url).bearer_auth(openai_key("")).send());
    for r in futures_join_all(calls).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    let s = stats(&m).await;
    assert_eq!((s.latency_ms, s.in_flight, s.peak_in_flight), (200, 0, 5));
    let too_long = c
        .post(format!("http://{}/__mock/latency", m.addr))
        .json(&json!({"ms": 600_001}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status(), 400);
}

/// Runs the calls at once (five concurrent requests, without a futures crate).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    calls: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
