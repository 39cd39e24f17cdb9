//! Envelope decision rules, one example each.

use byok_core::envelope::{header_version, open, seal, Aad, FORMAT_V1};
use byok_core::keyring::{generate_hex_key, Keyring};
use byok_core::{CoreError, ErrorKind, Vendor};

const AAD: Aad = Aad {
    key_id: [1; 16],
    workspace_id: [2; 16],
    vendor: Vendor::Anthropic,
};

fn ring(lines: &[(u32, &str)]) -> Keyring {
    let text: String = lines.iter().map(|(v, k)| format!("{v} {k}\n")).collect();
    Keyring::parse_file(&text).unwrap()
}

#[test]
fn round_trip_and_layout() {
    let k = generate_hex_key();
    let keyring = ring(&[(1, &k), (5, &generate_hex_key())]);
    let blob = seal(&keyring, &AAD, b"sk-secret").unwrap();
    assert_eq!(blob[0], FORMAT_V1);
    assert_eq!(header_version(&blob).unwrap(), 5);
    assert_eq!(&blob[5..21], &keyring.get(5).unwrap().fingerprint());
    assert_eq!(blob.len(), 21 + 12 + 9 + 16);
    assert_eq!(&**open(&keyring, &AAD, &blob).unwrap(), b"sk-secret");
}

#[test]
fn nonces_are_fresh() {
    let keyring = Keyring::from_env_value(&generate_hex_key()).unwrap();
    assert_ne!(
        seal(&keyring, &AAD, b"x").unwrap(),
        seal(&keyring, &AAD, b"x").unwrap()
    );
}

#[test]
fn old_versions_still_open_after_rotation() {
    let (k1, k2) = (generate_hex_key(), generate_hex_key());
    let blob = seal(&ring(&[(1, &k1)]), &AAD, b"old").unwrap();
    let rotated = ring(&[(1, &k1), (2, &k2)]);
    assert_eq!(&**open(&rotated, &AAD, &blob).unwrap(), b"old");
    assert_eq!(header_version(&blob).unwrap(), 1);
}

#[test]
fn short_or_unknown_format_is_tampered() {
    let keyring = Keyring::from_env_value(&generate_hex_key()).unwrap();
    let blob = seal(&keyring, &AAD, b"").unwrap();
    assert_eq!(blob.len(), 49);
    assert_eq!(&**open(&keyring, &AAD, &blob).unwrap(), b"");
    for short in [&blob[..0], &blob[..21], &blob[..48]] {
        assert_eq!(
            open(&keyring, &AAD, short).unwrap_err().kind(),
            ErrorKind::Tampered
        );
        assert!(header_version(short).is_err());
    }
    let mut v2 = blob.clone();
    v2[0] = 2;
    assert!(matches!(
        open(&keyring, &AAD, &v2),
        Err(CoreError::Tampered { .. })
    ));
}

#[test]
fn restart_with_another_key_of_the_same_version_is_a_mismatch() {
    let blob = seal(
        &Keyring::from_env_value(&generate_hex_key()).unwrap(),
        &AAD,
        b"k",
    )
    .unwrap();
    let other = Keyring::from_env_value(&generate_hex_key()).unwrap();
    let err = open(&other, &AAD, &blob).unwrap_err();
    assert!(
        matches!(err, CoreError::MasterKeyMismatch { version: 1 }),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::MasterKeyUnavailable);
    assert_eq!(
        err.to_string(),
        "the master key loaded as version 1 is not the one that encrypted this key"
    );
    assert!(err.hint().unwrap().contains("BYOK_MASTER_KEY"));
}

#[test]
fn missing_version_names_it() {
    let blob = seal(&ring(&[(3, &generate_hex_key())]), &AAD, b"k").unwrap();
    let err = open(&ring(&[(1, &generate_hex_key())]), &AAD, &blob).unwrap_err();
    assert!(
        matches!(err, CoreError::MasterKeyMissing { version: 3 }),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::MasterKeyUnavailable);
    assert!(err.to_string().contains("version 3"));
    assert!(err.hint().unwrap().contains("keyring file"));
}

#[test]
fn edited_version_field_is_tampered_not_missing() {
    let (k1, k2) = (generate_hex_key(), generate_hex_key());
    let keyring = ring(&[(1, &k1), (2, &k2)]);
    let blob = seal(&keyring, &AAD, b"k").unwrap();
    for version in [1u32, 9] {
        let mut edited = blob.clone();
        edited[1..5].copy_from_slice(&version.to_be_bytes());
        let err = open(&keyring, &AAD, &edited).unwrap_err();
        assert!(
            matches!(err, CoreError::Tampered { .. }),
            "{version}: {err}"
        );
    }
}

#[test]
fn moved_to_another_row_is_tampered() {
    let keyring = Keyring::from_env_value(&generate_hex_key()).unwrap();
    let blob = seal(&keyring, &AAD, b"k").unwrap();
    let err = open(
        &keyring,
        &Aad {
            key_id: [9; 16],
            ..AAD
        },
        &blob,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tampered);
    assert!(err.to_string().contains("moved to another row"));
    assert!(err.detail().is_some());
}
