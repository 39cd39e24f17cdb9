//! The mock vendor (the byok-mock-vendor crate), served in-process on
//! loopback by its own tokio runtime while the test's thread drives the
//! sidecar process and the database synchronously.

use std::time::Duration;

use byok_mock_vendor::MockHandle;
use tokio::runtime::Runtime;

use super::http;

/// How the mock's slow and hanging keys behave.
#[derive(Debug, Clone, Copy)]
pub struct MockOptions {
    /// Delay of keys marked `mockslow`.
    pub slow: Duration,
    /// How long keys marked `mockhang` hang.
    pub hang: Duration,
}

impl Default for MockOptions {
    /// The `byok-mock-vendor` binary's defaults.
    fn default() -> Self {
        MockOptions {
            slow: Duration::from_millis(1500),
            hang: Duration::from_secs(300),
        }
    }
}

/// A running mock vendor.
pub struct Mock {
    // Dropped before the runtime: stops the accept loop.
    handle: Option<MockHandle>,
    runtime: Option<Runtime>,
    pub addr: String,
}

impl Mock {
    pub(super) fn start(options: MockOptions) -> Mock {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the mock vendor");
        let handle = runtime
            .block_on(byok_mock_vendor::start(
                "127.0.0.1:0".parse().unwrap(),
                options.slow,
                options.hang,
            ))
            .expect("start the mock vendor");
        Mock {
            addr: handle.addr.to_string(),
            handle: Some(handle),
            runtime: Some(runtime),
        }
    }

    pub fn anthropic(&self) -> String {
        format!("http://{}/anthropic", self.addr)
    }

    pub fn openai(&self) -> String {
        format!("http://{}/openai", self.addr)
    }

    /// Scripts a vendor-wide outage (`seconds` 0 ends it).
    pub fn outage(&self, vendor: &str, status: u16, seconds: f64) {
        let body = format!(r#"{{"vendor":"{vendor}","status":{status},"seconds":{seconds}}}"#);
        let (code, text) = http(&self.addr, "POST", "/__mock/outage", Some(&body));
        assert_eq!(code, 200, "{text}");
    }

    /// Scripts the keys of `vendor` ending in `suffix`: refused from now on
    /// (`refuse`) and/or answered naming `account` (`POST /__mock/key`).
    pub fn script_key(&self, vendor: &str, suffix: &str, refuse: bool, account: Option<&str>) {
        let body = serde_json::json!({"vendor": vendor, "suffix": suffix, "refuse": refuse, "account": account})
            .to_string();
        let (code, text) = http(&self.addr, "POST", "/__mock/key", Some(&body));
        assert_eq!(code, 200, "{text}");
    }

    /// Every vendor call answers `ms` milliseconds later (`POST /__mock/latency`).
    pub fn set_latency(&self, ms: u64) {
        let body = format!(r#"{{"ms":{ms}}}"#);
        let (code, text) = http(&self.addr, "POST", "/__mock/latency", Some(&body));
        assert_eq!(code, 200, "{text}");
    }

    pub fn stats(&self) -> serde_json::Value {
        let (code, text) = http(&self.addr, "GET", "/__mock/stats", None);
        assert_eq!(code, 200);
        serde_json::from_str(&text).unwrap()
    }

    /// Asserts every request the sidecars sent was well formed.
    pub fn assert_no_malformed(&self) {
        let s = self.stats();
        assert!(
            s["malformed"].as_object().is_none_or(|m| m.is_empty()),
            "malformed requests: {s}"
        );
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        drop(self.handle.take());
        if let Some(rt) = self.runtime.take() {
            // Connections still hanging (`mockhang`) are abandoned, not awaited.
            rt.shutdown_background();
        }
    }
}
