//! Benchmark (issue 11): the validation pipeline, end to end. Starts a
//! throw-away cluster (fsync on), the mock vendor with a fixed latency, and
//! K real `byok-sidecar` processes at their default settings; then
//! 1. drain: N keys added in ONE transaction; measures the time from its
//!    COMMIT until no key is pending (validations/s = N / that time);
//! 2. trickle (after a VACUUM and a CHECKPOINT, so the drain's aftermath
//!    is not in it): R adds/s for S seconds, one transaction each; per key
//!    the time from its insert (`created_at`) to its verdict (`checked_at`);
//!
//! and reads each sidecar's peak RSS (VmHWM in /proc/<pid>/status) and the
//! mock's peak number of calls in flight.
//!
//! Run:
//!   cargo build --release -p byok-sidecar -p byok-mock-vendor -p byok-integration
//!   target/release/pipeline [--keys 5000] [--sidecars 1] [--latency-ms 0]
//!       [--trickle-rate 200] [--trickle-seconds 5] [--vendor openai|anthropic|mixed]
//!       [--bin-dir DIR] [--extension-dir DIR] [--sidecar-arg FLAG]... [--profile]
//!
//! --bin-dir: where `byok-sidecar` and `byok-mock-vendor` are (default: this
//! program's directory). --extension-dir: a directory holding `pg_byok.so`,
//! `pg_byok.control` and the `pg_byok--*.sql` scripts (e.g. the files of
//! `cargo pgrx package`), served from a private install root; default: the
//! installed extension (scripts/install-extension.sh; a debug build's
//! figures mean little). --sidecar-arg passes one more argument to every
//! sidecar (repeat it; e.g. `--sidecar-arg=--max-concurrency --sidecar-arg=8`):
//! without it the sidecars run at their defaults, except that the vendor
//! probe is `models` (GET /v1/models, what the figures used), the
//! metrics server is off (K sidecars would share its port) and logs go to
//! a file at the default level. --profile: where the database's time goes;
//! pg_stat_statements (track = all, so the statements inside the queue's
//! functions too) is loaded, and after the drain the statements with the
//! most execution time are printed to stderr (not part of the JSON).
//!
//! Prints one JSON object on stdout (progress goes to stderr):
//! {"bench":"pipeline","keys":N,"sidecars":K,"latency_ms":L,"vendor":"openai",
//!  "sidecar_args":[...],
//!  "drain":{"seconds":f,"validations_per_s":f,"active":n,"not_active":n},
//!  "trickle":{"rate_per_s":R,"seconds":S,"keys":n,"p50_ms":f,"p99_ms":f,"max_ms":f,"not_active":n},
//!  "sidecar_peak_rss_kb":[kb per sidecar],"sidecar_peak_rss_kb_max":kb,
//!  "mock_peak_in_flight":n}
//! `trickle` is null when --trickle-seconds is 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use byok_integration::postgres::Client;
use byok_integration::{sample_key, Cluster, ClusterOptions, PgRoot};
use uuid::Uuid;

struct Args {
    keys: usize,
    sidecars: usize,
    latency_ms: u64,
    trickle_rate: u64,
    trickle_seconds: u64,
    vendor: String,
    bin_dir: PathBuf,
    extension_dir: Option<PathBuf>,
    sidecar_args: Vec<String>,
    profile: bool,
}

const USAGE: &str = "pipeline [--keys N] [--sidecars K] [--latency-ms L] [--trickle-rate R] \
[--trickle-seconds S] [--vendor openai|anthropic|mixed] [--bin-dir DIR] [--extension-dir DIR] \
[--sidecar-arg FLAG]... [--profile]";

fn parse_args() -> Args {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut a = Args {
        keys: 5000,
        sidecars: 1,
        latency_ms: 0,
        trickle_rate: 200,
        trickle_seconds: 5,
        vendor: "openai".to_owned(),
        bin_dir: exe_dir,
        extension_dir: None,
        sidecar_args: Vec::new(),
        profile: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut val = || {
            inline
                .clone()
                .or_else(|| it.next())
                .unwrap_or_else(|| panic!("{flag} needs a value\nusage: {USAGE}"))
        };
        let num = |v: String| -> u64 {
            v.parse()
                .unwrap_or_else(|_| panic!("{flag} needs a number, not {v:?}"))
        };
        match flag.as_str() {
            "--keys" => a.keys = num(val()) as usize,
            "--sidecars" => a.sidecars = num(val()) as usize,
            "--latency-ms" => a.latency_ms = num(val()),
            "--trickle-rate" => a.trickle_rate = num(val()),
            "--trickle-seconds" => a.trickle_seconds = num(val()),
            "--vendor" => a.vendor = val(),
            "--bin-dir" => a.bin_dir = PathBuf::from(val()),
            "--extension-dir" => a.extension_dir = Some(PathBuf::from(val())),
            "--sidecar-arg" => a.sidecar_args.push(val()),
            "--profile" => a.profile = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?}\nusage: {USAGE}"),
        }
    }
    assert!(
        a.keys >= 1 && a.sidecars >= 1,
        "--keys and --sidecars must be at least 1"
    );
    assert!(
        ["openai", "anthropic", "mixed"].contains(&a.vendor.as_str()),
        "--vendor is openai, anthropic or mixed"
    );
    a
}

fn vendor_of(a: &Args, i: usize) -> &'static str {
    match a.vendor.as_str() {
        "anthropic" => "anthropic",
        "mixed" if i % 2 == 1 => "anthropic",
        _ => "openai",
    }
}

/// The extension files of `--extension-dir`, installed in a private root.
fn private_root(dir: &Path) -> PgRoot {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = entry.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if n == "pg_byok.so"
            || n == "pg_byok.control"
            || (n.starts_with("pg_byok--") && n.ends_with(".sql"))
        {
            files.push(p);
        }
    }
    let root = PgRoot::from_system();
    root.install_pg_byok(&files);
    root
}

/// Child processes ended when dropped: on a panic too, so a failed run
/// leaves no sidecar or mock vendor behind (holding the bench's lock).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The mock vendor binary, answering after `latency_ms`; returns it and its address.
fn start_mock(a: &Args) -> (Child, String) {
    let bin = a.bin_dir.join("byok-mock-vendor");
    let mut child = Command::new(&bin)
        .args(["--listen", "127.0.0.1:0", "--latency-ms"])
        .arg(a.latency_ms.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .filter(|a| a.contains(':'))
        .unwrap_or_else(|| panic!("the mock vendor printed {line:?}"))
        .to_owned();
    (child, addr)
}

/// `GET /__mock/stats` over a bare TCP connection (HTTP/1.0: the body ends
/// when the connection closes).
fn mock_stats(addr: &str) -> serde_json::Value {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /__mock/stats HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("mock stats {body:?}: {e}"))
}

fn start_sidecars(a: &Args, c: &Cluster, mock: &str, logs: &Path) -> Vec<Child> {
    let bin = a.bin_dir.join("byok-sidecar");
    (0..a.sidecars)
        .map(|i| {
            let log = std::fs::File::create(logs.join(format!("sidecar-{i}.log"))).unwrap();
            Command::new(&bin)
                .env_clear()
                .args(["--database-url", &c.url_as("sidecar")])
                .args(["--anthropic-base-url", &format!("http://{mock}/anthropic")])
                .args(["--openai-base-url", &format!("http://{mock}/openai")])
                .args(["--anthropic-probe", "models", "--openai-probe", "models"])
                .args([
                    "--metrics-addr",
                    "off",
                    "--worker-name",
                    &format!("bench-{i}"),
                ])
                .args(&a.sidecar_args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
        })
        .collect()
}

/// Jobs left in the queue. Polled instead of the keys' statuses: cheap (the
/// queue is small; a scan of thousands of keys every 10 ms would take a
/// good share of a 2-core machine from the pipeline being measured). The
/// benchmark's keys are all valid, so their jobs end with their verdicts.
fn queued(db: &mut Client) -> i64 {
    db.query_one("SELECT count(*) FROM byok.jobs", &[])
        .unwrap()
        .get(0)
}

fn pending(db: &mut Client, ids: &[Uuid]) -> i64 {
    db.query_one(
        "SELECT count(*) FROM byok.keys WHERE id = ANY($1) AND status = 'pending'",
        &[&ids],
    )
    .unwrap()
    .get(0)
}

fn not_active(db: &mut Client, ids: &[Uuid]) -> i64 {
    db.query_one(
        "SELECT count(*) FROM byok.keys WHERE id = ANY($1) AND status <> 'active'",
        &[&ids],
    )
    .unwrap()
    .get(0)
}

/// Waits until none of `ids` is pending; panics after `limit`.
fn wait_drained(db: &mut Client, ids: &[Uuid], limit: Duration) {
    let start = Instant::now();
    while queued(db) > 0 || pending(db, ids) > 0 {
        assert!(
            start.elapsed() < limit,
            "keys still pending after {limit:?}: is the sidecar running? (its log is in the cluster directory)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn add_key_sql() -> &'static str {
    "SELECT (byok.add_key(workspace_id => $1, vendor => $2, api_key => $3)).id"
}

fn drain(a: &Args, db: &mut Client, seed: &mut u64) -> serde_json::Value {
    let mut tx = db.transaction().unwrap();
    let stmt = tx.prepare(add_key_sql()).unwrap();
    let mut ids = Vec::with_capacity(a.keys);
    for i in 0..a.keys {
        let vendor = vendor_of(a, i);
        *seed += 1;
        let id: Uuid = tx
            .query_one(
                &stmt,
                &[&Uuid::new_v4(), &vendor, &sample_key(vendor, *seed)],
            )
            .unwrap()
            .get(0);
        ids.push(id);
    }
    tx.commit().unwrap();
    let committed = Instant::now();
    let limit = Duration::from_secs(60 + (a.keys as u64 * (a.latency_ms + 10)) / 1000);
    wait_drained(db, &ids, limit);
    let took = committed.elapsed().as_secs_f64();
    let bad = not_active(db, &ids);
    serde_json::json!({
        "seconds": took,
        "validations_per_s": a.keys as f64 / took,
        "active": a.keys as i64 - bad,
        "not_active": bad,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn trickle(a: &Args, db: &mut Client, seed: &mut u64) -> serde_json::Value {
    let stmt = db.prepare(add_key_sql()).unwrap();
    let every = Duration::from_secs_f64(1.0 / a.trickle_rate.max(1) as f64);
    let n = (a.trickle_rate * a.trickle_seconds) as usize;
    let mut ids = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let due = start + every * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let vendor = vendor_of(a, i);
        *seed += 1;
        let id: Uuid = db
            .query_one(
                &stmt,
                &[&Uuid::new_v4(), &vendor, &sample_key(vendor, *seed)],
            )
            .unwrap()
            .get(0);
        ids.push(id);
    }
    wait_drained(db, &ids, Duration::from_secs(60));
    let mut ms: Vec<f64> = db
        .query(
            "SELECT extract(epoch FROM checked_at - created_at)::float8 * 1000 FROM byok.keys
              WHERE id = ANY($1) AND status = 'active'",
            &[&ids],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    ms.sort_by(|x, y| x.total_cmp(y));
    serde_json::json!({
        "rate_per_s": a.trickle_rate,
        "seconds": a.trickle_seconds,
        "keys": n,
        "p50_ms": percentile(&ms, 50.0),
        "p99_ms": percentile(&ms, 99.0),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
        "not_active": not_active(db, &ids),
    })
}

/// The statements that took the most execution time, to stderr.
fn print_profile(db: &mut Client) {
    db.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .unwrap();
    let rows = db
        .query(
            "SELECT calls, round(total_exec_time)::float8, round((mean_exec_time * 1000)::numeric, 1)::float8,
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
               FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25",
            &[],
        )
        .unwrap();
    eprintln!("profile: calls, total ms, mean µs, statement");
    for r in rows {
        eprintln!(
            "profile: {:>8} {:>8} {:>9} {}",
            r.get::<_, i64>(0),
            r.get::<_, f64>(1),
            r.get::<_, f64>(2),
            r.get::<_, String>(3)
        );
    }
}

/// Peak resident set size of `pid`, kB (VmHWM).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let a = parse_args();
    let root = a.extension_dir.as_deref().map(private_root);
    // The harness turns fsync off for speed; a benchmark measures commits.
    let mut conf = vec!["fsync = on".to_owned()];
    if a.profile {
        conf.extend([
            "shared_preload_libraries = 'pg_byok,pg_stat_statements'".to_owned(),
            "pg_stat_statements.track = all".to_owned(),
        ]);
    }
    let c = Cluster::start(ClusterOptions {
        extra_conf: conf,
        pg_bin_dir: root.as_ref().map(|r| r.bin_dir().to_path_buf()),
        ..Default::default()
    });
    let mut db = c.client();
    db.batch_execute("CREATE ROLE sidecar LOGIN; GRANT byok_worker TO sidecar;")
        .unwrap();
    let (mock, mock_addr) = start_mock(&a);
    let mock = Children(vec![mock]);
    let logs = c.dir().join("bench-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let sidecars = Children(start_sidecars(&a, &c, &mock_addr, &logs));
    // Connected and listening before the first commit (a NOTIFY sent before
    // LISTEN would leave the start to the poll interval).
    let start = Instant::now();
    loop {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'sidecar' AND application_name = 'byok-sidecar'",
                &[],
            )
            .unwrap()
            .get(0);
        if n >= a.sidecars as i64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "sidecars did not connect; logs in {}",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));

    let mut seed = 0u64;
    eprintln!(
        "drain: {} keys, {} sidecar(s), vendor latency {} ms",
        a.keys, a.sidecars, a.latency_ms
    );
    let drained = drain(&a, &mut db, &mut seed);
    eprintln!("drain: {drained}");
    if a.profile {
        print_profile(&mut db);
    }
    let trickled = if a.trickle_seconds > 0 {
        // The drain's one big transaction leaves work behind (autovacuum of
        // the 5,000 updated keys, dirty buffers): done first, so the
        // trickle measures a lone add's latency, not that aftermath.
        // (Two statements: VACUUM cannot run in a multi-statement string.)
        db.batch_execute("VACUUM ANALYZE").unwrap();
        db.batch_execute("CHECKPOINT").unwrap();
        eprintln!(
            "trickle: {} adds/s for {} s",
            a.trickle_rate, a.trickle_seconds
        );
        let t = trickle(&a, &mut db, &mut seed);
        eprintln!("trickle: {t}");
        t
    } else {
        serde_json::Value::Null
    };
    let rss: Vec<u64> = sidecars.0.iter().map(|s| peak_rss_kb(s.id())).collect();
    let peak_in_flight = mock_stats(&mock_addr)["peak_in_flight"]
        .as_u64()
        .unwrap_or(0);
    drop(sidecars);
    drop(mock);
    let out = serde_json::json!({
        "bench": "pipeline",
        "keys": a.keys,
        "sidecars": a.sidecars,
        "latency_ms": a.latency_ms,
        "vendor": a.vendor,
        "sidecar_args": a.sidecar_args,
        "drain": drained,
        "trickle": trickled,
        "sidecar_peak_rss_kb_max": rss.iter().max().copied().unwrap_or(0),
        "sidecar_peak_rss_kb": rss,
        "mock_peak_in_flight": peak_in_flight,
    });
    println!("{out}");
}
