//! The `byok-sidecar mock-vendor` child process.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{http, BIN};

/// The mock vendor process.
pub struct Mock {
    child: Child,
    pub addr: String,
}

impl Mock {
    pub(super) fn start(logs: &std::path::Path, extra: &[&str]) -> Mock {
        let mut child = Command::new(BIN)
            .args(["mock-vendor", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(File::create(logs.join("mock.log")).unwrap())
            .spawn()
            .expect("spawn mock-vendor");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("mock-vendor printed its address");
        let addr = line
            .trim()
            .strip_prefix("mock-vendor listening on http://")
            .expect("address line")
            .to_owned();
        Mock { child, addr }
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
