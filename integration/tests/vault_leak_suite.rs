//! The leak suite (leak_suite.rs, issue 5) with every key stored in
//! Supabase Vault (issue 10): the same scenario (literals, bound
//! parameters, failing statements, the real sidecar, rotation, use,
//! revocation, the controls) on a cluster with `byok.storage = 'vault'`,
//! and the same channels searched: the server logs, pg_stat_statements,
//! the dumps (which now carry `vault.secrets`), the WAL and the data files.
//!
//! Needs supabase_vault installed; prints SKIPPED elsewhere. Run:
//! `cargo test -p byok-integration --test vault_leak_suite`.

mod leak;

use byok_integration::collect::{files_with, wal_segments};
use leak::{assert_no_problems, vault_scenario, Control, Scenario};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn scenario_or_skip() -> Option<Arc<Scenario>> {
    let s = vault_scenario();
    if s.is_none() {
        println!(
            "SKIPPED: supabase_vault is not installed on this machine \
             (build supabase/vault 0.3.x with PGXS to run this test)"
        );
    }
    s
}

fn server_logs(s: &Scenario, ext: &str) -> Vec<PathBuf> {
    let logs = files_with(&s.log_dir(), |n| n.ends_with(&format!(".{ext}")));
    assert!(
        logs.iter().any(|f| fs::metadata(f).unwrap().len() > 0),
        "no .{ext} server log"
    );
    logs
}

fn paths(v: &[PathBuf]) -> Vec<&Path> {
    v.iter().map(PathBuf::as_path).collect()
}

#[test]
fn vault_keys_reach_no_server_log() {
    let Some(s) = scenario_or_skip() else { return };
    let mut problems = Vec::new();
    for ext in ["log", "csv", "json"] {
        let logs = server_logs(&s, ext);
        problems.extend(s.problems(&format!("{ext} log"), &paths(&logs), &[Control::Log]));
    }
    assert_no_problems(&s, problems);
}

#[test]
fn vault_keys_reach_no_dump_and_vault_secrets_are_dumped() {
    let Some(s) = scenario_or_skip() else { return };
    let mut problems = Vec::new();
    for (place, file, expect) in [
        ("pg_dump plain", "pg_dump.sql", &[Control::Table][..]),
        ("pg_dump custom -Z0", "pg_dump-z0.custom", &[Control::Table]),
        ("pg_dumpall", "pg_dumpall.sql", &[]),
    ] {
        problems.extend(s.problems(place, &[&s.artifacts.join(file)], expect));
    }
    let plain = fs::read_to_string(s.artifacts.join("pg_dump.sql")).unwrap();
    if !plain.contains("byok/root-key-check") {
        problems
            .push("the plain dump does not carry vault.secrets (pg_byok's check secret)".into());
    }
    assert_no_problems(&s, problems);
}

#[test]
fn vault_keys_reach_no_wal_and_no_data_file() {
    let Some(s) = scenario_or_skip() else { return };
    let segments = wal_segments(&s.cluster);
    let mut problems = s.problems("WAL segment", &paths(&segments), &[Control::Table]);
    let decoded = files_with(&s.artifacts, |n| n.starts_with("pg_waldump-"));
    problems.extend(s.problems("pg_waldump output", &paths(&decoded), &[]));
    let data = s.cluster.data_dir();
    problems.extend(s.problems(
        "data file",
        &[&data.join("base"), &data.join("global")],
        &[Control::Table],
    ));
    assert_no_problems(&s, problems);
}

#[test]
fn vault_keys_reach_nothing_else() {
    let Some(s) = scenario_or_skip() else { return };
    assert!(
        s.pgss.iter().any(|q| q.contains("byok.add_key")) && s.wal_records > 100,
        "the scenario ran: pg_stat_statements tracked the adds, the WAL was decoded"
    );
    eprintln!(
        "vault leak suite: {} protected keys searched; scenario started {:.1?} ago",
        s.protected.len(),
        s.started.elapsed()
    );
    let view = s.artifacts.join("pg_stat_statements.txt");
    let mut problems = s.problems("pg_stat_statements", &[&view], &[]);
    problems.extend(s.problems("anywhere", &[s.cluster.dir(), &s.artifacts], &[]));
    assert_no_problems(&s, problems);
}
