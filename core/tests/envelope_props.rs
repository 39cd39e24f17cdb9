//! Property tests of the envelope: round trip, tamper evidence, key errors.

use byok_core::envelope::{open, seal, Aad, MAX_HEADER_EDITS};
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

/// One edit of a blob: flip, insert or delete a byte.
#[derive(Debug, Clone)]
enum Edit {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
}

fn any_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Delete),
    ]
}

fn apply(blob: &mut Vec<u8>, edit: &Edit) {
    match edit {
        Edit::Flip(i, b) => {
            let i = i.index(blob.len());
            blob[i] ^= b;
        }
        Edit::Insert(i, b) => blob.insert(i.index(blob.len() + 1), *b),
        Edit::Delete(i) => {
            blob.remove(i.index(blob.len()));
        }
    }
}

proptest! {
    /// Up to MAX_HEADER_EDITS flips, insertions and deletions anywhere, the
    /// header included, are tampering, never a missing or foreign key.
    #[test]
    fn up_to_three_edits_anywhere_are_tampered(
        spec in any_keyring_spec(), aad in any_aad(), msg in plaintext(),
        edits in prop::collection::vec(any_edit(), 1..=MAX_HEADER_EDITS),
    ) {
        let ring = keyring_of(&spec);
        let blob = seal(&ring, &aad, &msg).unwrap();
        let mut edited = blob.clone();
        for edit in &edits {
            apply(&mut edited, edit);
        }
        prop_assume!(edited != blob);
        match open(&ring, &aad, &edited) {
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Tampered, "{:?}: {}", edits, e),
            Ok(_) => prop_assert!(false, "edited blob still opened: {:?}", edits),
        }
    }
}

/// Exhaustive: one byte inserted (every value at the header's offsets, a
/// few elsewhere) or deleted at every offset is tampering (finding 13:
/// offsets 1 to 17 used to read as a missing key).
#[test]
fn every_single_insertion_and_deletion_is_tampered() {
    let ring = keyring_of(&[(1, [7; 32]), (2, [8; 32]), (0x0100_0002, [9; 32])]);
    let aad = Aad {
        key_id: [3; 16],
        workspace_id: [4; 16],
        vendor: Vendor::Anthropic,
    };
    let blob = seal(&ring, &aad, b"sk-ant-not-a-real-key").unwrap();
    for at in 0..=blob.len() {
        let values: Vec<u8> = if at <= 22 {
            (0..=255).collect()
        } else {
            vec![0, 1, 0xff]
        };
        for value in values {
            let mut bad = blob.clone();
            bad.insert(at, value);
            let err = open(&ring, &aad, &bad).expect_err("blob with an insertion opened");
            assert_eq!(
                err.kind(),
                ErrorKind::Tampered,
                "insert {value} at {at}: {err}"
            );
        }
    }
    for at in 0..blob.len() {
        let mut bad = blob.clone();
        bad.remove(at);
        let err = open(&ring, &aad, &bad).expect_err("blob with a deletion opened");
        assert_eq!(err.kind(), ErrorKind::Tampered, "delete at {at}: {err}");
    }
}

/// The other side of the line: a header damaged beyond recognition names no
/// loaded key, so it reads as a key this server lacks; still no plaintext.
#[test]
fn a_header_rewritten_wholesale_reads_as_a_missing_key() {
    let ring = keyring_of(&[(1, [7; 32])]);
    let aad = Aad {
        key_id: [3; 16],
        workspace_id: [4; 16],
        vendor: Vendor::OpenAi,
    };
    let mut blob = seal(&ring, &aad, b"x").unwrap();
    blob[1..21].copy_from_slice(&[0xA5; 20]);
    let err = open(&ring, &aad, &blob).unwrap_err();
    assert!(
        matches!(
            err,
            CoreError::MasterKeyMissing {
                version: 0xA5A5_A5A5
            }
        ),
        "{err}"
    );
}
