//! The harness itself, on a plain cluster (no extension needed): start,
//! connect, psql, restart, keyring file, leak scan, cleanup.

use byok_integration::{grep_dir, Cluster, ClusterOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

fn plain() -> ClusterOptions {
    ClusterOptions {
        preload: false,
        create_extension: false,
        ..Default::default()
    }
}

#[test]
fn plain_cluster_lifecycle() {
    let mut c = Cluster::start(plain());
    let dir = c.dir().to_path_buf();
    assert!(c.data_dir().join("PG_VERSION").exists());

    // keyring: 0600, one "1 <64 hex>" line, configured
    let meta = std::fs::metadata(c.keyring_path()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let postgres_uid = std::fs::metadata(c.data_dir()).unwrap().uid();
    assert_eq!(
        meta.uid(),
        postgres_uid,
        "keyring owned by the server's OS user"
    );
    let kr = c.keyring_text();
    let parts: Vec<&str> = kr.split_whitespace().collect();
    assert_eq!(parts.len(), 2, "{kr:?}");
    assert_eq!(parts[0], "1");
    assert_eq!(parts[1].len(), 64);

    let mut db = c.client();
    let row = db
        .query_one(
            "SELECT current_user::text, current_database()::text, current_setting('port')",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");
    assert_eq!(row.get::<_, String>(1), "byok");
    assert_eq!(row.get::<_, String>(2), c.port().to_string());
    let mkf: String = db
        .query_one("SELECT current_setting('byok.master_key_file', true)", &[])
        .unwrap()
        .get(0);
    assert_eq!(mkf, c.keyring_path().to_string_lossy());

    // a LOGIN role
    db.batch_execute("CREATE ROLE tester LOGIN").unwrap();
    let mut t = c.client_as("tester");
    let who: String = t
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, "tester");
    assert!(c.try_client_as("nobody_here").is_err());
    assert_eq!(
        c.url_as("tester"),
        format!("postgres://tester@127.0.0.1:{}/byok", c.port())
    );

    // psql
    assert_eq!(c.psql_tuples("SELECT 40 + 2"), "42");
    assert!(c.psql("SELECT 'hello' AS greeting").contains("hello"));

    // leak scan finds a marker after CHECKPOINT, and only where it is
    let marker = "harness-marker-7f3a9c";
    db.batch_execute(&format!(
        "CREATE TABLE t(x text); INSERT INTO t VALUES ('{marker}'); CHECKPOINT"
    ))
    .unwrap();
    let hits = grep_dir(c.data_dir(), marker.as_bytes());
    assert!(
        hits.iter()
            .any(|p| p.starts_with(c.data_dir().join("base"))),
        "{hits:?}"
    );
    assert!(
        hits.iter()
            .any(|p| p.starts_with(c.data_dir().join("pg_wal"))),
        "{hits:?}"
    );
    drop((db, t));

    // restart keeps the data; stop/start_again too
    c.restart();
    let mut db = c.client();
    let x: String = db.query_one("SELECT x FROM t", &[]).unwrap().get(0);
    assert_eq!(x, marker);
    drop(db);
    c.stop();
    assert!(!c.is_running());
    c.start_again();
    assert!(c.is_running());

    // master key in the environment reaches the postmaster (visible to a superuser
    // through /proc of the postmaster only; here just check the server starts)
    c.set_keyring(
        "# comment\n2 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    );
    assert!(c.keyring_text().starts_with("# comment"));

    // pg_controldata as postgres
    let out = Cluster::run_as_postgres(
        Command::new(byok_integration::PG_BIN.to_string() + "/pg_controldata").arg(c.data_dir()),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("in production"));

    assert!(c
        .server_log()
        .contains("database system is ready to accept connections"));
    drop(c);
    assert!(!dir.exists(), "cluster dir removed on drop");
}

#[test]
fn master_key_env_without_file() {
    let c = Cluster::start(ClusterOptions {
        master_key_env: Some("ab".repeat(32)),
        ..plain()
    });
    assert!(!c.keyring_path().exists());
    let mut db = c.client();
    let mkf: Option<String> = db
        .query_one("SELECT current_setting('byok.master_key_file', true)", &[])
        .unwrap()
        .get(0);
    assert!(mkf.is_none() || mkf.as_deref() == Some(""), "{mkf:?}");
    // The postmaster's environment holds the variable (read through /proc as root or postgres).
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let _ = pid;
    let pm = std::fs::read_to_string(c.data_dir().join("postmaster.pid")).unwrap();
    let pm_pid = pm.lines().next().unwrap().trim();
    let env = std::fs::read(format!("/proc/{pm_pid}/environ")).unwrap();
    // The extension may remove it once read; without the extension it is still there.
    assert!(env
        .split(|&b| b == 0)
        .any(|kv| kv == format!("BYOK_MASTER_KEY={}", "ab".repeat(32)).as_bytes()));
}

#[test]
#[should_panic(expected = "server log tail")]
fn bad_config_panics_with_log() {
    let _c = Cluster::start(ClusterOptions {
        extra_conf: vec!["shared_buffers = 'nonsense'".into()],
        ..plain()
    });
}
