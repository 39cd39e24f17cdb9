//! The mock's own endpoints: scripted outages and request statistics.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use byok_core::Vendor;
use serde::Deserialize;

use crate::state::{json, request_id, KeyScript, MockState};
use crate::stats::Stats;
use crate::{anthropic, openai};

/// Body of `POST /__mock/outage`.
#[derive(Debug, Deserialize)]
pub struct Outage {
    pub vendor: String,
    pub status: u16,
    pub seconds: f64,
}

pub(crate) async fn outage(State(state): State<MockState>, Json(o): Json<Outage>) -> Response {
    let Ok(vendor) = Vendor::parse(&o.vendor) else {
        return (StatusCode::BAD_REQUEST, "unknown vendor\n").into_response();
    };
    if !(100..=599).contains(&o.status)
        || !o.seconds.is_finite()
        || o.seconds < 0.0
        || o.seconds > 86_400.0
    {
        return (
            StatusCode::BAD_REQUEST,
            "status must be 100-599 and seconds 0-86400\n",
        )
            .into_response();
    }
    state.script_outage(
        vendor,
        (o.seconds > 0.0).then(|| {
            (
                o.status,
                Instant::now() + Duration::from_secs_f64(o.seconds),
            )
        }),
    );
    tracing::info!(
        vendor = vendor.as_str(),
        status = o.status,
        seconds = o.seconds,
        "outage scripted"
    );
    (StatusCode::OK, "ok\n").into_response()
}

/// Body of `POST /__mock/key`.
#[derive(Debug, Deserialize)]
pub struct KeyControl {
    pub vendor: String,
    /// The last 4 to 64 characters of the keys scripted.
    pub suffix: String,
    #[serde(default)]
    pub refuse: bool,
    #[serde(default)]
    pub account: Option<String>,
}

pub(crate) async fn key(State(state): State<MockState>, Json(k): Json<KeyControl>) -> Response {
    let Ok(vendor) = Vendor::parse(&k.vendor) else {
        return (StatusCode::BAD_REQUEST, "unknown vendor\n").into_response();
    };
    if !(4..=64).contains(&k.suffix.chars().count()) {
        return (
            StatusCode::BAD_REQUEST,
            "suffix must be 4 to 64 characters\n",
        )
            .into_response();
    }
    tracing::info!(
        vendor = vendor.as_str(),
        refuse = k.refuse,
        account = k.account.as_deref().unwrap_or("(default)"),
        "key behaviour scripted"
    );
    state.script_key(KeyScript {
        vendor,
        suffix: k.suffix,
        refuse: k.refuse,
        account: k.account,
    });
    (StatusCode::OK, "ok\n").into_response()
}

/// Body of `POST /__mock/latency`.
#[derive(Debug, Deserialize)]
pub struct Latency {
    pub ms: u64,
}

pub(crate) async fn latency(State(state): State<MockState>, Json(l): Json<Latency>) -> Response {
    if l.ms > 600_000 {
        return (StatusCode::BAD_REQUEST, "ms must be 0-600000\n").into_response();
    }
    state.set_latency(Duration::from_millis(l.ms));
    tracing::info!(ms = l.ms, "latency set");
    (StatusCode::OK, "ok\n").into_response()
}

pub(crate) async fn stats(State(state): State<MockState>) -> Json<Stats> {
    Json(state.stats())
}

pub(crate) async fn reset(State(state): State<MockState>) -> &'static str {
    state.reset();
    "ok\n"
}

/// Unknown paths: OpenAI-style for `/openai`, Anthropic-style otherwise.
pub(crate) async fn not_found(uri: Uri) -> Response {
    let path = uri.path().to_owned();
    if path.starts_with("/openai/") {
        let msg = format!("Invalid URL ({})", path.trim_start_matches("/openai"));
        json(
            404,
            "x-request-id",
            &request_id("req_"),
            openai::error_body(&msg, "invalid_request_error", None),
        )
    } else {
        let rid = request_id("req_");
        json(
            404,
            "request-id",
            &rid,
            anthropic::error_body("not_found_error", "Not found", &rid),
        )
    }
}
