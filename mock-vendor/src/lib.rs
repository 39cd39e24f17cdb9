//! byok-mock-vendor: a loopback stand-in for the Anthropic and OpenAI APIs,
//! for tests and the demo (there is no internet here, and no test may call a
//! real vendor). Its own crate, so the production `byok-sidecar` binary
//! carries none of it: the `byok-mock-vendor` binary serves the demo and the
//! leak suite, and the sidecar's tests start it in-process with [`start`].
//!
//! Anthropic lives under `/anthropic`, OpenAI under `/openai` (both vendors
//! serve `/v1/models`, so one port needs a prefix): point the sidecar at it
//! with `ANTHROPIC_BASE_URL=http://127.0.0.1:PORT/anthropic` and
//! `OPENAI_BASE_URL=http://127.0.0.1:PORT/openai`. Requests are checked the
//! way the vendors check them (headers, body fields) and refused in the
//! vendors' shapes, and every refusal of a malformed request is counted, so
//! a test can prove the sidecar sends conforming requests. Keys are judged
//! by [`rules`]. Control endpoints:
//! - `POST /__mock/outage {"vendor":"anthropic","status":529,"seconds":10}`:
//!   every call to that vendor answers `status` for that long (0 s clears);
//! - `POST /__mock/key {"vendor":"openai","suffix":"Ab12","refuse":true,"account":"org-b/proj_1"}`:
//!   keys of that vendor ending in `suffix` are refused with 401 from now on
//!   (`refuse`, as after a revocation in the vendor's console) and/or answered
//!   naming `account` (default `org-mock-default`);
//! - `POST /__mock/latency {"ms":150}`: every vendor call answers that much
//!   later (also `--latency-ms`; a benchmark's stand-in for a real round trip);
//! - `GET /__mock/stats`: request counts, the last malformed-request reasons,
//!   and the vendor calls in flight now and at most (`peak_in_flight`);
//! - `POST /__mock/reset`: clears outages, key scripts and counters.
//!
//! Every answer but a 401 names the account behind the key, as the vendors
//! do: `anthropic-organization-id`, or `openai-organization` (and
//! `openai-project` for an `org/project` account).

#![forbid(unsafe_code)]
// Handlers return ready-made refusals as `Err(Response)`; boxing them would
// only add noise to a test tool.
#![allow(clippy::result_large_err)]

mod anthropic;
mod control;
mod openai;
pub mod rules;
mod state;
pub mod stats;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Extension, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use state::KillSwitch;
pub use state::MockState;

/// The mock's routes.
pub fn router(state: MockState) -> Router {
    Router::new()
        .route("/anthropic/v1/models", get(anthropic::models))
        .route("/anthropic/v1/messages", post(anthropic::messages))
        .route("/openai/v1/models", get(openai::models))
        .route("/openai/v1/chat/completions", post(openai::chat))
        .route("/__mock/outage", post(control::outage))
        .route("/__mock/key", post(control::key))
        .route("/__mock/latency", post(control::latency))
        .route("/__mock/stats", get(control::stats))
        .route("/__mock/reset", post(control::reset))
        .fallback(control::not_found)
        .with_state(state)
}

/// A running mock server.
pub struct MockHandle {
    pub addr: SocketAddr,
    pub state: MockState,
    stop: CancellationToken,
}

impl MockHandle {
    pub fn anthropic_base(&self) -> String {
        format!("http://{}/anthropic", self.addr)
    }
    pub fn openai_base(&self) -> String {
        format!("http://{}/openai", self.addr)
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Binds `addr` (loopback only) and serves in the background.
pub async fn start(
    addr: SocketAddr,
    slow: Duration,
    hang: Duration,
) -> std::io::Result<MockHandle> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the mock vendor listens on loopback only",
        ));
    }
    let listener = TcpListener::bind(addr).await?;
    let state = MockState::new(slow, hang);
    let stop = CancellationToken::new();
    let handle = MockHandle {
        addr: listener.local_addr()?,
        state: state.clone(),
        stop: stop.clone(),
    };
    tokio::spawn(accept_loop(listener, router(state), stop));
    Ok(handle)
}

/// Serves each connection with its own [`KillSwitch`]: firing it drops the
/// connection with SO_LINGER 0, which sends a TCP reset.
async fn accept_loop(listener: TcpListener, app: Router, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let kill = KillSwitch(CancellationToken::new());
        let service = TowerToHyperService::new(app.clone().layer(Extension(kill.clone())));
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(std) = stream.into_std() else { return };
            let Ok(twin) = std.try_clone() else { return };
            let Ok(stream) = tokio::net::TcpStream::from_std(std) else {
                return;
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
                _ = kill.0.cancelled() => {
                    if let Ok(twin) = tokio::net::TcpStream::from_std(twin) {
                        let _ = twin.set_zero_linger();
                    }
                }
            }
        });
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
