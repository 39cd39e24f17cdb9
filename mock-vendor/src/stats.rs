//! What `GET /__mock/stats` returns: request counts per vendor and
//! behaviour, and the malformed requests refused.

use std::collections::BTreeMap;

use byok_core::Vendor;
use serde::{Deserialize, Serialize};

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
    /// Vendor calls being answered at the moment of the snapshot.
    #[serde(default)]
    pub in_flight: u64,
    /// The most vendor calls answered at once since the start (or the
    /// last reset): how much concurrency a client really used.
    #[serde(default)]
    pub peak_in_flight: u64,
    /// The latency added to every call (`--latency-ms`, `POST /__mock/latency`).
    #[serde(default)]
    pub latency_ms: u64,
}

impl Stats {
    pub(crate) fn count(&mut self, vendor: Vendor, behaviour: &str) {
        *self
            .requests
            .entry(vendor.as_str().to_owned())
            .or_default()
            .entry(behaviour.to_owned())
            .or_default() += 1;
    }

    pub(crate) fn malformed(&mut self, vendor: Vendor, reason: &str) {
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
