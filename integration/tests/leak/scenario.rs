//! The scenario, run once per test binary and shared by its tests: the
//! exercise ([`super::statements`], [`super::flows`]), then the collection
//! of every place a key could land; and the per-channel search.

use super::*;
use byok_integration::collect::{dumps, files_with, wal_segments, waldump_all};
use byok_integration::{wait_until, ClusterOptions};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which control a channel must contain (the search proves itself there).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Control {
    /// Planted in an ordinary table: must be in dumps, WAL and data files.
    Table,
    /// Logged with `byok.redact_logs = off`: must be in every server log.
    Log,
}

/// What the scenario left behind: the stopped cluster, the collected
/// artifacts, and the secrets to search for.
pub struct Scenario {
    pub cluster: Cluster,
    /// Dumps, pg_waldump output, pg_stat_statements, the sidecar's output.
    pub artifacts: PathBuf,
    _artifacts_dir: Option<tempfile::TempDir>,
    /// Every key handed to the system: none may be found anywhere.
    pub protected: Vec<Secret>,
    pub ctl_table: String,
    pub ctl_log: String,
    /// `SELECT query FROM pg_stat_statements` before shutdown.
    pub pgss: Vec<String>,
    /// Records pg_waldump decoded from all segments.
    pub wal_records: usize,
    pub started: Instant,
}

impl Scenario {
    /// The server log directory (logging_collector's `log/`).
    pub fn log_dir(&self) -> PathBuf {
        self.cluster.data_dir().join("log")
    }

    /// Every needle, mapped to its secret and to the control it is (None:
    /// a protected key).
    pub fn needles(&self) -> BTreeMap<String, (Option<Control>, Secret)> {
        let mut owner = BTreeMap::new();
        for s in &self.protected {
            for n in s.needles() {
                owner.insert(n, (None, s.clone()));
            }
        }
        for (ctl, key, what) in [
            (
                Control::Table,
                &self.ctl_table,
                "control: planted in an ordinary table",
            ),
            (
                Control::Log,
                &self.ctl_log,
                "control: logged with byok.redact_logs = off",
            ),
        ] {
            let s = Secret {
                what: what.into(),
                key: key.clone(),
            };
            for n in s.needles() {
                owner.insert(n, (Some(ctl), s.clone()));
            }
        }
        owner
    }

    /// Search `paths` (the place named `place`) for every needle. Returns
    /// the problems: each protected key found, and each control in
    /// `expect` that was not found (the search is then not proven there).
    pub fn problems(&self, place: &str, paths: &[&Path], expect: &[Control]) -> Vec<String> {
        let owner = self.needles();
        let needles: Vec<String> = owner.keys().cloned().collect();
        let mut leaks = std::collections::BTreeSet::new();
        let mut found = Vec::new();
        for h in byok_integration::search(paths, &needles) {
            // grep -o prints the longest match; map it back to its secret.
            let o = owner.get(&h.matched).or_else(|| {
                owner
                    .iter()
                    .find(|(n, _)| h.matched.contains(n.as_str()))
                    .map(|(_, o)| o)
            });
            match o {
                Some((None, secret)) => {
                    leaks.insert(format!(
                        "LEAK in {place}: {} — {:?} found in {}",
                        secret.what,
                        h.matched,
                        h.file.display()
                    ));
                }
                Some((Some(ctl), _)) => found.push(*ctl),
                None => {}
            }
        }
        let mut out: Vec<String> = expect
            .iter()
            .filter(|c| !found.contains(c))
            .map(|c| {
                format!(
                    "THE SEARCH IS NOT PROVEN TO WORK: the control key {} was NOT found in: {place}",
                    match c {
                        Control::Table => "planted in a table",
                        Control::Log => "logged with redaction off",
                    }
                )
            })
            .collect();
        out.extend(leaks);
        out
    }
}

/// Panic listing `problems` (if any), with where the artifacts are.
#[track_caller]
pub fn assert_no_problems(s: &Scenario, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "\n  {}\n(artifacts in {}; set BYOK_KEEP_CLUSTER=1 to keep them and the cluster)\n",
        problems.join("\n  "),
        s.artifacts.display()
    );
}

static SCENARIO: Mutex<Option<Result<Arc<Scenario>, String>>> = Mutex::new(None);

/// Whether this binary's scenario stores its keys in Supabase Vault
/// (`byok.storage = 'vault'`); set by [`vault_scenario`] before the run.
static VAULT_STORAGE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The scenario with every key stored in Supabase Vault (the binary
/// vault_leak_suite.rs), or None where supabase_vault is not installed.
/// Unused by leak_suite.rs, which includes this module too.
#[allow(dead_code)]
pub fn vault_scenario() -> Option<Arc<Scenario>> {
    if !byok_integration::vault_installed() {
        return None;
    }
    VAULT_STORAGE.store(true, std::sync::atomic::Ordering::SeqCst);
    Some(scenario())
}

/// The scenario of this test binary: run by the first test that asks (the
/// others wait), then shared. If it failed, every caller fails with its
/// message. It is dropped (the cluster directory removed) at process exit.
pub fn scenario() -> Arc<Scenario> {
    let mut slot = SCENARIO.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        let r = std::panic::catch_unwind(run).map(Arc::new).map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into())
        });
        // SAFETY: registers a plain function with no preconditions; it runs
        // once, at exit, after every test thread has finished.
        unsafe { libc::atexit(drop_scenario) };
        *slot = Some(r);
    }
    match slot.as_ref().unwrap() {
        Ok(s) => s.clone(),
        Err(m) => panic!("the leak scenario failed, so nothing can be searched: {m}"),
    }
}

extern "C" fn drop_scenario() {
    // A panic must not unwind into libc; the cluster's Drop only stops a
    // stopped cluster and removes its directory.
    let _ = std::panic::catch_unwind(|| {
        let taken = SCENARIO.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(taken);
    });
}

/// Exercise the system with keys, then collect every place they could land.
fn run() -> Scenario {
    let started = Instant::now();
    let vault = VAULT_STORAGE.load(std::sync::atomic::Ordering::SeqCst);
    let mut extra_conf: Vec<String> = LOG_EVERYTHING.iter().map(|s| s.to_string()).collect();
    if vault {
        // After LOG_EVERYTHING's list, which would otherwise leave Vault out.
        extra_conf.push(
            "shared_preload_libraries = 'pg_byok,auto_explain,pg_stat_statements,supabase_vault'"
                .to_string(),
        );
        extra_conf.push("byok.storage = 'vault'".to_string());
    }
    let c = Cluster::start(ClusterOptions {
        extra_conf,
        vault_root_key: vault.then(byok_integration::random_master_key_hex),
        ..Default::default()
    });
    let artifacts_dir = tempfile::Builder::new()
        .prefix("byok-leak-artifacts-")
        .tempdir()
        .unwrap();
    fs::set_permissions(artifacts_dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (artifacts, artifacts_dir) = if std::env::var_os("BYOK_KEEP_CLUSTER").is_some() {
        (artifacts_dir.keep(), None)
    } else {
        (artifacts_dir.path().to_path_buf(), Some(artifacts_dir))
    };

    let mut keys = Keys::new();
    let mut db = c.client();
    db.batch_execute(
        "CREATE EXTENSION pg_stat_statements;
         CREATE ROLE sidecar LOGIN IN ROLE byok_worker;
         CREATE ROLE backend LOGIN IN ROLE byok_consumer;
         CREATE ROLE tenant LOGIN;
         CREATE TABLE app_secrets (id int PRIMARY KEY, note text CHECK (note NOT LIKE 'sk-%'));
         CREATE TABLE app_required (a text, b text NOT NULL);",
    )
    .unwrap();

    super::statements::keys_through_literals(&mut db, &mut keys);
    let sidecar_ids = super::statements::keys_through_bound_parameters(&mut db, &mut keys);
    super::statements::failing_and_utility_statements(&mut db, &mut keys);
    super::flows::sidecar_validation(&c, &mut db, &mut keys, sidecar_ids, &artifacts);
    super::flows::rotate_use_revoke(&c, &mut db, &mut keys);
    super::flows::pg_stat_activity(&c, &mut db, &mut keys);
    let (ctl_table, ctl_log) = super::flows::plant_controls(&c, &mut db, &keys);
    let (cluster, pgss, wal_records) = collect(c, db, &artifacts);
    Scenario {
        cluster,
        artifacts,
        _artifacts_dir: artifacts_dir,
        protected: keys.protected,
        ctl_table,
        ctl_log,
        pgss,
        wal_records,
        started,
    }
}

/// Collect: pg_stat_statements, the dumps, a checkpoint, the server logs
/// flushed, a clean shutdown (pg_stat_statements writes its file, a
/// shutdown checkpoint runs), then pg_waldump of every segment.
fn collect(c: Cluster, mut db: Client, artifacts: &Path) -> (Cluster, Vec<String>, usize) {
    let pgss: Vec<String> = db
        .query("SELECT query FROM pg_stat_statements", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    fs::write(artifacts.join("pg_stat_statements.txt"), pgss.join("\n")).unwrap();
    dumps(&c, artifacts);

    db.batch_execute("CHECKPOINT").unwrap();
    // Wait until the log collector has written a marker to all three files.
    // A space keeps the marker short of a 40-character stretch, which the
    // redaction rule would mask.
    let marker = format!("leak-suite-flush {}", Uuid::new_v4());
    simple(&mut db, &format!("SELECT '{marker}'")).unwrap();
    let log_dir = c.data_dir().join("log");
    wait_until(
        "the marker reaches the stderr, csv and json logs",
        Duration::from_secs(30),
        || {
            ["log", "csv", "json"].iter().all(|ext| {
                files_with(&log_dir, |n| n.ends_with(&format!(".{ext}")))
                    .iter()
                    .any(|f| {
                        fs::read_to_string(f)
                            .map(|t| t.contains(&marker))
                            .unwrap_or(false)
                    })
            })
        },
    );
    drop(db);
    let mut c = c;
    c.stop();
    assert!(
        !wal_segments(&c).is_empty(),
        "no WAL segment in {}",
        c.data_dir().join("pg_wal").display()
    );
    let records = waldump_all(&c, artifacts);
    (c, pgss, records)
}
