//! Issue 5: no key ever reaches the server log, a dump, the WAL, any file
//! of the cluster or the sidecar's output.
//!
//! One scenario ([`leak::scenario`], run once for this binary) hands keys
//! of both vendors to a cluster that logs everything, through every path
//! (literals, bound parameters, failing statements, utility statements,
//! the real sidecar, rotation, use, revocation) and collects every place a
//! key could land. Each test below searches one channel for each key and
//! for 20-character windows of it.
//!
//! The search proves itself: a control key planted in an ordinary table
//! must be found in the dumps, the WAL and the data files, and a control
//! key logged on purpose with `byok.redact_logs = off` must be found in the
//! stderr, csv and json logs; otherwise that channel's test fails.
//!
//! Run: `cargo test -p byok-integration --test leak_suite` (the extension
//! must be installed; the sidecar binary is used when built, required when
//! `CI` is set).

mod leak;

use byok_integration::collect::{files_with, wal_segments};
use byok_integration::{grep_dir, sample_key, Cluster, ClusterOptions};
use leak::{assert_no_problems, mask, scenario, simple_fails, Control};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// The server log files with extension `ext`; at least one must be non-empty.
fn server_logs(s: &leak::Scenario, ext: &str) -> Vec<PathBuf> {
    let dir = s.log_dir();
    let logs = files_with(&dir, |n| n.ends_with(&format!(".{ext}")));
    assert!(
        logs.iter().any(|f| fs::metadata(f).unwrap().len() > 0),
        "no .{ext} server log in {}",
        dir.display()
    );
    logs
}

fn paths(v: &[PathBuf]) -> Vec<&Path> {
    v.iter().map(PathBuf::as_path).collect()
}

#[test]
fn stderr_log_holds_no_key_but_its_masked_form() {
    let s = scenario();
    let logs = server_logs(&s, "log");
    let mut problems = s.problems("stderr log", &paths(&logs), &[Control::Log]);
    // The hook wrote the lines (masked), it did not drop them.
    let text: String = logs
        .iter()
        .map(|f| String::from_utf8_lossy(&fs::read(f).unwrap()).into_owned())
        .collect();
    let first = &s.protected[0].key;
    if !text.contains(&mask(first)) {
        problems.push(format!(
            "the masked form {} of the first key is not in the stderr log",
            mask(first)
        ));
    }
    if !text.contains("STATEMENT (redacted):") {
        problems.push("no redacted STATEMENT was logged".into());
    }
    assert_no_problems(&s, problems);
}

#[test]
fn csv_log_holds_no_key() {
    let s = scenario();
    let logs = server_logs(&s, "csv");
    assert_no_problems(&s, s.problems("csv log", &paths(&logs), &[Control::Log]));
}

#[test]
fn json_log_holds_no_key() {
    let s = scenario();
    let logs = server_logs(&s, "json");
    assert_no_problems(&s, s.problems("json log", &paths(&logs), &[Control::Log]));
}

/// The view's query texts before shutdown and the files it keeps them in.
#[test]
fn pg_stat_statements_holds_no_key() {
    let s = scenario();
    assert!(
        s.pgss.iter().any(|q| q.contains("byok.add_key")),
        "pg_stat_statements tracked the adds"
    );
    let data = s.cluster.data_dir();
    let view = s.artifacts.join("pg_stat_statements.txt");
    let (stat, stat_tmp) = (data.join("pg_stat"), data.join("pg_stat_tmp"));
    assert!(
        files_with(&stat, |n| n.starts_with("pg_stat_statements")).len() == 1,
        "pg_stat_statements wrote no file at shutdown in {}",
        stat.display()
    );
    assert_no_problems(
        &s,
        s.problems("pg_stat_statements", &[&view, &stat, &stat_tmp], &[]),
    );
}

/// pg_dump (plain, custom uncompressed, custom compressed and its
/// pg_restore) and pg_dumpall.
#[test]
fn dumps_hold_no_key() {
    let s = scenario();
    let mut problems = Vec::new();
    for (place, file, expect) in [
        ("pg_dump plain", "pg_dump.sql", &[Control::Table][..]),
        ("pg_dump custom -Z0", "pg_dump-z0.custom", &[Control::Table]),
        ("pg_dump custom", "pg_dump.custom", &[]),
        (
            "pg_restore of pg_dump custom",
            "pg_restore-of-custom.sql",
            &[Control::Table],
        ),
        ("pg_dumpall", "pg_dumpall.sql", &[]),
    ] {
        problems.extend(s.problems(place, &[&s.artifacts.join(file)], expect));
    }
    assert_no_problems(&s, problems);
}

/// The raw WAL segments and pg_waldump's decoding of each.
#[test]
fn wal_holds_no_key() {
    let s = scenario();
    assert!(
        s.wal_records > 100,
        "pg_waldump decoded only {} records",
        s.wal_records
    );
    let segments = wal_segments(&s.cluster);
    let mut problems = s.problems("WAL segment", &paths(&segments), &[Control::Table]);
    let decoded = files_with(&s.artifacts, |n| n.starts_with("pg_waldump-"));
    assert_eq!(
        decoded.len(),
        segments.len(),
        "one pg_waldump output per segment"
    );
    problems.extend(s.problems("pg_waldump output", &paths(&decoded), &[]));
    assert_no_problems(&s, problems);
}

/// Table and index files of every database, and the shared catalogs.
#[test]
fn data_files_hold_no_key() {
    let s = scenario();
    let data = s.cluster.data_dir();
    let mut problems = s.problems(
        "data file",
        &[&data.join("base"), &data.join("global")],
        &[Control::Table],
    );
    // The harness's own search must agree on the planted control.
    if grep_dir(&data.join("base"), s.ctl_table.as_bytes()).is_empty() {
        problems.push("grep_dir did not find the planted control key in data/base".into());
    }
    assert_no_problems(&s, problems);
}

/// The sidecar's and its mock vendor's stdout and stderr.
#[test]
fn sidecar_output_holds_no_key() {
    let s = scenario();
    let out = s.artifacts.join("sidecar-output.txt");
    assert_no_problems(&s, s.problems("sidecar output", &[&out], &[]));
}

/// Everything else: the whole cluster directory (data directory, the
/// harness's server log, keyring) and every artifact, in one pass.
#[test]
fn no_key_anywhere_in_the_cluster_directory_or_artifacts() {
    let s = scenario();
    let problems = s.problems("anywhere", &[s.cluster.dir(), &s.artifacts], &[]);
    eprintln!(
        "leak suite: {} protected keys searched in the cluster directory and the artifacts; \
         scenario started {:.1?} ago",
        s.protected.len(),
        s.started.elapsed()
    );
    assert_no_problems(&s, problems);
}

/// A key broken by whitespace (a wrapped copy-paste) is refused by add_key,
/// and both halves must still be masked in the log: the part after the
/// break does not start with `sk-` (byok-core masks long bare stretches and
/// stretches right after a masked one).
#[test]
fn key_broken_by_whitespace_is_masked_whole() {
    let c = Cluster::start(ClusterOptions {
        extra_conf: vec![
            "log_statement = 'all'".into(),
            "log_min_error_statement = error".into(),
        ],
        ..Default::default()
    });
    let mut db = c.client();
    let k = sample_key("openai", rand::random::<u32>() as u64);
    let (a, b) = k.split_at(k.len() / 2);
    for sep in [" ", "\\n"] {
        simple_fails(
            &mut db,
            &format!(
                "SELECT byok.add_key('{}', 'openai', E'{a}{sep}{b}')",
                Uuid::new_v4()
            ),
            "22023",
        );
    }
    db.batch_execute("SELECT 'flush'").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = c.server_log();
    let tail = &b[b.len() - 24..b.len() - 4];
    assert!(
        !log.contains(tail),
        "the second half of a whitespace-broken key reached the log"
    );
}
