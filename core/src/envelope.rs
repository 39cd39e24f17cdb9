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
//! responses from an operator.

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

/// A fingerprint this close to the expected one was corrupted in storage;
/// a different key's fingerprint differs in ~15 of 16 bytes.
const MAX_CORRUPTED_FP_BYTES: usize = 3;

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
/// Every corruption of the blob yields [`CoreError::Tampered`]; a server
/// whose keyring lacks or replaced the needed key yields
/// [`CoreError::MasterKeyMissing`] / [`CoreError::MasterKeyMismatch`].
pub fn open(keyring: &Keyring, aad: &Aad, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let version = header_version(blob)?;
    let fp: [u8; 16] = blob[5..HEADER_LEN].try_into().expect("16-byte slice");
    let key = key_for(keyring, version, &fp)?;
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

/// Picks the key for a blob, or decides why there is none. The order of the
/// checks makes any single corrupted header byte come out as Tampered, while
/// an intact blob under a foreign keyring comes out as a 55000 error.
fn key_for<'k>(
    keyring: &'k Keyring,
    version: u32,
    fp: &[u8; 16],
) -> Result<&'k MasterKey, CoreError> {
    const VERSION_CORRUPTED: CoreError = CoreError::Tampered {
        reason: "master key version field corrupted",
    };
    match keyring.get(version) {
        Some(key) if key.fingerprint() == *fp => Ok(key),
        Some(key) => {
            let ours = key.fingerprint();
            let differing = ours.iter().zip(fp).filter(|(a, b)| a != b).count();
            if differing <= MAX_CORRUPTED_FP_BYTES {
                Err(CoreError::Tampered {
                    reason: "key fingerprint corrupted",
                })
            } else if keyring.find_by_fingerprint(fp).is_some() {
                Err(VERSION_CORRUPTED)
            } else {
                Err(CoreError::MasterKeyMismatch { version })
            }
        }
        None if keyring.find_by_fingerprint(fp).is_some() => Err(VERSION_CORRUPTED),
        None => Err(CoreError::MasterKeyMissing { version }),
    }
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
