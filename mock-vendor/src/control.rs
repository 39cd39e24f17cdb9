//! The mock's own endpoints: scripted outages and request statistics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use byok_core::Vendor;
use serde::{Deserialize, Serialize};

use super::MockState;

/// Reasons kept for inspection (the newest ones).
const KEEP_REASONS: usize = 50;

/// What `GET /__mock/stats` returns.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// Requests per vendor and behaviour (`valid`, `mock401`, `outage`, …).
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// Malformed requests refused, per vendor.
    pub malformed: BTreeMap<String, u64>,
    /// Why, newest last.
    pub malformed_reasons: Vec<String>,
}

impl Stats {
    pub(super) fn count(&mut self, vendor: Vendor, behaviour: &str) {
        *self
            .requests
            .entry(vendor.as_str().to_owned())
            .or_default()
            .entry(behaviour.to_owned())
            .or_default() += 1;
    }

    pub(super) fn malformed(&mut self, vendor: Vendor, reason: &str) {
        *self
            .malformed
            .entry(vendor.as_str().to_owned())
            .or_default() += 1;
        if self.malformed_reasons.len() == KEEP_REASONS {
            self.malformed_reasons.remove(0);
        }
        self.malformed_reasons.push(format!(
            "{}: {}",
            vendor.as_str(),
            byok_core::redact::redact(reason)
        ));
    }

    /// Requests that reached the vendor logic, for one vendor.
    pub fn total(&self, vendor: &str) -> u64 {
        self.requests.get(vendor).map_or(0, |m| m.values().sum())
    }
}

/// Body of `POST /__mock/outage`.
#[derive(Debug, Deserialize)]
pub struct Outage {
    pub vendor: String,
    pub status: u16,
    pub seconds: f64,
}

pub(super) async fn outage(State(state): State<MockState>, Json(o): Json<Outage>) -> Response {
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
    let mut outages = state.0.outages.lock().unwrap();
    outages.retain(|(v, _, _)| *v != vendor);
    if o.seconds > 0.0 {
        outages.push((
            vendor,
            o.status,
            Instant::now() + Duration::from_secs_f64(o.seconds),
        ));
    }
    tracing::info!(
        vendor = vendor.as_str(),
        status = o.status,
        seconds = o.seconds,
        "outage scripted"
    );
    (StatusCode::OK, "ok\n").into_response()
}

pub(super) async fn stats(State(state): State<MockState>) -> Json<Stats> {
    Json(state.0.stats.lock().unwrap().clone())
}

pub(super) async fn reset(State(state): State<MockState>) -> &'static str {
    state.0.outages.lock().unwrap().clear();
    *state.0.stats.lock().unwrap() = Stats::default();
    "ok\n"
}

/// Unknown paths: OpenAI-style for `/openai`, Anthropic-style otherwise.
pub(super) async fn not_found(uri: Uri) -> Response {
    let path = uri.path().to_owned();
    if path.starts_with("/openai/") {
        let msg = format!("Invalid URL ({})", path.trim_start_matches("/openai"));
        super::json(
            404,
            "x-request-id",
            &super::request_id("req_"),
            super::openai::error_body(&msg, "invalid_request_error", None),
        )
    } else {
        let rid = super::request_id("req_");
        super::json(
            404,
            "request-id",
            &rid,
            super::anthropic::error_body("not_found_error", "Not found", &rid),
        )
    }
}
