//! The OpenAI side of the mock: `GET /v1/models`, `POST /v1/chat/completions`,
//! with OpenAI's headers (`x-request-id`), error shape
//! `{"error":{"message","type","param","code"}}` and checks (Bearer auth,
//! JSON body with `model` and non-empty `messages`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use byok_core::Vendor;
use serde_json::{json, Value};

use crate::rules::{key_shaped, Behaviour};
use crate::state::{gate, json, request_id, with_account, Gate, KillSwitch, MockState};

const V: Vendor = Vendor::OpenAi;
const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

pub(crate) fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    error_body_param(message, kind, None, code)
}

fn error_body_param(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

fn error(status: u16, message: &str, kind: &str, code: Option<&str>, rid: &str) -> Response {
    let mut resp = json(status, "x-request-id", rid, error_body(message, kind, code));
    if status == 429 && code != Some("insufficient_quota") {
        resp.headers_mut()
            .insert("retry-after", "2".parse().unwrap());
    }
    resp
}

/// OpenAI's own masking in its 401 message: `sk-proj-****` + last 4.
fn openai_mask(key: &str) -> String {
    let prefix = ["sk-proj-", "sk-svcacct-", "sk-"]
        .into_iter()
        .find(|p| key.starts_with(p))
        .unwrap_or("");
    let tail = &key[key.len().saturating_sub(4)..];
    format!("{prefix}********{tail}")
}

fn check_auth<'h>(
    state: &MockState,
    headers: &'h HeaderMap,
    rid: &str,
) -> Result<&'h str, Response> {
    let value = headers.get("authorization").and_then(|v| v.to_str().ok());
    match value.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(k) if !k.trim().is_empty() => Ok(k.trim()),
        _ => {
            state.malformed(V, "no Authorization: Bearer header");
            Err(error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
                rid,
            ))
        }
    }
}

/// Validates a chat completion body; `Err` is (message, param, code).
fn check_body(headers: &HeaderMap, body: &[u8]) -> Result<(), (String, Option<&'static str>)> {
    if !headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
    {
        return Err((
            "Invalid content type. Expected application/json.".into(),
            None,
        ));
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        (
            "We could not parse the JSON body of your request.".to_owned(),
            None,
        )
    })?;
    let obj = v
        .as_object()
        .ok_or(("The request body must be a JSON object.".to_owned(), None))?;
    if obj
        .get("model")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(("you must provide a model parameter".into(), Some("model")));
    }
    let messages = match obj.get("messages") {
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err((
                "Invalid type for 'messages': expected an array.".into(),
                Some("messages"),
            ))
        }
        None => {
            return Err((
                "Missing required parameter: 'messages'.".into(),
                Some("messages"),
            ))
        }
    };
    if messages.is_empty() {
        return Err((
            "Invalid 'messages': empty array. Expected an array with minimum length 1.".into(),
            Some("messages"),
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        if !m
            .get("role")
            .and_then(Value::as_str)
            .is_some_and(|r| ROLES.contains(&r))
        {
            return Err((
                format!("Invalid value for 'messages[{i}].role'."),
                Some("messages"),
            ));
        }
        if m.get("content").is_none() {
            return Err((
                format!("Missing required parameter: 'messages[{i}].content'."),
                Some("messages"),
            ));
        }
    }
    for field in ["max_tokens", "max_completion_tokens"] {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {}
            Some(_) => {
                return Err((
                    format!("Invalid '{field}': expected an integer of at least 1."),
                    Some("max_tokens"),
                ))
            }
        }
    }
    Ok(())
}

fn judged(
    key: &str,
    b: Behaviour,
    completion: bool,
    rid: &str,
    ok: impl FnOnce() -> Value,
) -> Response {
    match b {
        Behaviour::Unauthorized => error(
            401,
            &format!("Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.", openai_mask(key)),
            "invalid_request_error",
            Some("invalid_api_key"),
            rid,
        ),
        Behaviour::EchoKey => error(401, &format!("Incorrect API key provided: {key}."), "invalid_request_error", Some("invalid_api_key"), rid),
        Behaviour::Forbidden => error(403, "Country, region, or territory not supported", "request_forbidden", Some("unsupported_country_region_territory"), rid),
        Behaviour::NoCredit if completion => error(
            429,
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            Some("insufficient_quota"),
            rid,
        ),
        Behaviour::RateLimited => error(
            429,
            "Rate limit reached for gpt-4o-mini in organization org-mock on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 2s.",
            "requests",
            Some("rate_limit_exceeded"),
            rid,
        ),
        Behaviour::ServerError => error(500, "The server had an error while processing your request. Sorry about that!", "server_error", None, rid),
        Behaviour::Unavailable | Behaviour::Overloaded => {
            error(503, "The engine is currently overloaded, please try again later.", "server_error", None, rid)
        }
        _ => json(200, "x-request-id", rid, ok()),
    }
}

fn outage(status: u16, rid: &str) -> Response {
    error(
        status,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
        rid,
    )
}

pub(crate) async fn models(
    State(state): State<MockState>,
    Extension(kill): Extension<KillSwitch>,
    headers: HeaderMap,
) -> Response {
    let rid = request_id("req_");
    let key = match check_auth(&state, &headers, &rid) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if !key_shaped(V, key) {
        return judged(key, Behaviour::Unauthorized, false, &rid, || Value::Null);
    }
    let (b, account) = state.judge(V, key);
    let resp = match gate(&state, &kill, V, b).await {
        Gate::Outage(s) => outage(s, &rid),
        Gate::Go(b) => judged(
            key,
            b,
            false,
            &rid,
            || json!({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"}]}),
        ),
    };
    with_account(V, resp, &account)
}

pub(crate) async fn chat(
    State(state): State<MockState>,
    Extension(kill): Extension<KillSwitch>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rid = request_id("req_");
    let key = match check_auth(&state, &headers, &rid) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if let Err((message, param)) = check_body(&headers, &body) {
        state.malformed(V, &message);
        return json(
            400,
            "x-request-id",
            &rid,
            error_body_param(&message, "invalid_request_error", param, None),
        );
    }
    if !key_shaped(V, key) {
        return judged(key, Behaviour::Unauthorized, true, &rid, || Value::Null);
    }
    let model = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["model"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let (b, account) = state.judge(V, key);
    let resp = match gate(&state, &kill, V, b).await {
        Gate::Outage(s) => outage(s, &rid),
        Gate::Go(b) => judged(key, b, true, &rid, || {
            let created = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            json!({"id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()), "object": "chat.completion",
                   "created": created, "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "P", "refusal": null},
                                "logprobs": null, "finish_reason": "length"}],
                   "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}})
        }),
    };
    with_account(V, resp, &account)
}
