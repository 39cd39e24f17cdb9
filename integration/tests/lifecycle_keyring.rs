//! Key lifecycle (issue 2), the keyring across restarts: another master
//! key, a missing version, no master key at all, a world-readable keyring.

mod common;

use byok_integration::{random_master_key_hex, sample_key, ClusterOptions};
use common::lifecycle::*;
use common::*;
use uuid::Uuid;

/// True when `text` names `version` as a number of its own (not inside a
/// longer run of hex digits, such as a uuid).
fn names_version(text: &str, version: &str) -> bool {
    text.match_indices(version).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + version.len()..].chars().next();
        !before.is_some_and(|ch| ch.is_ascii_alphanumeric())
            && !after.is_some_and(|ch| ch.is_ascii_alphanumeric())
    })
}

#[test]
fn names_version_helper() {
    assert!(names_version(
        "master key version 90817 is missing",
        "90817"
    ));
    assert!(names_version("version 90817.", "90817"));
    assert!(!names_version("id a90817b", "90817"));
    assert!(!names_version("908170", "90817"));
}

#[test]
fn other_master_key_or_missing_version_gives_55000_and_listing_still_works() {
    let v1_hex = random_master_key_hex();
    let mut c = cluster_with(ClusterOptions {
        keyring: Some(format!("# test keyring\n90817 {v1_hex}\n")),
        ..Default::default()
    });
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 701);
    let info = add_active(&c, ws, "anthropic", &key);
    let pending = add_key(
        &mut c.client(),
        ws,
        "openai",
        &sample_key("openai", 702),
        Some("pending one"),
    )
    .unwrap();
    assert_eq!(use_key(&mut c.client(), ws, "anthropic").unwrap(), key);

    // Same version number, different key material.
    c.set_keyring(&format!("90817 {}\n", random_master_key_hex()));
    c.restart();
    let listed = list_keys(&mut c.client(), ws)
        .unwrap_or_else(|e| c.fail("list_keys under another master key", &e));
    assert_eq!(listed.len(), 2);
    let a = listed.iter().find(|k| k.id == info.id).unwrap();
    assert_eq!(
        (a.status.as_str(), a.masked.as_str()),
        ("active", mask(&key).as_str())
    );
    assert_eq!(
        listed.iter().find(|k| k.id == pending.id).unwrap().status,
        "pending"
    );
    let e = expect_state(
        use_key(&mut c.client(), ws, "anthropic"),
        "55000",
        "use_key under another master key",
    );
    assert_no_key_material(&error_text(&e), &[&key], "55000 error");
    let e = expect_state(
        use_key(&mut c.client_as("backend"), ws, "anthropic"),
        "55000",
        "consumer, other master key",
    );
    assert_no_key_material(&error_text(&e), &[&key], "55000 error");

    // A keyring without version 90817 at all: 55000 naming the version.
    c.set_keyring(&format!("90818 {}\n", random_master_key_hex()));
    c.restart();
    assert_eq!(list_keys(&mut c.client(), ws).unwrap().len(), 2);
    let e = expect_state(
        use_key(&mut c.client(), ws, "anthropic"),
        "55000",
        "use_key with the version missing",
    );
    assert!(
        names_version(&error_text(&e), "90817"),
        "the error names the missing version 90817: {}",
        error_text(&e)
    );
    // A queued key needing the absent version does not block the queue: the
    // claim succeeds without it, its attempt is not spent, it stays pending.
    let attempts_before = count(
        &mut c.client(),
        &format!(
            "SELECT attempts::bigint FROM byok.jobs WHERE key_id = '{}'",
            pending.id
        ),
    );
    let claimed = claim_jobs(&mut c.client_as("sidecar"), "sidecar-1", 16, 60)
        .unwrap_or_else(|e| c.fail("claim_jobs with a version missing", &e));
    assert!(
        claimed.is_empty(),
        "the undecryptable job is not handed out: {claimed:?}"
    );
    assert_eq!(
        count(
            &mut c.client(),
            &format!(
                "SELECT attempts::bigint FROM byok.jobs WHERE key_id = '{}' AND run_after > now()",
                pending.id
            )
        ),
        attempts_before,
        "the job is deferred with its attempt count unchanged"
    );
    assert_eq!(key_by_id(&mut c.client(), ws, pending.id).status, "pending");
    c.client()
        .execute("UPDATE byok.jobs SET run_after = now()", &[])
        .unwrap();

    // Both versions present: old keys decrypt again; new keys are sealed
    // under the highest version (the primary) and decrypt too.
    c.set_keyring(&format!("90817 {v1_hex}\n{}", c.keyring_text()));
    c.restart();
    assert_eq!(use_key(&mut c.client(), ws, "anthropic").unwrap(), key);
    let ws2 = Uuid::new_v4();
    let key2 = sample_key("anthropic", 703);
    add_active(&c, ws2, "anthropic", &key2); // also validates the old pending key
    assert_eq!(key_by_id(&mut c.client(), ws, pending.id).status, "active");
    assert_eq!(use_key(&mut c.client(), ws2, "anthropic").unwrap(), key2);
    assert!(
        !c.server_log().contains(&key) && !c.server_log().contains(&key2),
        "no key in the server log"
    );
}

#[test]
fn no_master_key_at_all_gives_55000() {
    // Started with BYOK_MASTER_KEY only, then restarted with neither it nor a file.
    let mk = random_master_key_hex();
    let mut c = cluster_with(ClusterOptions {
        master_key_env: Some(mk.clone()),
        ..Default::default()
    });
    let ws = Uuid::new_v4();
    let key = sample_key("openai", 801);
    add_active(&c, ws, "openai", &key);
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "openai").unwrap(),
        key,
        "BYOK_MASTER_KEY works"
    );
    // The master key is not readable from SQL, not even by a superuser.
    let mut db = c.client();
    let settings: Vec<String> = db
        .query(
            "SELECT coalesce(setting, '') || ' ' || coalesce(reset_val, '') FROM pg_settings",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !settings.iter().any(|s| s.contains(&mk)),
        "master key visible in pg_settings"
    );
    // Nor in any server process's environment, as /proc shows it.
    let backend: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let pid_file = std::fs::read_to_string(c.data_dir().join("postmaster.pid")).unwrap();
    let postmaster = pid_file.lines().next().unwrap().trim().to_string();
    for pid in [postmaster, backend.to_string()] {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            !environ.windows(mk.len()).any(|w| w == mk.as_bytes()),
            "BYOK_MASTER_KEY still in /proc/{pid}/environ"
        );
    }
    drop(db);

    c.set_master_key_env(None);
    c.restart();
    let mut db = c.client();
    assert_eq!(
        list_keys(&mut db, ws).unwrap().len(),
        1,
        "listing works without a master key"
    );
    expect_state(
        use_key(&mut db, ws, "openai"),
        "55000",
        "use_key without a master key",
    );
    let e = expect_state(
        add_key(
            &mut db,
            Uuid::new_v4(),
            "anthropic",
            &sample_key("anthropic", 802),
            None,
        ),
        "55000",
        "add_key without a master key",
    );
    assert_no_key_material(
        &error_text(&e),
        &[&sample_key("anthropic", 802)],
        "55000 error",
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM byok.keys"),
        1,
        "the refused add left no row"
    );
    drop(db);

    // And the key comes back with the master key.
    c.set_master_key_env(Some(mk));
    c.restart();
    assert_eq!(use_key(&mut c.client(), ws, "openai").unwrap(), key);
}

#[test]
fn world_readable_keyring_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = cluster();
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 851);
    add_active(&c, ws, "anthropic", &key);
    c.stop();
    std::fs::set_permissions(c.keyring_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    match c.try_start_again() {
        // Refusing to start is a clear refusal if the log says why.
        Err(msg) => assert!(
            msg.contains(&c.keyring_path().to_string_lossy().to_string())
                || msg.to_lowercase().contains("readable"),
            "the refusal names the file or the permission problem: {msg}"
        ),
        // Starting is fine too, but then the key must not be used.
        Ok(()) => {
            let e = expect_state(
                use_key(&mut c.client(), ws, "anthropic"),
                "55000",
                "use_key with a world-readable keyring",
            );
            let t = error_text(&e).to_lowercase();
            assert!(
                t.contains("readable") || t.contains("permission") || t.contains("mode"),
                "clear error: {t}"
            );
            c.stop();
        }
    }
    std::fs::set_permissions(c.keyring_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    c.start_again();
    assert_eq!(use_key(&mut c.client(), ws, "anthropic").unwrap(), key);
}
