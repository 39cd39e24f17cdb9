//! One mock server's shared state, and what every vendor endpoint does
//! before its own answer (scripted outages, latency, hangs, resets).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use byok_core::Vendor;
use tokio_util::sync::CancellationToken;

use crate::rules::{self, Behaviour};
use crate::stats::Stats;

/// Shared, mutable state of one mock server.
#[derive(Clone)]
pub struct MockState(Arc<Shared>);

struct Shared {
    slow: Duration,
    hang: Duration,
    /// Added to every vendor call (the `--latency-ms` of a benchmark), ms.
    latency_ms: AtomicU64,
    /// Vendor calls being answered now, and the most seen at once.
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    outages: Mutex<Vec<(Vendor, u16, Instant)>>,
    keys: Mutex<Vec<KeyScript>>,
    stats: Mutex<Stats>,
}

/// The account every answer names unless a test scripted another
/// (`POST /__mock/key`).
pub const DEFAULT_ACCOUNT: &str = "org-mock-default";

/// What a test scripted for one vendor's keys ending in `suffix`: refuse
/// them from now on (401, as when a key is revoked in the vendor's console)
/// and/or name another account (OpenAI: `org/project`).
#[derive(Debug, Clone)]
pub(crate) struct KeyScript {
    pub vendor: Vendor,
    pub suffix: String,
    pub refuse: bool,
    pub account: Option<String>,
}

impl MockState {
    pub fn new(slow: Duration, hang: Duration) -> MockState {
        MockState(Arc::new(Shared {
            slow,
            hang,
            latency_ms: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
            outages: Mutex::default(),
            keys: Mutex::default(),
            stats: Mutex::default(),
        }))
    }

    /// Every call to `vendor` answers `status` until `until` (replacing
    /// any outage scripted before; `None` ends it).
    pub(crate) fn script_outage(&self, vendor: Vendor, outage: Option<(u16, Instant)>) {
        let mut outages = self.0.outages.lock().unwrap();
        outages.retain(|(v, _, _)| *v != vendor);
        if let Some((status, until)) = outage {
            outages.push((vendor, status, until));
        }
    }

    /// Scripts the keys ending in `s.suffix` (replacing an earlier script
    /// for the same vendor and suffix).
    pub(crate) fn script_key(&self, s: KeyScript) {
        let mut keys = self.0.keys.lock().unwrap();
        keys.retain(|k| !(k.vendor == s.vendor && k.suffix == s.suffix));
        keys.push(s);
    }

    /// The behaviour for `key` (its marker, unless a script refuses it) and
    /// the account the answer names.
    pub(crate) fn judge(&self, vendor: Vendor, key: &str) -> (Behaviour, String) {
        let keys = self.0.keys.lock().unwrap();
        let script = keys
            .iter()
            .find(|k| k.vendor == vendor && key.ends_with(&k.suffix));
        let behaviour = match script {
            Some(s) if s.refuse => Behaviour::Unauthorized,
            _ => rules::behaviour(key),
        };
        let account = script
            .and_then(|s| s.account.clone())
            .unwrap_or_else(|| DEFAULT_ACCOUNT.to_owned());
        (behaviour, account)
    }

    /// Every vendor call answers `latency` later than it would (a
    /// benchmark's stand-in for a vendor's round trip).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.0.latency_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut s = self.0.stats.lock().unwrap().clone();
        s.in_flight = self.0.in_flight.load(Ordering::Relaxed);
        s.peak_in_flight = self.0.peak_in_flight.load(Ordering::Relaxed);
        s.latency_ms = self.0.latency_ms.load(Ordering::Relaxed);
        s
    }

    /// Clears outages and counters.
    pub(crate) fn reset(&self) {
        self.0.outages.lock().unwrap().clear();
        self.0.keys.lock().unwrap().clear();
        *self.0.stats.lock().unwrap() = Stats::default();
        self.0
            .peak_in_flight
            .store(self.0.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn outage(&self, vendor: Vendor) -> Option<u16> {
        let now = Instant::now();
        let mut outages = self.0.outages.lock().unwrap();
        outages.retain(|(_, _, until)| *until > now);
        outages
            .iter()
            .find(|(v, _, _)| *v == vendor)
            .map(|(_, s, _)| *s)
    }

    fn count(&self, vendor: Vendor, behaviour: &'static str) {
        self.0.stats.lock().unwrap().count(vendor, behaviour);
    }

    pub(crate) fn malformed(&self, vendor: Vendor, reason: &str) {
        // A reason can quote what the client sent: redacted like every log line.
        tracing::warn!(
            vendor = vendor.as_str(),
            reason = %byok_core::redact::redact(reason),
            "malformed request refused"
        );
        self.0.stats.lock().unwrap().malformed(vendor, reason);
    }
}

/// Counts one vendor call as in flight while it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-connection switch a handler flips to reset its TCP connection.
#[derive(Clone)]
pub(crate) struct KillSwitch(pub(crate) CancellationToken);

/// What the common gate decided before the vendor-specific answer.
pub(crate) enum Gate {
    /// Answer according to this behaviour.
    Go(Behaviour),
    /// A vendor-wide outage is scripted: answer this status.
    Outage(u16),
}

/// Applies the behaviours both vendors share (outages, latency, hangs,
/// resets); what is left is answered by the vendor module. The call counts
/// as in flight (stats' `peak_in_flight`) until its answer is decided.
pub(crate) async fn gate(
    state: &MockState,
    kill: &KillSwitch,
    vendor: Vendor,
    behaviour: Behaviour,
) -> Gate {
    let _in_flight = InFlight::enter(&state.0);
    let latency = state.0.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let Some(status) = state.outage(vendor) {
        state.count(vendor, "outage");
        return Gate::Outage(status);
    }
    state.count(vendor, behaviour_name(behaviour));
    match behaviour {
        Behaviour::Slow => tokio::time::sleep(state.0.slow).await,
        Behaviour::Hang => tokio::time::sleep(state.0.hang).await,
        Behaviour::Reset => {
            kill.0.cancel();
            std::future::pending::<()>().await;
        }
        _ => {}
    }
    Gate::Go(behaviour)
}

fn behaviour_name(b: Behaviour) -> &'static str {
    rules::MARKERS
        .iter()
        .find(|(_, m)| *m == b)
        .map_or("valid", |(name, _)| name)
}

/// A JSON answer with the vendor's request-id header.
pub(crate) fn json(
    status: u16,
    id_header: &'static str,
    request_id: &str,
    body: serde_json::Value,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(id_header, v);
    }
    resp
}

/// Names the account behind the key, as the vendors do on every answer to
/// an authenticated request: Anthropic `anthropic-organization-id`, OpenAI
/// `openai-organization` (and `openai-project` for an `org/project` account).
/// A 401 names none: the vendor does not know whose key it was.
pub(crate) fn with_account(vendor: Vendor, mut resp: Response, account: &str) -> Response {
    if resp.status() == StatusCode::UNAUTHORIZED {
        return resp;
    }
    let h = resp.headers_mut();
    let (first, project) = match vendor {
        Vendor::Anthropic => (("anthropic-organization-id", account), None),
        Vendor::OpenAi => match account.split_once('/') {
            Some((org, project)) => (("openai-organization", org), Some(project)),
            None => (("openai-organization", account), None),
        },
    };
    if let Ok(v) = HeaderValue::from_str(first.1) {
        h.insert(first.0, v);
    }
    if let Some(Ok(v)) = project.map(HeaderValue::from_str) {
        h.insert("openai-project", v);
    }
    resp
}

pub(crate) fn request_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}
