//! Envelope encryption of stored API keys (AES-256-GCM under a master key).
//!
//! Blob, format v1:
//! `[format u8 = 1][master key version u32 BE][KEK fingerprint 16][nonce 12][ciphertext + tag 16]`
//!
//! The associated data binds the blob to its row and purpose:
//! `"pg_byok/v1\0" || header (21 bytes) || key_id || workspace_id || vendor`,
//! so a ciphertext copied to another row, workspace or vendor fails to open,
//! and so does one whose header was edited.
//!
//! The fingerprint lets `open` tell "someone changed the bytes" (XX001) from
//! "the server runs with another master key" (55000): the two need opposite
//! responses from an operator. Without the key the header cannot be
//! authenticated, so the line is drawn by distance: a header within
//! [`MAX_HEADER_EDITS`] byte edits (flips, insertions, deletions) of the
//! header some loaded key would have written is a damaged blob of that key
//! (Tampered); a header far from every loaded key's names a key this server
//! does not have (55000). Either way no plaintext comes out.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::error::CoreError;
use crate::keyring::{Keyring, MasterKey};
use crate::vendor::Vendor;

/// What a ciphertext is bound to; none of it is secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aad {
    pub key_id: [u8; 16],
    pub workspace_id: [u8; 16],
    pub vendor: Vendor,
}

/// The only format written and read today.
pub const FORMAT_V1: u8 = 1;

const AAD_LABEL: &[u8] = b"pg_byok/v1\0";
const HEADER_LEN: usize = 1 + 4 + 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const MIN_BLOB_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// The most AES-GCM encrypts under one nonce (2^36 - 32 bytes).
const MAX_SEALED_LEN: usize = (1 << 36) - 32;

/// A header this many byte edits (substitution, insertion, deletion) from a
/// loaded key's header was damaged in storage: another key's header differs
/// in ~15 of the 16 fingerprint bytes, and no alignment brings random bytes
/// within 3 edits (odds below 2^-80).
pub const MAX_HEADER_EDITS: usize = 3;

/// Encrypts `plaintext` under the keyring's primary key, bound to `aad`.
pub fn seal(keyring: &Keyring, aad: &Aad, plaintext: &[u8]) -> Result<Vec<u8>, CoreError> {
    let (version, key) = keyring.primary();
    let mut blob = Vec::with_capacity(MIN_BLOB_LEN + plaintext.len());
    blob.push(FORMAT_V1);
    blob.extend_from_slice(&version.to_be_bytes());
    blob.extend_from_slice(&key.fingerprint());
    let mut nonce = [0u8; NONCE_LEN];
    // A random 96-bit nonce per seal: keys are few and rarely re-sealed, far
    // below the ~2^32 messages per key where random nonces get risky.
    OsRng.fill_bytes(&mut nonce);
    let aad_bytes = full_aad(&blob[..HEADER_LEN], aad);
    let ciphertext = cipher(key)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad_bytes,
            },
        )
        .map_err(|_| CoreError::KeyTooLong {
            // aes-gcm refuses only messages beyond 64 GiB.
            len: plaintext.len(),
            max: MAX_SEALED_LEN,
        })?;
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ciphertext);
    Ok(blob)
}

/// Decrypts a blob made by [`seal`] for the same `aad`.
///
/// When the keyring holds the key that sealed the blob, every corruption of
/// the blob outside its header, and every corruption of up to
/// [`MAX_HEADER_EDITS`] bytes in it (flipped, inserted or deleted), yields
/// [`CoreError::Tampered`]. A server whose keyring lacks or replaced that
/// key yields [`CoreError::MasterKeyMissing`] /
/// [`CoreError::MasterKeyMismatch`], and so does a header damaged beyond
/// recognition (it names no key this server has). No error returns any
/// plaintext.
pub fn open(keyring: &Keyring, aad: &Aad, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let key = key_for(keyring, blob)?;
    let (nonce, ciphertext) = blob[HEADER_LEN..].split_at(NONCE_LEN);
    let aad_bytes = full_aad(&blob[..HEADER_LEN], aad);
    cipher(key)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad_bytes,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CoreError::Tampered {
            reason: "authentication tag mismatch",
        })
}

/// Retirement: versions below `min_version` (the server's
/// `byok.min_decrypt_version`) neither open nor seal anything, even while
/// still in the keyring, the way a disabled KMS key version does.
/// `min_version` 0 or 1 retires nothing.
///
/// The header is checked first, without decrypting: a header within
/// [`MAX_HEADER_EDITS`] of one a loaded key would write is tampered (XX001),
/// as [`open`] promises, even when the edit lands on a retired version; a
/// blob whose intact header names a retired version, loaded or not, is
/// retired. Either way no plaintext comes out.
pub fn open_unretired(
    keyring: &Keyring,
    min_version: u32,
    aad: &Aad,
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let version = header_version(blob)?;
    let retired = CoreError::MasterKeyRetired {
        version,
        min: min_version,
    };
    match key_for(keyring, blob) {
        Err(e @ CoreError::Tampered { .. }) => Err(e),
        _ if version < min_version => Err(retired),
        Err(e) => Err(e),
        Ok(_) => open(keyring, aad, blob),
    }
}

/// [`seal`], refused when the primary version itself is retired: a key
/// sealed then could never be opened.
pub fn seal_unretired(
    keyring: &Keyring,
    min_version: u32,
    aad: &Aad,
    plaintext: &[u8],
) -> Result<Vec<u8>, CoreError> {
    let primary = keyring.primary_version();
    if primary < min_version {
        return Err(CoreError::MasterKeyRetired {
            version: primary,
            min: min_version,
        });
    }
    seal(keyring, aad, plaintext)
}

/// Re-encrypts a blob under the keyring's primary key, bound to the same
/// `aad`; `None` when it is already sealed by the primary (same version
/// and fingerprint), so a rewrap can be repeated safely. The plaintext
/// lives only inside this call and is wiped when it returns.
pub fn rewrap(
    keyring: &Keyring,
    min_version: u32,
    aad: &Aad,
    blob: &[u8],
) -> Result<Option<Vec<u8>>, CoreError> {
    let (primary, key) = keyring.primary();
    if blob.len() >= HEADER_LEN && blob[..HEADER_LEN] == header(primary, key) {
        return Ok(None);
    }
    let plaintext = open_unretired(keyring, min_version, aad, blob)?;
    seal_unretired(keyring, min_version, aad, &plaintext).map(Some)
}

/// The master key version a blob was sealed with (to find blobs that need
/// rewrapping under the primary key). Checks length and format only.
pub fn header_version(blob: &[u8]) -> Result<u32, CoreError> {
    if blob.len() < MIN_BLOB_LEN {
        return Err(CoreError::Tampered {
            reason: "ciphertext too short",
        });
    }
    if blob[0] != FORMAT_V1 {
        return Err(CoreError::Tampered {
            reason: "unknown ciphertext format",
        });
    }
    Ok(u32::from_be_bytes(
        blob[1..5].try_into().expect("4-byte slice"),
    ))
}

/// Picks the key for a blob, or decides why there is none (see the module
/// docs for where "damaged" ends and "another key" begins).
fn key_for<'k>(keyring: &'k Keyring, blob: &[u8]) -> Result<&'k MasterKey, CoreError> {
    let version = header_version(blob)?;
    let fp: [u8; 16] = blob[5..HEADER_LEN].try_into().expect("16-byte slice");
    if let Some(key) = keyring.get(version).filter(|k| k.fingerprint() == fp) {
        return Ok(key);
    }
    let damaged = keyring.versions().into_iter().any(|v| {
        let key = keyring.get(v).expect("a listed version");
        header_edits(&header(v, key), blob) <= MAX_HEADER_EDITS
    });
    if damaged {
        return Err(CoreError::Tampered {
            reason: "ciphertext header corrupted",
        });
    }
    if keyring.find_by_fingerprint(&fp).is_some() {
        // A loaded key's fingerprint under a version that is not its own.
        return Err(CoreError::Tampered {
            reason: "master key version field corrupted",
        });
    }
    match keyring.get(version) {
        Some(_) => Err(CoreError::MasterKeyMismatch { version }),
        None => Err(CoreError::MasterKeyMissing { version }),
    }
}

/// The header [`seal`] writes for `key` loaded as `version`.
fn header(version: u32, key: &MasterKey) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = FORMAT_V1;
    h[1..5].copy_from_slice(&version.to_be_bytes());
    h[5..].copy_from_slice(&key.fingerprint());
    h
}

/// Fewest byte edits (substitutions, insertions, deletions) turning
/// `expected` into a prefix of `blob` (the nonce follows the header, so an
/// insertion or deletion shifts the header's end), capped at
/// `MAX_HEADER_EDITS + 1`. Levenshtein over at most 21 × 25 cells.
fn header_edits(expected: &[u8; HEADER_LEN], blob: &[u8]) -> usize {
    const CAP: usize = MAX_HEADER_EDITS + 1;
    let actual = &blob[..blob.len().min(HEADER_LEN + MAX_HEADER_EDITS)];
    // row[j]: edits turning expected[..i] into actual[..j].
    let mut row: Vec<usize> = (0..=actual.len()).collect();
    for (i, &e) in expected.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &a) in actual.iter().enumerate() {
            let substitute = diagonal + usize::from(e != a);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    // The header may end anywhere within MAX_HEADER_EDITS of byte 21.
    let lo = HEADER_LEN.saturating_sub(MAX_HEADER_EDITS);
    row.get(lo..)
        .and_then(|r| r.iter().min().copied())
        .unwrap_or(CAP)
        .min(CAP)
}

fn cipher(key: &MasterKey) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.bytes()))
}

fn full_aad(header: &[u8], aad: &Aad) -> Vec<u8> {
    let vendor = aad.vendor.as_str().as_bytes();
    let mut out = Vec::with_capacity(AAD_LABEL.len() + HEADER_LEN + 32 + vendor.len());
    out.extend_from_slice(AAD_LABEL);
    out.extend_from_slice(header);
    out.extend_from_slice(&aad.key_id);
    out.extend_from_slice(&aad.workspace_id);
    out.extend_from_slice(vendor);
    out
}

#[cfg(test)]
mod rotation_tests {
    use super::*;

    const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const K3: &str = "3333333333333333333333333333333333333333333333333333333333333333";

    fn ring(lines: &[(u32, &str)]) -> Keyring {
        let text: String = lines.iter().map(|(v, k)| format!("{v} {k}\n")).collect();
        Keyring::parse_file(&text).unwrap()
    }

    fn aad(n: u8) -> Aad {
        Aad {
            key_id: [n; 16],
            workspace_id: [n ^ 0xff; 16],
            vendor: Vendor::Anthropic,
        }
    }

    #[test]
    fn rewrap_moves_every_version_to_the_primary_with_the_same_plaintext() {
        let old: Vec<(Keyring, Vec<u8>)> = [(1, K1), (2, K2)]
            .iter()
            .map(|&(v, k)| {
                let r = ring(&[(v, k)]);
                let blob = seal(&r, &aad(v as u8), format!("secret-{v}").as_bytes()).unwrap();
                (r, blob)
            })
            .collect();
        let all = ring(&[(1, K1), (2, K2), (3, K3)]);
        for (v, (_, blob)) in (1u32..).zip(&old) {
            assert_eq!(header_version(blob).unwrap(), v);
            let new = rewrap(&all, 1, &aad(v as u8), blob)
                .unwrap()
                .expect("rewrapped");
            assert_eq!(header_version(&new).unwrap(), 3);
            assert_eq!(
                &open(&ring(&[(3, K3)]), &aad(v as u8), &new).unwrap()[..],
                format!("secret-{v}").as_bytes()
            );
            // Rewrapping again changes nothing.
            assert!(rewrap(&all, 1, &aad(v as u8), &new).unwrap().is_none());
            // The rewrapped blob is still bound to its row.
            assert!(matches!(
                open(&all, &aad(9), &new),
                Err(CoreError::Tampered { .. })
            ));
        }
    }

    #[test]
    fn retired_versions_neither_open_nor_seal_nor_rewrap() {
        let all = ring(&[(1, K1), (2, K2), (3, K3)]);
        let v1 = seal(&ring(&[(1, K1)]), &aad(1), b"one").unwrap();
        let v3 = seal(&all, &aad(3), b"three").unwrap();
        let err = open_unretired(&all, 2, &aad(1), &v1).unwrap_err();
        assert!(
            matches!(err, CoreError::MasterKeyRetired { version: 1, min: 2 }),
            "{err}"
        );
        assert!(err.to_string().contains("version 1"));
        assert!(matches!(
            rewrap(&all, 2, &aad(1), &v1),
            Err(CoreError::MasterKeyRetired { version: 1, .. })
        ));
        assert_eq!(
            &open_unretired(&all, 3, &aad(3), &v3).unwrap()[..],
            b"three"
        );
        assert_eq!(&open_unretired(&all, 1, &aad(1), &v1).unwrap()[..], b"one");
        assert!(matches!(
            seal_unretired(&all, 4, &aad(4), b"four"),
            Err(CoreError::MasterKeyRetired { version: 3, min: 4 })
        ));
        assert!(seal_unretired(&all, 3, &aad(4), b"four").is_ok());
    }

    #[test]
    fn rewrap_of_a_tampered_blob_fails_and_returns_nothing() {
        let all = ring(&[(1, K1), (2, K2)]);
        let mut v1 = seal(&ring(&[(1, K1)]), &aad(1), b"one").unwrap();
        let last = v1.len() - 1;
        v1[last] ^= 1;
        assert!(matches!(
            rewrap(&all, 1, &aad(1), &v1),
            Err(CoreError::Tampered { .. })
        ));
    }
}
