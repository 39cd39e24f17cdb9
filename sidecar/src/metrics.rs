//! Prometheus metrics, rendered by hand in the text exposition format.
//!
//! A handful of counters and gauges do not justify a metrics framework, and
//! writing the format here keeps a rule easy to audit: every label value is
//! a `&'static str` chosen by this crate (vendor names, outcome names), so
//! no key, detail text or other runtime string can ever become a label.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use byok_core::Vendor;

/// Upper bounds (seconds) of the vendor latency histogram.
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// All of the sidecar's metrics. Shared behind an `Arc`.
#[derive(Default)]
pub struct Metrics {
    jobs: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    breaker: Mutex<BTreeMap<&'static str, i64>>,
    limit: Mutex<BTreeMap<&'static str, i64>>,
    queue: Mutex<BTreeMap<(&'static str, &'static str), i64>>,
    in_flight: AtomicI64,
    db_connected: AtomicBool,
    db_reconnects: AtomicU64,
    finish_failures: AtomicU64,
}

impl Metrics {
    /// Counts a job result: `outcome` is valid, invalid, retry, unverified,
    /// deferred (breaker), released (shutdown) or stale.
    pub fn job(&self, vendor: Vendor, outcome: &'static str) {
        *self
            .jobs
            .lock()
            .unwrap()
            .entry((vendor.as_str(), outcome))
            .or_default() += 1;
    }

    /// Records how long one vendor call took (answered or not).
    pub fn latency(&self, vendor: Vendor, took: Duration) {
        let mut map = self.latency.lock().unwrap();
        let h = map.entry(vendor.as_str()).or_default();
        let s = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if s <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += s;
    }

    pub fn breaker_state(&self, vendor: Vendor, gauge: i64) {
        self.breaker.lock().unwrap().insert(vendor.as_str(), gauge);
    }

    /// A vendor's adaptive concurrency limit (see `limiter`).
    pub fn concurrency_limit(&self, vendor: Vendor, limit: i64) {
        self.limit.lock().unwrap().insert(vendor.as_str(), limit);
    }

    /// Queue depth per vendor and state (ready, leased, waiting).
    pub fn queue_depth(&self, vendor: Vendor, state: &'static str, n: i64) {
        self.queue
            .lock()
            .unwrap()
            .insert((vendor.as_str(), state), n);
    }

    pub fn in_flight_add(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn set_db_connected(&self, up: bool) {
        self.db_connected.store(up, Ordering::Relaxed);
    }

    pub fn db_connected(&self) -> bool {
        self.db_connected.load(Ordering::Relaxed)
    }

    pub fn db_reconnect(&self) {
        self.db_reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn finish_failure(&self) {
        self.finish_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "byok_sidecar_jobs_total",
            "counter",
            "Jobs handled, by vendor and outcome.",
        );
        for ((vendor, outcome), n) in self.jobs.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "byok_sidecar_jobs_total{{vendor=\"{vendor}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let name = "byok_sidecar_vendor_request_duration_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Duration of vendor validation calls.",
        );
        for (vendor, h) in self.latency.lock().unwrap().iter() {
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{vendor=\"{vendor}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{vendor=\"{vendor}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "{name}_sum{{vendor=\"{vendor}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{vendor=\"{vendor}\"}} {}", h.count);
        }
        header(
            &mut out,
            "byok_sidecar_in_flight",
            "gauge",
            "Vendor calls in flight.",
        );
        let _ = writeln!(
            out,
            "byok_sidecar_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "byok_sidecar_breaker_state",
            "gauge",
            "Circuit breaker per vendor: 0 closed, 1 half-open, 2 open.",
        );
        for vendor in Vendor::ALL {
            let state = self
                .breaker
                .lock()
                .unwrap()
                .get(vendor.as_str())
                .copied()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "byok_sidecar_breaker_state{{vendor=\"{}\"}} {state}",
                vendor.as_str()
            );
        }
        header(
            &mut out,
            "byok_sidecar_concurrency_limit",
            "gauge",
            "Vendor calls the adaptive limiter allows in flight, per vendor (before the breaker's cap).",
        );
        for (vendor, n) in self.limit.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "byok_sidecar_concurrency_limit{{vendor=\"{vendor}\"}} {n}"
            );
        }
        header(
            &mut out,
            "byok_sidecar_queue_depth",
            "gauge",
            "Validation jobs in the queue (byok.queue_depth()), by vendor and state.",
        );
        for ((vendor, state), n) in self.queue.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "byok_sidecar_queue_depth{{vendor=\"{vendor}\",state=\"{state}\"}} {n}"
            );
        }
        header(
            &mut out,
            "byok_sidecar_db_connected",
            "gauge",
            "1 while the database connection is up.",
        );
        let _ = writeln!(
            out,
            "byok_sidecar_db_connected {}",
            u8::from(self.db_connected())
        );
        header(
            &mut out,
            "byok_sidecar_db_reconnects_total",
            "counter",
            "Database connections re-established.",
        );
        let _ = writeln!(
            out,
            "byok_sidecar_db_reconnects_total {}",
            self.db_reconnects.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "byok_sidecar_finish_failures_total",
            "counter",
            "finish_job calls that failed and were retried or abandoned.",
        );
        let _ = writeln!(
            out,
            "byok_sidecar_finish_failures_total {}",
            self.finish_failures.load(Ordering::Relaxed)
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let m = Metrics::default();
        m.job(Vendor::Anthropic, "valid");
        m.job(Vendor::Anthropic, "valid");
        m.job(Vendor::OpenAi, "retry");
        m.latency(Vendor::OpenAi, Duration::from_millis(300));
        m.latency(Vendor::OpenAi, Duration::from_secs(100));
        m.in_flight_add(2);
        m.breaker_state(Vendor::OpenAi, 2);
        m.queue_depth(Vendor::Anthropic, "ready", 5);
        m.set_db_connected(true);
        let text = m.render();
        for line in [
            "byok_sidecar_jobs_total{vendor=\"anthropic\",outcome=\"valid\"} 2",
            "byok_sidecar_jobs_total{vendor=\"openai\",outcome=\"retry\"} 1",
            "byok_sidecar_vendor_request_duration_seconds_bucket{vendor=\"openai\",le=\"0.25\"} 0",
            "byok_sidecar_vendor_request_duration_seconds_bucket{vendor=\"openai\",le=\"0.5\"} 1",
            "byok_sidecar_vendor_request_duration_seconds_bucket{vendor=\"openai\",le=\"+Inf\"} 2",
            "byok_sidecar_vendor_request_duration_seconds_count{vendor=\"openai\"} 2",
            "byok_sidecar_in_flight 2",
            "byok_sidecar_breaker_state{vendor=\"anthropic\"} 0",
            "byok_sidecar_breaker_state{vendor=\"openai\"} 2",
            "byok_sidecar_queue_depth{vendor=\"anthropic\",state=\"ready\"} 5",
            "byok_sidecar_db_connected 1",
            "# TYPE byok_sidecar_jobs_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
