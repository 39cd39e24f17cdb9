//! The real `byok-sidecar` binary as a child process: the mock vendor and a
//! worker pointed at a test cluster, with everything they print captured
//! (the leak suite searches that output).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::{wait_until, Cluster};

/// The sidecar binary: `$BYOK_SIDECAR_BIN`, else `target/debug/byok-sidecar`
/// (under `$CARGO_TARGET_DIR` when set) if it has been built.
pub fn sidecar_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BYOK_SIDECAR_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug/byok-sidecar");
    (p.is_file() && mock_vendor_bin(&p).is_file()).then_some(p)
}

/// The mock vendor's own binary (crate byok-mock-vendor): `$BYOK_MOCK_VENDOR_BIN`,
/// else next to the sidecar's.
pub fn mock_vendor_bin(sidecar: &Path) -> PathBuf {
    std::env::var_os("BYOK_MOCK_VENDOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| sidecar.with_file_name("byok-mock-vendor"))
}

/// A child process whose stdout and stderr are collected by threads.
pub struct Captured {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Spawn `cmd` with stdin closed and both output pipes captured.
pub fn spawn_captured(cmd: &mut Command) -> Captured {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    let pipes: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for pipe in pipes {
        let out = out.clone();
        threads.push(std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut line = Vec::new();
            while r
                .read_until(b'\n', &mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                out.lock().unwrap().extend_from_slice(&line);
                line.clear();
            }
        }));
    }
    Captured {
        child,
        out,
        threads,
    }
}

impl Captured {
    /// Everything printed so far (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns everything printed.
    pub fn stop(mut self, grace: Duration) -> Vec<u8> {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > grace {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let out = self.out.lock().unwrap().clone();
        out
    }
}

/// Run the real sidecar (as LOGIN role `role`) against the mock vendor until
/// none of `pending` is still pending; returns the output of both processes.
pub fn sidecar_cycle(c: &Cluster, bin: &Path, role: &str, pending: &[Uuid]) -> Vec<u8> {
    let mock = spawn_captured(
        Command::new(mock_vendor_bin(bin))
            .args(["--listen", "127.0.0.1:0", "--slow-ms", "10"])
            .env_remove("DATABASE_URL"),
    );
    let mut addr = None;
    wait_until(
        "the mock vendor prints its address",
        Duration::from_secs(30),
        || {
            addr = mock.text().lines().find_map(|l| {
                l.split("listening on ")
                    .nth(1)
                    .map(|a| a.trim().to_string())
            });
            addr.is_some()
        },
    );
    let base = addr.unwrap();
    // One port serves both vendors under a prefix each.
    let (anthropic, openai) = (format!("{base}/anthropic"), format!("{base}/openai"));
    let worker = spawn_captured(
        Command::new(bin)
            .arg("--database-url")
            .arg(c.url_as(role))
            .args([
                "--anthropic-base-url",
                &anthropic,
                "--openai-base-url",
                &openai,
            ])
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--poll-interval",
                "0.2",
                "--request-timeout",
                "5",
            ])
            .args([
                "--log-level",
                "debug",
                "--worker-name",
                "leak-suite-sidecar",
                "--grace-period",
                "2",
            ])
            .env_remove("DATABASE_URL")
            .env_remove("BYOK_LOG"),
    );
    let ids: Vec<Uuid> = pending.to_vec();
    let mut pending_left = -1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending_left != 0 {
        if Instant::now() > deadline {
            let out = worker.stop(Duration::from_secs(5));
            panic!(
                "the sidecar left {pending_left} keys pending after 60 s; its output:\n{}",
                String::from_utf8_lossy(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        pending_left = c
            .client()
            .query_one(
                "SELECT count(*) FROM byok.keys WHERE id = ANY($1) AND status = 'pending'",
                &[&ids],
            )
            .unwrap()
            .get::<_, i64>(0);
    }
    let mut out = worker.stop(Duration::from_secs(15));
    out.extend_from_slice(b"\n---- mock vendor ----\n");
    out.extend(mock.stop(Duration::from_secs(5)));
    out
}
