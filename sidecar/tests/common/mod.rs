//! End-to-end harness: a real cluster with pg_byok (byok-integration), the
//! mock vendor (byok-mock-vendor, a real HTTP server on loopback, served
//! in-process) and the real `byok-sidecar` binary as a child process, its
//! output captured to files for the leak check.
#![allow(dead_code)]

mod http;
mod mock;
pub mod pki;

#[allow(unused_imports)] // free_port: only some test files use it
pub use http::{free_port, http, http_try};
pub use mock::{Mock, MockOptions};

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use byok_core::samples::sample_key_marked;
use byok_integration::postgres::Client;
use byok_integration::{wait_until, Cluster, ClusterOptions};
use uuid::Uuid;

pub const BIN: &str = env!("CARGO_BIN_EXE_byok-sidecar");

/// A cluster with a LOGIN role `sidecar` granted byok_worker, and a mock vendor.
pub struct Env {
    pub mock: Mock,
    pub cluster: Cluster,
    pub logs: PathBuf,
    /// Every plaintext key the test used (for the leak check).
    pub keys: Vec<String>,
}

pub fn setup(extra_conf: &[&str], mock: MockOptions) -> Env {
    let cluster = Cluster::start(ClusterOptions {
        extra_conf: extra_conf.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    cluster
        .client()
        .batch_execute("CREATE ROLE sidecar LOGIN; GRANT byok_worker TO sidecar;")
        .unwrap();
    let logs = cluster.dir().join("e2e-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mock = Mock::start(mock);
    Env {
        mock,
        cluster,
        logs,
        keys: Vec::new(),
    }
}

/// A running `byok-sidecar`.
pub struct Sidecar {
    child: Option<Child>,
    pub name: String,
    pub metrics: String,
    pub log: PathBuf,
}

impl Env {
    /// Starts a sidecar named `name`; `overrides` replace default flags
    /// (given as pairs: `&[("--concurrency", "4")]`).
    pub fn sidecar(&self, name: &str, overrides: &[(&str, &str)]) -> Sidecar {
        let sc = self.spawn_sidecar(name, overrides);
        wait_until(&format!("{name} ready"), Duration::from_secs(30), || {
            http_try(&sc.metrics, "GET", "/readyz", None).is_some_and(|(c, _)| c == 200)
        });
        sc
    }

    /// Like [`Env::sidecar`] without waiting for it to be ready (for
    /// sidecars that must not get a database connection).
    pub fn spawn_sidecar(&self, name: &str, overrides: &[(&str, &str)]) -> Sidecar {
        // Port 0: the sidecar binds a port of the kernel's choosing and logs
        // it. A port found free here and bound later could be taken in
        // between (by another sidecar's outgoing connection, say), and the
        // sidecar would exit before doing what the test waits for.
        let url = self.cluster.url_as("sidecar");
        let mut flags: Vec<(String, String)> = [
            ("--database-url", url.as_str()),
            ("--anthropic-base-url", &self.mock.anthropic()),
            ("--openai-base-url", &self.mock.openai()),
            ("--worker-name", name),
            ("--metrics-addr", "127.0.0.1:0"),
            ("--poll-interval", "0.5"),
            ("--request-timeout", "3"),
            ("--lease-seconds", "10"),
            ("--grace-period", "10"),
            ("--log-format", "json"),
            ("--log-level", "info"),
        ]
        .iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect();
        for (f, v) in overrides {
            match flags.iter_mut().find(|(k, _)| k == f) {
                Some(slot) => slot.1 = v.to_string(),
                None => flags.push((f.to_string(), v.to_string())),
            }
        }
        let log = self.logs.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // The log may hold an earlier sidecar of the same name: only what
        // this one appends counts.
        let start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) as usize;
        let mut child = Command::new(BIN)
            .args(flags.iter().flat_map(|(f, v)| [f.clone(), v.clone()]))
            .env_clear()
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn byok-sidecar");
        let metrics = bound_metrics_addr(name, &log, start, &mut child);
        Sidecar {
            child: Some(child),
            name: name.to_owned(),
            metrics,
            log,
        }
    }

    pub fn db(&self) -> Client {
        self.cluster.client()
    }

    /// A key of `vendor` ("anthropic" | "openai") whose body starts with
    /// `marker` (the mock's behaviour selector), unique per `seed`.
    pub fn key(&mut self, vendor: &str, marker: &str, seed: u64) -> String {
        let key = sample_key_marked(vendor, marker, seed);
        self.keys.push(key.clone());
        key
    }

    /// Every captured log file, plus the Postgres server log.
    pub fn all_logs(&self) -> String {
        let mut text = self.cluster.server_log();
        for entry in std::fs::read_dir(&self.logs).unwrap() {
            text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
        }
        text
    }

    /// The log capture of the whole run holds no plaintext key, nor any
    /// 16-character piece of one.
    pub fn assert_no_key_in_logs(&self) {
        let text = self.all_logs();
        assert!(!text.is_empty());
        // Stronger than looking for our keys: nothing key-shaped at all.
        if let Some(line) = text
            .lines()
            .find(|l| byok_core::redact::contains_key_shaped(l))
        {
            panic!(
                "a key-shaped string appears in the logs: {}",
                byok_core::redact::redact(line)
            );
        }
        for key in &self.keys {
            let body = &key[key.len() - 40..key.len() - 20];
            assert!(
                !text.contains(key.as_str()) && !text.contains(body),
                "a plaintext key ({}) appears in the logs",
                byok_core::mask::mask(key)
            );
        }
    }
}

impl Sidecar {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.pid().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < within,
                "{} did not exit within {within:?} of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn metrics_text(&self) -> String {
        http(&self.metrics, "GET", "/metrics", None).1
    }

    /// The value of one metrics line (`name{labels}` exactly), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|v| v.strip_prefix(' '))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Adds a key through the public API; returns its id.
pub fn add_key(db: &mut Client, workspace: Uuid, vendor: &str, key: &str) -> Uuid {
    db.query_one(
        "SELECT (byok.add_key(workspace_id => $1, vendor => $2, api_key => $3)).id",
        &[&workspace, &vendor, &key],
    )
    .unwrap()
    .get(0)
}

/// (status, status_detail) of a key.
pub fn status(db: &mut Client, id: Uuid) -> (String, Option<String>) {
    let r = db
        .query_one(
            "SELECT status, status_detail FROM byok.keys WHERE id = $1",
            &[&id],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// Waits until every key in `ids` has left `pending` (or `timeout`).
pub fn wait_settled(db: &mut Client, ids: &[Uuid], timeout: Duration) {
    wait_until("keys leave pending", timeout, || {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM byok.keys WHERE id = ANY($1) AND status = 'pending'",
                &[&ids],
            )
            .unwrap()
            .get(0);
        n == 0
    });
}

/// How many validation verdicts the audit log holds for `id` (finish_job
/// audits every verdict that is not a retry).
pub fn verdicts(db: &mut Client, id: Uuid) -> i64 {
    db.query_one(
        "SELECT count(*) FROM byok.audit_log WHERE action = 'validate' AND key_id = $1",
        &[&id],
    )
    .unwrap()
    .get(0)
}

/// The address a sidecar started with `--metrics-addr 127.0.0.1:0` serves
/// its metrics on, from its log line "metrics on http://ADDR/metrics". A
/// sidecar that exits first (a test of a refused start) gets an address
/// nothing listens on.
fn bound_metrics_addr(
    name: &str,
    log: &std::path::Path,
    start: usize,
    child: &mut Child,
) -> String {
    const MARK: &str = "metrics on http://";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let all = std::fs::read(log).unwrap_or_default();
        let text = String::from_utf8_lossy(all.get(start..).unwrap_or_default());
        if let Some(rest) = text.find(MARK).map(|i| &text[i + MARK.len()..]) {
            if let Some(end) = rest.find("/metrics") {
                return rest[..end].to_owned();
            }
        }
        if child.try_wait().ok().flatten().is_some() {
            return "127.0.0.1:1".to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} did not log its metrics address; log: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
