//! Key lifecycle (issue 2), the stored ciphertext: bound to its row (a
//! flipped byte or a moved ciphertext fails XX001) and never the plaintext
//! on disk.

mod common;

use byok_integration::postgres::Client;
use byok_integration::{grep_dir, sample_key};
use common::lifecycle::*;
use common::*;
use uuid::Uuid;

#[test]
fn flipped_ciphertext_byte_fails_xx001_at_every_position() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let key = sample_key("anthropic", 501);
    let info = add_active(&c, ws, "anthropic", &key);
    let mut db = c.client();
    let len: i32 = db
        .query_one(
            "SELECT length(ciphertext) FROM byok.keys WHERE id = $1",
            &[&info.id],
        )
        .unwrap()
        .get(0);
    assert!(len > key.len() as i32, "ciphertext length {len}");
    for n in 0..len {
        for mask_bit in [1i32, 0x80] {
            let mut tx = db.transaction().unwrap();
            let updated = tx
                .execute(
                    "UPDATE byok.keys SET ciphertext = set_byte(ciphertext, $2, get_byte(ciphertext, $2) # $3) WHERE id = $1",
                    &[&info.id, &n, &mask_bit],
                )
                .unwrap();
            assert_eq!(updated, 1);
            let e = expect_state(
                use_key(&mut tx, ws, "anthropic"),
                "XX001",
                &format!("byte {n} xor {mask_bit}"),
            );
            assert_no_key_material(&error_text(&e), &[&key], "the XX001 error");
            tx.rollback().unwrap();
        }
    }
    // Untampered, it still opens: the failures above came from the flips.
    assert_eq!(use_key(&mut db, ws, "anthropic").unwrap(), key);
}

#[test]
fn ciphertext_moved_to_another_row_fails_xx001() {
    let c = cluster();
    let ws1 = Uuid::new_v4();
    let ws2 = Uuid::new_v4();
    let k1 = sample_key("anthropic", 601);
    let k2 = sample_key("anthropic", 602);
    let k3 = sample_key("openai", 603);
    let a = add_active(&c, ws1, "anthropic", &k1);
    let b = add_active(&c, ws2, "anthropic", &k2);
    let o = add_active(&c, ws1, "openai", &k3);
    let mut db = c.client();

    // Copy one row's ciphertext onto another, inside a rolled-back
    // transaction: opening the target must fail authentication.
    let moved_fails = |db: &mut Client,
                       from: Uuid,
                       to: Uuid,
                       ws: Uuid,
                       vendor: &str,
                       what: &str| {
        let mut tx = db.transaction().unwrap();
        tx.execute(
            "UPDATE byok.keys SET ciphertext = (SELECT ciphertext FROM byok.keys WHERE id = $2) WHERE id = $1",
            &[&to, &from],
        )
        .unwrap();
        expect_state(use_key(&mut tx, ws, vendor), "XX001", what);
        tx.rollback().unwrap();
    };
    moved_fails(
        &mut db,
        b.id,
        a.id,
        ws1,
        "anthropic",
        "ciphertext from another workspace",
    );
    moved_fails(
        &mut db,
        o.id,
        a.id,
        ws1,
        "anthropic",
        "ciphertext from the other vendor's row",
    );

    // Swap two rows' ciphertexts: both fail.
    let mut tx = db.transaction().unwrap();
    tx.batch_execute(&format!(
        "UPDATE byok.keys k SET ciphertext = s.ct FROM (VALUES ('{a}'::uuid, (SELECT ciphertext FROM byok.keys WHERE id = '{b}')), \
                                                           ('{b}'::uuid, (SELECT ciphertext FROM byok.keys WHERE id = '{a}'))) s(id, ct) \
          WHERE k.id = s.id",
        a = a.id,
        b = b.id
    ))
    .unwrap();
    expect_state(
        use_key(&mut tx, ws1, "anthropic"),
        "XX001",
        "swapped ciphertext (ws1)",
    );
    tx.rollback().unwrap();
    moved_fails(
        &mut db,
        a.id,
        b.id,
        ws2,
        "anthropic",
        "ciphertext moved into ws2",
    );

    // Each row, as stored, opens to its own key.
    assert_eq!(use_key(&mut db, ws1, "anthropic").unwrap(), k1);
    assert_eq!(use_key(&mut db, ws2, "anthropic").unwrap(), k2);
    assert_eq!(use_key(&mut db, ws1, "openai").unwrap(), k3);
}

#[test]
fn no_plaintext_key_on_disk_after_checkpoint() {
    let c = cluster();
    let ws = Uuid::new_v4();
    let keys = [
        sample_key("anthropic", 901),
        sample_key("openai", 902),
        sample_key("anthropic", 903),
    ];
    // Active, used, rotated (revoked) and invalid keys, plus a pending one.
    add_active(&c, ws, "anthropic", &format!("  {}\r\n", keys[0]));
    add_active(&c, ws, "openai", &keys[1]);
    let mut db = c.client();
    assert_eq!(use_key(&mut db, ws, "anthropic").unwrap(), keys[0]);
    assert_eq!(
        use_key(&mut c.client_as("backend"), ws, "openai").unwrap(),
        keys[1]
    );
    add_active(&c, ws, "anthropic", &keys[2]); // rotates keys[0] out
    let invalid_key = sample_key("openai", 904);
    add_key(&mut db, Uuid::new_v4(), "openai", &invalid_key, None).unwrap();
    let mut w = c.client_as("sidecar");
    for cl in claim_jobs(&mut w, "s", 16, 60).unwrap() {
        finish_job(
            &mut w,
            cl.job_id,
            cl.lease_token,
            "invalid",
            None,
            Some(401),
            None,
        )
        .unwrap();
    }
    let pending_key = sample_key("anthropic", 905);
    add_key(
        &mut db,
        Uuid::new_v4(),
        "anthropic",
        &pending_key,
        Some("pending"),
    )
    .unwrap();
    // A control value that does go through a table: the scan must see it.
    let marker = format!("control-marker-{}", Uuid::new_v4().simple());
    db.execute("CREATE TABLE public.control(v text)", &[])
        .unwrap();
    db.execute("INSERT INTO public.control VALUES ($1)", &[&marker])
        .unwrap();
    db.batch_execute("CHECKPOINT").unwrap();

    let control_hits = grep_dir(c.data_dir(), marker.as_bytes());
    assert!(
        control_hits
            .iter()
            .any(|p| p.starts_with(c.data_dir().join("pg_wal"))),
        "scan sees the WAL: {control_hits:?}"
    );
    assert!(
        control_hits
            .iter()
            .any(|p| p.starts_with(c.data_dir().join("base"))),
        "scan sees the heap: {control_hits:?}"
    );

    for key in keys.iter().chain([&invalid_key, &pending_key]) {
        let hits = grep_dir(c.data_dir(), key.as_bytes());
        assert!(
            hits.is_empty(),
            "plaintext key {} found in {hits:?}",
            mask(key)
        );
        // Nor its body without the prefix.
        let body = &key[key.len() - 60..];
        let hits = grep_dir(c.data_dir(), body.as_bytes());
        assert!(hits.is_empty(), "key body {} found in {hits:?}", mask(key));
    }
    let log = c.server_log();
    assert_no_key_material(
        &log,
        &[&keys[0], &keys[1], &keys[2], &invalid_key, &pending_key],
        "the server log",
    );
}
