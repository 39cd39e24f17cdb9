//! Property tests of the envelope: round trip, tamper evidence, key errors.

use byok_core::envelope::{open, seal, Aad};
use byok_core::keyring::Keyring;
use byok_core::{CoreError, ErrorKind, Vendor};
use proptest::prelude::*;

fn keyring_of(keys: &[(u32, [u8; 32])]) -> Keyring {
    let text: String = keys
        .iter()
        .map(|(v, k)| format!("{v} {}\n", hex::encode(k)))
        .collect();
    Keyring::parse_file(&text).unwrap()
}

fn any_aad() -> impl Strategy<Value = Aad> {
    (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        prop::sample::select(Vendor::ALL.to_vec()),
    )
        .prop_map(|(key_id, workspace_id, vendor)| Aad {
            key_id,
            workspace_id,
            vendor,
        })
}

/// 1 to 3 keys with distinct versions; the primary is the highest.
fn any_keyring_spec() -> impl Strategy<Value = Vec<(u32, [u8; 32])>> {
    prop::collection::btree_map(1u32..=u32::MAX, any::<[u8; 32]>(), 1..=3)
        .prop_map(|m| m.into_iter().collect())
}

fn plaintext() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..300)
}

proptest! {
    #[test]
    fn round_trip(spec in any_keyring_spec(), aad in any_aad(), msg in plaintext()) {
        let ring = keyring_of(&spec);
        let blob = seal(&ring, &aad, &msg).unwrap();
        prop_assert_eq!(&**open(&ring, &aad, &blob).unwrap(), &msg[..]);
    }

    #[test]
    fn any_single_flipped_byte_is_tampered(
        spec in any_keyring_spec(), aad in any_aad(), msg in plaintext(),
        index in any::<prop::sample::Index>(), flip in 1u8..=255,
    ) {
        let ring = keyring_of(&spec);
        let mut blob = seal(&ring, &aad, &msg).unwrap();
        let i = index.index(blob.len());
        blob[i] ^= flip;
        match open(&ring, &aad, &blob) {
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Tampered, "byte {}: {}", i, e),
            Ok(_) => prop_assert!(false, "flipped byte {} still opened", i),
        }
    }

    #[test]
    fn wrong_aad_is_tampered(
        spec in any_keyring_spec(), aad in any_aad(), other in any_aad(), msg in plaintext(),
    ) {
        prop_assume!(aad != other);
        let ring = keyring_of(&spec);
        let blob = seal(&ring, &aad, &msg).unwrap();
        let err = open(&ring, &other, &blob).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::Tampered);
        // Each field on its own, too.
        let vendor = if aad.vendor == Vendor::Anthropic { Vendor::OpenAi } else { Vendor::Anthropic };
        for changed in [
            Aad { key_id: other.key_id, ..aad },
            Aad { workspace_id: other.workspace_id, ..aad },
            Aad { vendor, ..aad },
        ] {
            if changed != aad {
                prop_assert_eq!(open(&ring, &changed, &blob).unwrap_err().kind(), ErrorKind::Tampered);
            }
        }
    }

    #[test]
    fn another_key_under_the_same_version_is_a_mismatch(
        version in 1u32..=u32::MAX, a in any::<[u8; 32]>(), b in any::<[u8; 32]>(),
        aad in any_aad(), msg in plaintext(),
    ) {
        prop_assume!(a != b);
        let blob = seal(&keyring_of(&[(version, a)]), &aad, &msg).unwrap();
        let err = open(&keyring_of(&[(version, b)]), &aad, &blob).unwrap_err();
        prop_assert!(matches!(err, CoreError::MasterKeyMismatch { version: v } if v == version), "{}", err);
        prop_assert_eq!(err.kind(), ErrorKind::MasterKeyUnavailable);
    }

    #[test]
    fn an_absent_version_is_missing(
        sealed_with in 1u32..=u32::MAX, loaded in 1u32..=u32::MAX,
        a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), aad in any_aad(), msg in plaintext(),
    ) {
        prop_assume!(sealed_with != loaded && a != b);
        let blob = seal(&keyring_of(&[(sealed_with, a)]), &aad, &msg).unwrap();
        let err = open(&keyring_of(&[(loaded, b)]), &aad, &blob).unwrap_err();
        prop_assert!(matches!(err, CoreError::MasterKeyMissing { version: v } if v == sealed_with), "{}", err);
        prop_assert_eq!(err.kind(), ErrorKind::MasterKeyUnavailable);
    }
}

/// Exhaustive companion to the property: every bit of one blob, under a
/// keyring with several versions (so version edits can land on a real one).
#[test]
fn every_single_bit_flip_is_tampered() {
    let ring = keyring_of(&[(1, [7; 32]), (2, [8; 32]), (3, [9; 32])]);
    let aad = Aad {
        key_id: [3; 16],
        workspace_id: [4; 16],
        vendor: Vendor::OpenAi,
    };
    let blob = seal(&ring, &aad, b"sk-proj-not-a-real-key").unwrap();
    for i in 0..blob.len() {
        for bit in 0..8 {
            let mut bad = blob.clone();
            bad[i] ^= 1 << bit;
            let err = open(&ring, &aad, &bad).expect_err("flipped blob opened");
            assert_eq!(err.kind(), ErrorKind::Tampered, "byte {i} bit {bit}: {err}");
        }
    }
}
