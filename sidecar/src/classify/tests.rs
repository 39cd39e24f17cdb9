//! One test per row of the classification table, plus the edges.

use byok_core::samples::sample_key;

use super::*;

const A: Vendor = Vendor::Anthropic;
const O: Vendor = Vendor::OpenAi;

fn anthropic_error(kind: &str, message: &str) -> String {
    format!(
        r#"{{"type":"error","error":{{"type":"{kind}","message":"{message}"}},"request_id":"req_011"}}"#
    )
}

fn openai_error(kind: &str, code: &str, message: &str) -> String {
    format!(r#"{{"error":{{"message":"{message}","type":"{kind}","param":null,"code":"{code}"}}}}"#)
}

#[test]
fn row_2xx_is_valid() {
    for (v, status) in [(A, 200), (O, 200), (A, 204)] {
        let got = classify_response(v, status, &[], r#"{"data":[]}"#);
        assert_eq!(got.outcome, Outcome::Valid);
        assert!(!got.warning && !got.vendor_fault);
    }
}

#[test]
fn row_401_is_invalid_with_actionable_detail() {
    let a = classify_response(
        A,
        401,
        &[("request-id", "req_x")],
        &anthropic_error("authentication_error", "invalid x-api-key"),
    );
    assert_eq!(a.outcome, Outcome::Invalid);
    assert!(
        a.detail.contains("401") && a.detail.contains("rotated or revoked"),
        "{}",
        a.detail
    );
    assert!(a.detail.contains("generate a fresh one"));
    assert!(a.detail.contains("req_x"));
    let o = classify_response(
        O,
        401,
        &[],
        &openai_error(
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided",
        ),
    );
    assert_eq!(o.outcome, Outcome::Invalid);
    assert!(o.detail.contains("invalid_api_key"), "{}", o.detail);
}

#[test]
fn openai_401_variants_say_why() {
    let scopes = classify_response(
        O,
        401,
        &[],
        &openai_error(
            "invalid_request_error",
            "",
            "You have insufficient permissions for this operation. Missing scopes: model.request.",
        ),
    );
    assert_eq!(scopes.outcome, Outcome::Invalid);
    assert!(
        scopes.detail.contains("restricted key"),
        "{}",
        scopes.detail
    );
    let org = classify_response(
        O,
        401,
        &[],
        &openai_error(
            "invalid_request_error",
            "no_organization",
            "You must be a member of an organization to use the API.",
        ),
    );
    assert!(org.detail.contains("organization"), "{}", org.detail);
}

#[test]
fn row_403_is_invalid_and_says_why() {
    let a = classify_response(
        A,
        403,
        &[],
        &anthropic_error(
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
    );
    assert_eq!(a.outcome, Outcome::Invalid);
    assert!(
        a.detail.contains("permission_error") && a.detail.contains("not allowed"),
        "{}",
        a.detail
    );
    let o = classify_response(
        O,
        403,
        &[],
        &openai_error(
            "request_forbidden",
            "unsupported_country_region_territory",
            "Country, region, or territory not supported",
        ),
    );
    assert_eq!(o.outcome, Outcome::Invalid);
    assert!(
        o.detail.contains("country, region or territory"),
        "{}",
        o.detail
    );
}

#[test]
fn row_anthropic_low_credit_is_valid_with_warning() {
    let body = anthropic_error("invalid_request_error", "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.");
    let got = classify_response(A, 400, &[], &body);
    assert_eq!(got.outcome, Outcome::Valid);
    assert!(got.warning && !got.vendor_fault);
    assert!(
        got.detail.starts_with("Warning") && got.detail.contains("credit"),
        "{}",
        got.detail
    );
}

#[test]
fn row_openai_insufficient_quota_is_valid_with_warning() {
    let body = openai_error(
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    );
    let got = classify_response(O, 429, &[("retry-after", "20")], &body);
    assert_eq!(got.outcome, Outcome::Valid);
    assert!(got.warning);
    assert_eq!(got.retry_after_seconds, None);
    assert!(got.detail.contains("quota"));
}

#[test]
fn row_429_rate_limit_retries_after_retry_after() {
    let a = classify_response(
        A,
        429,
        &[("Retry-After", "7")],
        &anthropic_error(
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        ),
    );
    assert_eq!(
        (a.outcome, a.retry_after_seconds, a.vendor_fault),
        (Outcome::Retry, Some(7), false)
    );
    let o = classify_response(
        O,
        429,
        &[("retry-after", "1.2")],
        &openai_error(
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached for requests",
        ),
    );
    assert_eq!(
        (o.outcome, o.retry_after_seconds),
        (Outcome::Retry, Some(2))
    );
    let ms = classify_response(
        O,
        429,
        &[("retry-after-ms", "2500"), ("retry-after", "9")],
        "",
    );
    assert_eq!(ms.retry_after_seconds, Some(3));
    let none = classify_response(
        O,
        429,
        &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")],
        "",
    );
    assert_eq!(
        (none.outcome, none.retry_after_seconds),
        (Outcome::Retry, None)
    );
    let huge = classify_response(A, 429, &[("retry-after", "99999999")], "");
    assert_eq!(huge.retry_after_seconds, Some(3600));
}

#[test]
fn anthropic_429_insufficient_quota_shape_is_still_a_rate_limit() {
    // The quota rule is OpenAI's; Anthropic signals low credit with a 400.
    let got = classify_response(
        A,
        429,
        &[],
        &openai_error("insufficient_quota", "insufficient_quota", "x"),
    );
    assert_eq!(got.outcome, Outcome::Retry);
}

#[test]
fn row_5xx_and_529_retry_as_vendor_fault() {
    for (v, status, body) in [
        (
            A,
            500,
            anthropic_error("api_error", "Internal server error"),
        ),
        (
            A,
            504,
            anthropic_error("timeout_error", "Request timed out"),
        ),
        (A, 529, anthropic_error("overloaded_error", "Overloaded")),
        (
            O,
            500,
            openai_error("server_error", "", "The server had an error"),
        ),
        (O, 503, "<html>Service Unavailable</html>".to_owned()),
        (O, 502, String::new()),
        (O, 408, String::new()),
    ] {
        let got = classify_response(v, status, &[("retry-after", "4")], &body);
        assert_eq!(got.outcome, Outcome::Retry, "{status}");
        assert!(got.vendor_fault && !got.warning, "{status}");
        assert_eq!(got.retry_after_seconds, Some(4));
        assert!(got.detail.contains(&status.to_string()), "{}", got.detail);
    }
}

#[test]
fn row_transport_failures_retry_as_vendor_fault() {
    for e in [
        TransportError::Timeout,
        TransportError::Connect,
        TransportError::Tls,
        TransportError::Reset,
        TransportError::Other,
    ] {
        for v in [A, O] {
            let got = classify_transport(v, e);
            assert_eq!(got.outcome, Outcome::Retry);
            assert!(got.vendor_fault);
            assert!(got.detail.contains(v.display_name()), "{}", got.detail);
        }
    }
    assert!(classify_transport(A, TransportError::Timeout)
        .detail
        .contains("timeout"));
    assert!(classify_transport(O, TransportError::Tls)
        .detail
        .contains("TLS"));
}

#[test]
fn probe_refused_is_retried_without_judging_the_key() {
    for (v, status) in [
        (A, 400),
        (A, 404),
        (O, 404),
        (O, 422),
        (O, 400),
        (A, 413),
        (A, 302),
    ] {
        let got = classify_response(
            v,
            status,
            &[],
            &anthropic_error("not_found_error", "model: claude-nope"),
        );
        assert_eq!(got.outcome, Outcome::Retry, "{status}");
        assert!(!got.vendor_fault && !got.warning);
        assert!(got.detail.contains("probe settings"), "{}", got.detail);
    }
}

#[test]
fn echoed_keys_never_reach_the_detail() {
    let key = sample_key("openai", 3);
    let body = openai_error(
        "invalid_request_error",
        "invalid_api_key",
        &format!("Incorrect API key provided: {key}."),
    );
    let got = classify_response(O, 401, &[], &body);
    assert_no_key_in(&got.detail, &key, "echoed in the message");
    assert!(
        got.detail.contains(&format!("…{}", &key[key.len() - 4..])),
        "{}",
        got.detail
    );
    let plain = classify_response(A, 500, &[], &format!("upstream said {key}"));
    assert_no_key_in(&plain.detail, &key, "plain-text body");
    assert!(!plain.detail.contains("upstream said"), "{}", plain.detail);
}

#[test]
fn long_messages_are_bounded() {
    let body = anthropic_error("api_error", &"x".repeat(5000));
    let got = classify_response(A, 500, &[], &body);
    assert!(got.detail.chars().count() < 600, "{}", got.detail.len());
    let junk = classify_response(A, 500, &[], &"y".repeat(5000));
    assert!(junk.detail.chars().count() < 600);
    assert!(!junk.detail.contains("yyy"), "{}", junk.detail);
}

#[test]
fn prism_style_problem_json_still_classifies_by_status() {
    let body = r#"{"type":"https://stoplight.io/prism/errors#UNAUTHORIZED","title":"Invalid security scheme used","status":401,"detail":""}"#;
    assert_eq!(
        classify_response(O, 401, &[], body).outcome,
        Outcome::Invalid
    );
    let p429 = r#"{"error":{"code":"string","message":"string","param":"string","type":"string"}}"#;
    assert_eq!(
        classify_response(O, 429, &[("Retry-After", "1")], p429).outcome,
        Outcome::Retry
    );
}

#[test]
fn outcome_strings_match_finish_job() {
    assert_eq!(Outcome::Valid.as_str(), "valid");
    assert_eq!(Outcome::Invalid.as_str(), "invalid");
    assert_eq!(Outcome::Retry.as_str(), "retry");
}

/// `key` as a JSON string body with every 19th character written as a
/// `\u00XX` escape: the raw text holds the key only in runs of 18.
fn escaped_every_19(key: &str) -> String {
    key.chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 19 == 18 {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The leak test every detail passes: no 12-character run of the key, and
/// nothing key-shaped at all.
fn assert_no_key_in(detail: &str, key: &str, what: &str) {
    assert!(
        !byok_core::redact::contains_key_shaped(detail),
        "{what}: key-shaped text in the detail: {detail}"
    );
    for run in key.as_bytes().windows(12) {
        let run = std::str::from_utf8(run).unwrap();
        assert!(
            !detail.contains(run),
            "{what}: the key's run {run:?} reached the detail: {detail}"
        );
    }
}

#[test]
fn hostile_bodies_never_put_the_key_in_the_detail() {
    let key = sample_key("anthropic", 12);
    let esc = escaped_every_19(&key);
    assert!(!esc.contains(&key[..40]), "the escape must split the key");
    let message = |k: &str| {
        format!(
            r#"{{"type":"error","error":{{"type":"authentication_error","message":"invalid x-api-key {k}"}}}}"#
        )
    };
    let nest = |depth: usize, inner: &str| {
        format!(
            r#"{{"error":{{"type":"authentication_error","message":"bad key {inner}"}},"x":{}1{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("escaped key in a parsed message", message(&esc)),
        ("escaped key, 40 levels deep", nest(40, &esc)),
        ("escaped key, nested past any parser limit", nest(300, &esc)),
        (
            "escaped key, trailing junk",
            format!("{} trailing {esc}", message(&esc)),
        ),
        (
            "escaped key, truncated JSON",
            message(&esc)[..message(&esc).len() - 3].to_owned(),
        ),
        (
            "escaped key as plain text",
            format!("invalid x-api-key {esc}"),
        ),
        (
            "plain key as plain text",
            format!("invalid x-api-key {key}"),
        ),
        ("plain key in a parsed message", message(&key)),
        (
            "key as the error type, code and request id",
            format!(
                r#"{{"error":{{"type":"{key}","code":"{esc}","message":"m"}},"request_id":"{key}"}}"#
            ),
        ),
    ];
    for (what, body) in &cases {
        assert!(body.len() <= 2000, "{what}");
        for (vendor, status) in [(A, 401), (O, 401), (A, 403), (A, 500), (O, 429), (A, 404)] {
            let got = classify_response(vendor, status, &[("request-id", &esc)], body);
            assert_no_key_in(&got.detail, &key, what);
            assert!(
                got.detail.contains(&format!("HTTP {status}")),
                "{what}: {}",
                got.detail
            );
        }
    }
}

#[test]
fn unparsed_bodies_are_never_quoted() {
    for body in [
        "<html><body>Service Unavailable, try later</body></html>".to_owned(),
        r#"{"error":{"message":"nested too deep"}} junk"#.to_owned(),
        format!(
            r#"{{"error":{{"message":"deep"}},"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ),
        r#"{"error":{"message":"unterminated"#.to_owned(),
    ] {
        let got = classify_response(A, 401, &[], &body);
        assert_eq!(got.outcome, Outcome::Invalid);
        for word in ["Service", "nested", "deep", "unterminated", "junk"] {
            assert!(!got.detail.contains(word), "{body}: {}", got.detail);
        }
        assert!(
            got.detail.contains("(HTTP 401 Unauthorized)"),
            "a fixed description of the status: {}",
            got.detail
        );
    }
}

#[test]
fn the_parsed_message_is_quoted_redacted() {
    let key = sample_key("anthropic", 12);
    let got = classify_response(
        A,
        401,
        &[],
        &anthropic_error(
            "authentication_error",
            &format!("invalid x-api-key {}", escaped_every_19(&key)),
        ),
    );
    assert!(
        got.detail.contains("\"invalid x-api-key …"),
        "{}",
        got.detail
    );
    assert!(
        got.detail.contains(&key[key.len() - 4..]),
        "the mask's last 4: {}",
        got.detail
    );
    assert_no_key_in(&got.detail, &key, "parsed message");
}
