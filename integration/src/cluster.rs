//! A throw-away Postgres 15 cluster per test.

use std::ffi::{CString, OsString};
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::random_master_key_hex;

/// Where the server binaries live (Debian's PostgreSQL 15). Overridable with
/// the environment variable `BYOK_PG_BIN`.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Environment variables that would redirect a libpq tool or leak into the
/// postmaster; removed from every command the harness runs.
const SCRUBBED_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGDATA",
    "PGOPTIONS",
    "PGSERVICE",
    "PGPASSWORD",
    "PGPASSFILE",
    "BYOK_MASTER_KEY",
];

/// How many times a start is retried on a fresh port when the chosen one was
/// taken in the meantime (other engineers' clusters share the machine).
const PORT_ATTEMPTS: usize = 5;

/// Lines of the server log shown in panic messages.
const LOG_TAIL_LINES: usize = 60;

/// Options for [`Cluster::start`]. Use `..Default::default()` for the rest.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Extra lines appended to postgresql.conf (after the harness's own).
    pub extra_conf: Vec<String>,
    /// `shared_preload_libraries = 'pg_byok'` (default true).
    pub preload: bool,
    /// Keyring file text. `None` (default): a freshly generated
    /// `"1 <64 hex>"`, unless `master_key_env` is given, in which case no
    /// file is written and `byok.master_key_file` is not set.
    pub keyring: Option<String>,
    /// `BYOK_MASTER_KEY` in the postmaster's environment.
    pub master_key_env: Option<String>,
    /// `CREATE EXTENSION pg_byok` in database `byok` (default true).
    pub create_extension: bool,
    /// Directory of the server binaries. `None` (default): [`pg_bin`]'s
    /// (`BYOK_PG_BIN` or [`PG_BIN`]). A private install root
    /// ([`crate::PgRoot`]) serves the extension files placed in it.
    pub pg_bin_dir: Option<PathBuf>,
    /// The bootstrap superuser's name (initdb -U), used by `client()` and
    /// `psql()`. Default `postgres`; `supabase_admin` for a Supabase layout.
    pub superuser: String,
    /// Supabase Vault's root key (64 hex). `Some`: supabase_vault is
    /// preloaded after pg_byok, `vault.getkey_script` names a script in the
    /// cluster's directory that prints this key, and `CREATE EXTENSION
    /// supabase_vault` runs before pg_byok's. Needs Vault installed on the
    /// machine ([`vault_installed`]). Default `None`.
    pub vault_root_key: Option<String>,
}

/// Whether Supabase Vault (supabase_vault) is installed in the Postgres the
/// harness runs: its control file is in `pg_config --sharedir`/extension.
/// It is on no package registry; build supabase/vault 0.3.x from its source
/// with PGXS to run the tests that need it.
pub fn vault_installed() -> bool {
    let out = Command::new(pg_bin("pg_config")).arg("--sharedir").output();
    match out {
        Ok(o) if o.status.success() => {
            let share = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Path::new(&share)
                .join("extension/supabase_vault.control")
                .exists()
        }
        _ => false,
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            extra_conf: Vec::new(),
            preload: true,
            keyring: None,
            master_key_env: None,
            create_extension: true,
            pg_bin_dir: None,
            superuser: "postgres".to_string(),
            vault_root_key: None,
        }
    }
}

/// A running Postgres cluster in a temporary directory; see the crate docs.
pub struct Cluster {
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    keyring_path: PathBuf,
    keyring_in_conf: bool,
    master_key_env: Option<String>,
    port: u16,
    running: bool,
    bin_dir: PathBuf,
    superuser: String,
    vault_getkey: PathBuf,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of the `postgres` OS user.
fn postgres_ids() -> (u32, u32) {
    let name = CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns NULL or a pointer to static storage; we copy
    // the two integers out immediately (tests are the only callers, and no
    // other code in this process calls getpwnam concurrently in a way that
    // matters for two integer reads).
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(
            !pw.is_null(),
            "running as root but there is no `postgres` OS user to run initdb/pg_ctl as \
             (install postgresql-15, or run the tests as a non-root user)"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

/// Path of a server binary (`initdb`, `pg_ctl`, `psql`, `pg_waldump`, …).
pub fn pg_bin(name: &str) -> PathBuf {
    let base = std::env::var_os("BYOK_PG_BIN").unwrap_or_else(|| OsString::from(PG_BIN));
    PathBuf::from(base).join(name)
}

fn chown_to_postgres(path: &Path) {
    if is_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown postgres {}: {e}", path.display()));
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    l.local_addr().unwrap().port()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

fn describe(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn quote_conf(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Cluster {
    /// Build a command that runs `cmd` (program, arguments, environment
    /// changes, working directory) as the `postgres` OS user when this
    /// process is root (`runuser -u postgres -- env … prog args`), or as is
    /// otherwise. Libpq/`BYOK_MASTER_KEY` variables of the test process are
    /// scrubbed unless `cmd` sets them explicitly. Stdio is left default.
    pub fn as_postgres(cmd: &Command) -> Command {
        let explicit: Vec<(OsString, Option<OsString>)> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_os_string(), v.map(|v| v.to_os_string())))
            .collect();
        let is_explicit = |name: &str| explicit.iter().any(|(k, _)| k == name);
        let mut out = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "env"]);
            for name in SCRUBBED_ENV.iter().filter(|n| !is_explicit(n)) {
                c.arg("-u").arg(name);
            }
            for (k, v) in &explicit {
                if v.is_none() {
                    c.arg("-u").arg(k);
                }
            }
            for (k, v) in &explicit {
                if let Some(v) = v {
                    let mut kv = k.clone();
                    kv.push("=");
                    kv.push(v);
                    c.arg(kv);
                }
            }
            c.arg(cmd.get_program());
            c
        } else {
            let mut c = Command::new(cmd.get_program());
            for name in SCRUBBED_ENV.iter().filter(|n| !is_explicit(n)) {
                c.env_remove(name);
            }
            for (k, v) in &explicit {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
            c
        };
        out.args(cmd.get_args());
        // The postgres user may not be able to enter the test's cwd.
        match cmd.get_current_dir() {
            Some(d) => out.current_dir(d),
            None => out.current_dir("/"),
        };
        out
    }

    /// Run `cmd` as the `postgres` OS user (see [`Cluster::as_postgres`])
    /// with stdin closed, and return its output (the caller checks
    /// `status`). Panics only when the program cannot be started.
    pub fn run_as_postgres(cmd: &mut Command) -> Output {
        let mut wrapped = Self::as_postgres(cmd);
        wrapped
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {:?} as postgres: {e}", cmd.get_program()))
    }

    fn run_checked(&self, what: &str, cmd: &mut Command) -> Output {
        let out = Self::run_as_postgres(cmd);
        if !out.status.success() {
            panic!(
                "{what} failed\n{}\n--- server log tail ({}) ---\n{}",
                describe(&out),
                self.log.display(),
                self.log_tail()
            );
        }
        out
    }

    /// Start a fresh cluster per `opts`; panics with the reason and the
    /// server log tail if any step fails (the directory is cleaned up).
    pub fn start(opts: ClusterOptions) -> Cluster {
        let base =
            std::env::var_os("BYOK_CLUSTER_TMPDIR").unwrap_or_else(|| OsString::from("/tmp"));
        let tmp = tempfile::Builder::new()
            .prefix("byok-pg-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("create a temp dir under {base:?}: {e}"));
        let dir = tmp.path().to_path_buf();
        chown_to_postgres(&dir);
        let write_keyring = opts.keyring.is_some() || opts.master_key_env.is_none();
        let mut c = Cluster {
            tmp: Some(tmp),
            data: dir.join("data"),
            log: dir.join("server.log"),
            keyring_path: dir.join("keyring"),
            keyring_in_conf: write_keyring,
            master_key_env: opts.master_key_env.clone(),
            port: free_port(),
            running: false,
            bin_dir: opts.pg_bin_dir.clone().unwrap_or_else(|| pg_bin("")),
            superuser: opts.superuser.clone(),
            vault_getkey: dir.join("vault-getkey"),
            dir,
        };
        // From here on a panic drops `c`, which stops the server and removes the dir.
        c.initdb();
        if write_keyring {
            let text = opts
                .keyring
                .clone()
                .unwrap_or_else(|| format!("1 {}\n", random_master_key_hex()));
            c.write_keyring_file(&text);
        }
        let mut conf = vec![
            "# --- pg_byok test harness ---".to_string(),
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {}", c.port),
            format!(
                "unix_socket_directories = {}",
                quote_conf(&c.dir.to_string_lossy())
            ),
            "fsync = off".to_string(),
            "max_connections = 60".to_string(),
            "log_line_prefix = '%m [%p] %q%u@%d '".to_string(),
        ];
        if let Some(root) = &opts.vault_root_key {
            c.write_vault_getkey(root);
            conf.push(format!(
                "vault.getkey_script = {}",
                quote_conf(&c.vault_getkey.to_string_lossy())
            ));
        }
        match (opts.preload, opts.vault_root_key.is_some()) {
            (true, true) => {
                conf.push("shared_preload_libraries = 'pg_byok,supabase_vault'".to_string())
            }
            (true, false) => conf.push("shared_preload_libraries = 'pg_byok'".to_string()),
            (false, true) => conf.push("shared_preload_libraries = 'supabase_vault'".to_string()),
            (false, false) => {}
        }
        if opts.preload {
            // The usage worker flushes use_key's counters in the database
            // the tests use.
            conf.push("byok.usage_database = 'byok'".to_string());
        }
        if write_keyring {
            conf.push(format!(
                "byok.master_key_file = {}",
                quote_conf(&c.keyring_path.to_string_lossy())
            ));
        }
        conf.extend(opts.extra_conf.iter().cloned());
        c.append_conf(&conf);
        c.start_postmaster();
        c.bootstrap(opts.create_extension, opts.vault_root_key.is_some());
        c
    }

    /// Write the script Vault runs at server start to read its root key
    /// (0700, owned by postgres); takes effect at the next start.
    fn write_vault_getkey(&self, root_key_hex: &str) {
        let p = &self.vault_getkey;
        fs::write(p, format!("#!/bin/sh\necho {root_key_hex}\n"))
            .unwrap_or_else(|e| panic!("write {p:?}: {e}"));
        fs::set_permissions(p, fs::Permissions::from_mode(0o700)).unwrap();
        chown_to_postgres(p);
    }

    /// Give Supabase Vault another root key from the next start on (a dump
    /// restored on another server, in one cluster). Only for clusters
    /// started with `vault_root_key`.
    pub fn set_vault_root_key(&mut self, root_key_hex: &str) {
        self.write_vault_getkey(root_key_hex);
    }

    fn initdb(&self) {
        let mut cmd = Command::new(self.bin("initdb"));
        cmd.arg("-D")
            .arg(&self.data)
            .args([
                "-A",
                "trust",
                "-U",
                &self.superuser,
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .args(["--no-instructions", "--no-sync"])
            .current_dir(&self.dir);
        self.run_checked("initdb", &mut cmd);
    }

    /// Append lines to postgresql.conf (later lines win).
    pub fn append_conf(&self, lines: &[String]) {
        let path = self.data.join("postgresql.conf");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        for line in lines {
            writeln!(f, "{line}").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
    }

    fn write_keyring_file(&self, text: &str) {
        let p = &self.keyring_path;
        // Write to a fresh file with 0600 from the start, then move it in.
        let tmp = self.dir.join(".keyring.new");
        let _ = fs::remove_file(&tmp);
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
            f.write_all(text.as_bytes()).unwrap();
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
        chown_to_postgres(&tmp);
        fs::rename(&tmp, p).unwrap_or_else(|e| panic!("rename to {}: {e}", p.display()));
    }

    fn start_postmaster(&mut self) {
        if let Err(msg) = self.try_start_postmaster() {
            panic!("{msg}");
        }
    }

    fn try_start_postmaster(&mut self) -> Result<(), String> {
        assert!(!self.running, "start: the cluster is already running");
        for attempt in 1..=PORT_ATTEMPTS {
            let log_len_before = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
            let mut cmd = Command::new(self.bin("pg_ctl"));
            cmd.arg("start")
                .args(["-w", "-t", "60", "-D"])
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .current_dir(&self.dir);
            if let Some(k) = &self.master_key_env {
                cmd.env("BYOK_MASTER_KEY", k);
            }
            let out = Self::run_as_postgres(&mut cmd);
            if out.status.success() {
                self.running = true;
                return Ok(());
            }
            let log = fs::read(&self.log).unwrap_or_default();
            let new_log = String::from_utf8_lossy(&log[(log_len_before as usize).min(log.len())..]);
            let port_taken = new_log.contains("could not bind")
                || new_log.contains("Address already in use")
                || new_log.contains("could not create any TCP/IP sockets");
            if port_taken && attempt < PORT_ATTEMPTS {
                self.port = free_port();
                self.append_conf(&[format!("port = {}", self.port)]);
                continue;
            }
            // pg_ctl may give up while the postmaster lingers: make sure it is gone.
            self.force_stop();
            return Err(format!(
                "pg_ctl start failed (attempt {attempt}, port {})\n{}\n--- server log tail ({}) ---\n{}",
                self.port,
                describe(&out),
                self.log.display(),
                self.log_tail()
            ));
        }
        unreachable!("the last attempt returns")
    }

    fn bootstrap(&self, create_extension: bool, vault: bool) {
        let mut admin = self.connect(&self.superuser, "postgres");
        admin
            .batch_execute("CREATE DATABASE byok")
            .unwrap_or_else(|e| self.fail("CREATE DATABASE byok", &e));
        drop(admin);
        if vault {
            self.client()
                .batch_execute("CREATE EXTENSION supabase_vault")
                .unwrap_or_else(|e| self.fail("CREATE EXTENSION supabase_vault", &e));
        }
        if create_extension {
            let mut db = self.client();
            db.batch_execute("CREATE EXTENSION pg_byok")
                .unwrap_or_else(|e| self.fail("CREATE EXTENSION pg_byok", &e));
        }
    }

    /// Panic with a database error's full text (message, detail, hint) and
    /// the server log tail.
    pub fn fail(&self, what: &str, e: &postgres::Error) -> ! {
        let detail = match e.as_db_error() {
            Some(db) => format!(
                "{}: {} (SQLSTATE {})\ndetail: {:?}\nhint: {:?}\nwhere: {:?}",
                db.severity(),
                db.message(),
                db.code().code(),
                db.detail(),
                db.hint(),
                db.where_()
            ),
            None => format!("{e:?}"),
        };
        panic!(
            "{what} failed: {detail}\n--- server log tail ({}) ---\n{}",
            self.log.display(),
            self.log_tail()
        )
    }

    fn config(&self, user: &str, db: &str) -> postgres::Config {
        let mut cfg = postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .user(user)
            .dbname(db)
            .application_name("byok-integration")
            .connect_timeout(Duration::from_secs(15));
        cfg
    }

    fn connect(&self, user: &str, db: &str) -> postgres::Client {
        self.config(user, db)
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| self.fail(&format!("connect as {user} to database {db}"), &e))
    }

    /// Path of a server binary of this cluster's install (see
    /// [`ClusterOptions::pg_bin_dir`]).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A new session as superuser `postgres` in database `db`.
    pub fn client_db(&self, db: &str) -> postgres::Client {
        self.connect("postgres", db)
    }

    /// A new session as superuser `postgres` in database `byok`.
    /// A new session as the superuser (`postgres` unless
    /// [`ClusterOptions::superuser`] says otherwise) in database `byok`.
    pub fn client(&self) -> postgres::Client {
        self.connect(&self.superuser, "byok")
    }

    /// A new session as `role` (a LOGIN role the test created; trust auth).
    pub fn client_as(&self, role: &str) -> postgres::Client {
        self.connect(role, "byok")
    }

    /// A session as LOGIN role `role` in database `db`.
    pub fn client_as_in(&self, role: &str, db: &str) -> postgres::Client {
        self.connect(role, db)
    }

    /// Like [`Cluster::client_as`] but returns the error (for "cannot log in" checks).
    pub fn try_client_as(&self, role: &str) -> Result<postgres::Client, postgres::Error> {
        self.config(role, "byok").connect(postgres::NoTls)
    }

    /// `postgres://role@127.0.0.1:PORT/byok` (for tokio-postgres, DATABASE_URL).
    pub fn url_as(&self, role: &str) -> String {
        format!("postgres://{role}@127.0.0.1:{}/byok", self.port)
    }

    /// The TCP port on 127.0.0.1 (may change across `start_again` only if
    /// the old port was taken meanwhile).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The cluster's temporary directory (holds data/, server.log, keyring, the socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the keyring file (written even when it is not configured yet).
    pub fn keyring_path(&self) -> &Path {
        &self.keyring_path
    }

    /// Current keyring file text ("" if none was written).
    pub fn keyring_text(&self) -> String {
        fs::read_to_string(&self.keyring_path).unwrap_or_default()
    }

    /// Path of the server log.
    pub fn server_log_path(&self) -> &Path {
        &self.log
    }

    /// The whole server log so far (all starts of this cluster).
    pub fn server_log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn log_tail(&self) -> String {
        tail(&self.server_log(), LOG_TAIL_LINES)
    }

    /// Whether the postmaster is running (as far as the harness knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// `pg_ctl stop -m fast` (clean shutdown, checkpoint written).
    pub fn stop(&mut self) {
        assert!(self.running, "stop: the cluster is not running");
        let mut cmd = Command::new(self.bin("pg_ctl"));
        cmd.args(["stop", "-w", "-t", "60", "-m", "fast", "-D"])
            .arg(&self.data)
            .current_dir(&self.dir);
        self.run_checked("pg_ctl stop", &mut cmd);
        self.running = false;
    }

    /// `pg_ctl stop -m immediate`: every server process is killed at once,
    /// as in a crash; the next start runs crash recovery.
    pub fn stop_immediate(&mut self) {
        assert!(self.running, "stop_immediate: the cluster is not running");
        let mut cmd = Command::new(self.bin("pg_ctl"));
        cmd.args(["stop", "-w", "-t", "60", "-m", "immediate", "-D"])
            .arg(&self.data)
            .current_dir(&self.dir);
        self.run_checked("pg_ctl stop -m immediate", &mut cmd);
        self.running = false;
    }

    /// A hot standby streaming from this cluster: `pg_basebackup -R` into a
    /// directory of its own, its own port, socket and copy of the keyring,
    /// then started. `extra_conf` is appended to its postgresql.conf.
    pub fn start_replica(&self, extra_conf: &[String]) -> Cluster {
        let base =
            std::env::var_os("BYOK_CLUSTER_TMPDIR").unwrap_or_else(|| OsString::from("/tmp"));
        let tmp = tempfile::Builder::new()
            .prefix("byok-replica-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("create a temp dir under {base:?}: {e}"));
        let dir = tmp.path().to_path_buf();
        chown_to_postgres(&dir);
        let mut r = Cluster {
            tmp: Some(tmp),
            data: dir.join("data"),
            log: dir.join("server.log"),
            keyring_path: dir.join("keyring"),
            vault_getkey: dir.join("vault-getkey"),
            keyring_in_conf: self.keyring_in_conf,
            master_key_env: self.master_key_env.clone(),
            port: free_port(),
            running: false,
            bin_dir: self.bin_dir.clone(),
            superuser: self.superuser.clone(),
            dir,
        };
        let mut cmd = Command::new(self.bin("pg_basebackup"));
        cmd.arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", &self.superuser, "-D"])
            .arg(&r.data)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .current_dir(&r.dir);
        self.run_checked("pg_basebackup", &mut cmd);
        let mut conf = vec![
            "# --- pg_byok test harness: replica ---".to_string(),
            format!("port = {}", r.port),
            format!(
                "unix_socket_directories = {}",
                quote_conf(&r.dir.to_string_lossy())
            ),
            "hot_standby = on".to_string(),
        ];
        if self.keyring_in_conf {
            r.write_keyring_file(&self.keyring_text());
            conf.push(format!(
                "byok.master_key_file = {}",
                quote_conf(&r.keyring_path.to_string_lossy())
            ));
        }
        conf.extend(extra_conf.iter().cloned());
        r.append_conf(&conf);
        r.start_postmaster();
        r
    }

    /// Wait until `replica` has replayed everything this primary has
    /// written so far (panics after 60 s).
    pub fn wait_for_replay(&self, replica: &Cluster) {
        let lsn: String = self
            .client_db("postgres")
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .unwrap_or_else(|e| self.fail("pg_current_wal_insert_lsn", &e))
            .get(0);
        let mut r = replica.client_db("postgres");
        crate::wait_until(
            "the replica replays the primary's WAL",
            Duration::from_secs(60),
            || {
                r.query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&lsn],
                )
                .map(|row| row.get::<_, bool>(0))
                .unwrap_or(false)
            },
        );
    }

    /// Start the stopped cluster again (same data, current keyring and
    /// `BYOK_MASTER_KEY` setting).
    pub fn start_again(&mut self) {
        self.start_postmaster();
    }

    /// Like [`Cluster::start_again`] but returns the failure (pg_ctl output
    /// and server log tail) instead of panicking, for "the server refuses
    /// to start" checks.
    pub fn try_start_again(&mut self) -> Result<(), String> {
        self.try_start_postmaster()
    }

    /// `stop` then `start_again`.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Rewrite the keyring file (0600, owned by postgres); takes effect at
    /// the next start. If the cluster had no keyring file configured
    /// (started with `master_key_env` only), `byok.master_key_file` is added
    /// to postgresql.conf.
    pub fn set_keyring(&mut self, keyring_text: &str) {
        self.write_keyring_file(keyring_text);
        if !self.keyring_in_conf {
            self.append_conf(&[format!(
                "byok.master_key_file = {}",
                quote_conf(&self.keyring_path.to_string_lossy())
            )]);
            self.keyring_in_conf = true;
        }
    }

    /// Set or clear `BYOK_MASTER_KEY` for the next start.
    pub fn set_master_key_env(&mut self, key: Option<String>) {
        self.master_key_env = key;
    }

    fn psql_cmd(&self, extra: &[&str], sql: &str) -> Output {
        let mut cmd = Command::new(self.bin("psql"));
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", &self.superuser, "-d", "byok"])
            .args(extra)
            .args(["-f", "-"])
            .current_dir(&self.dir);
        let mut wrapped = Self::as_postgres(&cmd);
        let mut child = wrapped
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start psql: {e}"));
        // Feed stdin from a thread so a large output cannot deadlock us.
        let mut stdin = child.stdin.take().unwrap();
        let input = sql.as_bytes().to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait for psql");
        let _ = feeder.join();
        if !out.status.success() {
            panic!(
                "psql failed\n--- sql ---\n{sql}\n{}\n--- server log tail ---\n{}",
                describe(&out),
                self.log_tail()
            );
        }
        out
    }

    /// Run `sql` with `psql -X -v ON_ERROR_STOP=1` as superuser `postgres`
    /// in database `byok` (over the unix socket); return stdout. Panics on
    /// any error with psql's stderr.
    pub fn psql(&self, sql: &str) -> String {
        String::from_utf8_lossy(&self.psql_cmd(&[], sql).stdout).into_owned()
    }

    /// Like [`Cluster::psql`] with `-A -t` (unaligned, tuples only), trimmed.
    pub fn psql_tuples(&self, sql: &str) -> String {
        String::from_utf8_lossy(&self.psql_cmd(&["-A", "-t"], sql).stdout)
            .trim()
            .to_string()
    }

    /// Stop immediately, ignoring errors (used on failure and on drop).
    fn force_stop(&mut self) {
        if !self.data.join("postmaster.pid").exists() {
            self.running = false;
            return;
        }
        let mut cmd = Command::new(self.bin("pg_ctl"));
        cmd.args(["stop", "-w", "-t", "30", "-m", "immediate", "-D"])
            .arg(&self.data)
            .current_dir(&self.dir);
        let _ = Self::as_postgres(&cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.force_stop();
        let keep = std::env::var("BYOK_KEEP_CLUSTER")
            .map(|v| v == "1")
            .unwrap_or(false);
        if let Some(tmp) = self.tmp.take() {
            if keep {
                let path = tmp.keep();
                eprintln!(
                    "BYOK_KEEP_CLUSTER=1: kept cluster directory {} (port {})",
                    path.display(),
                    self.port
                );
            } else {
                drop(tmp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_default() {
        let o = ClusterOptions::default();
        assert!(o.preload && o.create_extension);
        assert!(o.keyring.is_none() && o.master_key_env.is_none() && o.extra_conf.is_empty());
        assert!(o.pg_bin_dir.is_none());
    }

    #[test]
    fn conf_quoting() {
        assert_eq!(quote_conf("/tmp/a'b"), "'/tmp/a''b'");
    }

    #[test]
    fn tail_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn as_postgres_wraps_env() {
        let mut c = Command::new("/bin/true");
        c.arg("x").env("BYOK_MASTER_KEY", "k").env_remove("FOO");
        let w = Cluster::as_postgres(&c);
        let args: Vec<String> = w
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        if is_root() {
            assert_eq!(w.get_program(), "runuser");
            assert!(args.contains(&"BYOK_MASTER_KEY=k".to_string()));
            assert!(args.windows(2).any(|p| p[0] == "-u" && p[1] == "FOO"));
            assert!(args.windows(2).any(|p| p[0] == "-u" && p[1] == "PGPORT"));
            assert_eq!(&args[args.len() - 2..], ["/bin/true", "x"]);
        } else {
            assert_eq!(w.get_program(), "/bin/true");
            assert_eq!(args, ["x"]);
        }
    }
}
