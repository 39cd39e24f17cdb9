//! Collectors for the leak suite: every place a key could land, written
//! out as files to search (dumps, decoded WAL) or listed (server logs,
//! WAL segments). Each panics when its tool fails, so a search never
//! passes by not looking.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::pg_bin;
use crate::Cluster;

/// libpq connection arguments (`-h socket-dir -p port -U postgres`).
pub fn conn_args(c: &Cluster) -> Vec<String> {
    vec![
        "-h".into(),
        c.dir().to_string_lossy().into_owned(),
        "-p".into(),
        c.port().to_string(),
        "-U".into(),
        "postgres".into(),
    ]
}

/// Run a Postgres client tool as the postgres OS user; its stdout, or a
/// panic naming `what` with its stderr.
pub fn run_pg_tool(what: &str, cmd: &mut Command) -> Vec<u8> {
    let out = Cluster::run_as_postgres(cmd);
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The regular entries of `dir` whose file name satisfies `pred`, sorted.
pub fn files_with(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    v.sort();
    v
}

/// The dumps of database `byok` (and the cluster) a leak could reach, as
/// files in `out_dir`: `pg_dump.sql` (plain), `pg_dump-z0.custom` (custom,
/// uncompressed), `pg_dump.custom` (custom, compressed),
/// `pg_restore-of-custom.sql` (that one restored to SQL) and
/// `pg_dumpall.sql`. `out_dir` must be readable by the postgres OS user.
pub fn dumps(c: &Cluster, out_dir: &Path) {
    let conn = conn_args(c);
    let dump = |what: &str, extra: &[&str], file: &str| {
        let bytes = run_pg_tool(
            what,
            Command::new(pg_bin("pg_dump"))
                .args(&conn)
                .args(["-d", "byok"])
                .args(extra),
        );
        let path = out_dir.join(file);
        fs::write(&path, &bytes).unwrap();
        path
    };
    dump("pg_dump plain", &[], "pg_dump.sql");
    dump("pg_dump custom -Z0", &["-Fc", "-Z0"], "pg_dump-z0.custom");
    let custom_path = dump("pg_dump custom", &["-Fc"], "pg_dump.custom");
    fs::set_permissions(&custom_path, fs::Permissions::from_mode(0o644)).unwrap();
    let restored = run_pg_tool(
        "pg_restore",
        Command::new(pg_bin("pg_restore"))
            .args(["-f", "-"])
            .arg(&custom_path),
    );
    fs::write(out_dir.join("pg_restore-of-custom.sql"), &restored).unwrap();
    let all = run_pg_tool("pg_dumpall", Command::new(pg_bin("pg_dumpall")).args(&conn));
    fs::write(out_dir.join("pg_dumpall.sql"), &all).unwrap();
}

/// The WAL segment files of a (stopped) cluster.
pub fn wal_segments(c: &Cluster) -> Vec<PathBuf> {
    files_with(&c.data_dir().join("pg_wal"), |n| {
        n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// `pg_waldump` of every WAL segment into `out_dir/pg_waldump-<segment>.txt`
/// (stdout and stderr); returns the number of records decoded.
pub fn waldump_all(c: &Cluster, out_dir: &Path) -> usize {
    let mut records = 0;
    for seg in wal_segments(c) {
        let out = Cluster::run_as_postgres(Command::new(pg_bin("pg_waldump")).arg(&seg));
        // The last (and any recycled) segment ends in an invalid record:
        // pg_waldump then exits non-zero after printing what it read.
        records += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("rmgr:"))
            .count();
        let name = seg.file_name().unwrap().to_string_lossy().into_owned();
        let mut text = out.stdout.clone();
        text.extend_from_slice(&out.stderr);
        fs::write(out_dir.join(format!("pg_waldump-{name}.txt")), text).unwrap();
    }
    records
}
