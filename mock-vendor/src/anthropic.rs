//! The Anthropic side of the mock: `GET /v1/models`, `POST /v1/messages`,
//! with Anthropic's headers (`request-id`), error shape
//! `{"type":"error","error":{"type","message"},"request_id"}` and checks
//! (`anthropic-version` and `x-api-key` required, JSON body fields).

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use byok_core::Vendor;
use serde_json::{json, Value};

use crate::rules::{key_shaped, Behaviour};
use crate::state::{gate, json, request_id, with_account, Gate, KillSwitch, MockState};

const V: Vendor = Vendor::Anthropic;
const VERSIONS: [&str; 2] = ["2023-06-01", "2023-01-01"];
const FIELDS: [&str; 16] = [
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_k",
    "top_p",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
];

pub(crate) fn error_body(kind: &str, message: &str, request_id: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})
}

fn error(status: u16, kind: &str, message: &str, rid: &str) -> Response {
    let mut resp = json(status, "request-id", rid, error_body(kind, message, rid));
    if status == 429 {
        resp.headers_mut()
            .insert("retry-after", "2".parse().unwrap());
    }
    resp
}

/// Header checks shared by both routes; `Err` is the refusal to send.
fn check_headers<'h>(
    state: &MockState,
    headers: &'h HeaderMap,
    rid: &str,
    post: bool,
) -> Result<&'h str, Response> {
    let refuse = |reason: &str, status, kind, message: &str| {
        state.malformed(V, reason);
        Err(error(status, kind, message, rid))
    };
    match headers
        .get("anthropic-version")
        .and_then(|v| v.to_str().ok())
    {
        None => {
            return refuse(
                "no anthropic-version header",
                400,
                "invalid_request_error",
                "anthropic-version: header is required",
            )
        }
        Some(v) if !VERSIONS.contains(&v) => {
            return refuse(
                "unknown anthropic-version",
                400,
                "invalid_request_error",
                "anthropic-version: invalid version",
            )
        }
        _ => {}
    }
    if post
        && !headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    {
        return refuse(
            "content-type is not application/json",
            400,
            "invalid_request_error",
            "Request body must be JSON (content-type: application/json)",
        );
    }
    if headers.contains_key("authorization") && !headers.contains_key("x-api-key") {
        return refuse(
            "Authorization header instead of x-api-key",
            401,
            "authentication_error",
            "x-api-key header is required",
        );
    }
    match headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        Some(k) if !k.is_empty() => Ok(k),
        _ => refuse(
            "no x-api-key header",
            401,
            "authentication_error",
            "x-api-key header is required",
        ),
    }
}

/// Validates a Messages API body; `Err` is the field error message.
fn check_body(body: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let obj = v.as_object().ok_or("request body must be a JSON object")?;
    if let Some(extra) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!("{extra}: Extra inputs are not permitted"));
    }
    match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => {}
        Some(_) => return Err("model: Input should be a valid string".into()),
        None => return Err("model: Field required".into()),
    }
    match obj.get("max_tokens") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {}
        Some(_) => {
            return Err("max_tokens: Input should be an integer greater than or equal to 1".into())
        }
        None => return Err("max_tokens: Field required".into()),
    }
    let messages = obj
        .get("messages")
        .ok_or("messages: Field required")?
        .as_array()
        .ok_or("messages: Input should be a valid list")?;
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    for (i, m) in messages.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            _ => {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                ))
            }
        }
        match m.get("content") {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::Array(a)) if !a.is_empty() => {}
            _ => {
                return Err(format!(
                    "messages.{i}.content: Field required (non-empty string or list of blocks)"
                ))
            }
        }
    }
    if messages[0]["role"] != "user" {
        return Err("messages: first message must use the \"user\" role".into());
    }
    Ok(())
}

/// The answer for a key whose behaviour is not handled by the shared gate.
fn judged(
    key: &str,
    b: Behaviour,
    completion: bool,
    rid: &str,
    ok: impl FnOnce() -> Value,
) -> Response {
    match b {
        Behaviour::Unauthorized => error(401, "authentication_error", "invalid x-api-key", rid),
        Behaviour::EchoKey => error(401, "authentication_error", &format!("invalid x-api-key: {key}"), rid),
        Behaviour::Forbidden => error(403, "permission_error", "Your API key does not have permission to use the specified resource.", rid),
        Behaviour::NoCredit if completion => error(
            400,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
            rid,
        ),
        Behaviour::RateLimited => error(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit. Please try again later.", rid),
        Behaviour::ServerError => error(500, "api_error", "Internal server error", rid),
        Behaviour::Unavailable => error(503, "api_error", "Service unavailable", rid),
        Behaviour::Overloaded => error(529, "overloaded_error", "Overloaded", rid),
        _ => json(200, "request-id", rid, ok()),
    }
}

fn outage(status: u16, rid: &str) -> Response {
    match status {
        529 => error(529, "overloaded_error", "Overloaded", rid),
        504 => error(504, "timeout_error", "Request timed out", rid),
        429 => error(429, "rate_limit_error", "Rate limited", rid),
        s => error(s, "api_error", "Internal server error", rid),
    }
}

pub(crate) async fn models(
    State(state): State<MockState>,
    Extension(kill): Extension<KillSwitch>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let rid = request_id("req_");
    let key = match check_headers(&state, &headers, &rid, false) {
        Ok(k) => k,
        Err(r) => return r,
    };
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "limit" && !value.parse::<u32>().is_ok_and(|n| (1..=1000).contains(&n)) {
            state.malformed(V, "limit out of range");
            return error(
                400,
                "invalid_request_error",
                "limit: Input should be between 1 and 1000",
                &rid,
            );
        }
    }
    if !key_shaped(V, key) {
        return error(401, "authentication_error", "invalid x-api-key", &rid);
    }
    let (b, account) = state.judge(V, key);
    let resp = match gate(&state, &kill, V, b).await {
        Gate::Outage(s) => outage(s, &rid),
        Gate::Go(b) => judged(key, b, false, &rid, || {
            json!({"data": [{"type": "model", "id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5",
                             "created_at": "2025-10-15T00:00:00Z"}],
                   "has_more": true, "first_id": "claude-haiku-4-5-20251001", "last_id": "claude-haiku-4-5-20251001"})
        }),
    };
    with_account(V, resp, &account)
}

pub(crate) async fn messages(
    State(state): State<MockState>,
    Extension(kill): Extension<KillSwitch>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rid = request_id("req_");
    let key = match check_headers(&state, &headers, &rid, true) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if let Err(message) = check_body(&body) {
        state.malformed(V, &message);
        return error(400, "invalid_request_error", &message, &rid);
    }
    if !key_shaped(V, key) {
        return error(401, "authentication_error", "invalid x-api-key", &rid);
    }
    let model = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["model"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let (b, account) = state.judge(V, key);
    let resp = match gate(&state, &kill, V, b).await {
        Gate::Outage(s) => outage(s, &rid),
        Gate::Go(b) => judged(key, b, true, &rid, || {
            json!({"id": format!("msg_{}", uuid::Uuid::new_v4().simple()), "type": "message", "role": "assistant",
                   "model": model, "content": [{"type": "text", "text": "P"}], "stop_reason": "max_tokens",
                   "stop_sequence": null, "usage": {"input_tokens": 8, "output_tokens": 1}})
        }),
    };
    with_account(V, resp, &account)
}
