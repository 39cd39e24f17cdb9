//! Master keys (KEKs): the keyring file, `BYOK_MASTER_KEY`, fingerprints.
//!
//! Several versions can be loaded at once so keys can be rewrapped: the
//! highest version encrypts, every loaded version decrypts. Parse errors
//! name a line number and a fixed reason, never characters of the line,
//! because the line is a secret.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::CoreError;

const KEY_BYTES: usize = 32;
const KEY_HEX_CHARS: usize = 2 * KEY_BYTES;
const FINGERPRINT_LABEL: &[u8] = b"pg_byok kek fingerprint v1";

/// One 256-bit master key; wiped on drop, never printed.
pub struct MasterKey {
    key: Zeroizing<[u8; KEY_BYTES]>,
    /// Cached: envelope `open` compares it on every call.
    fingerprint: [u8; 16],
}

impl MasterKey {
    fn new(key: Zeroizing<[u8; KEY_BYTES]>) -> MasterKey {
        // HMAC rather than a plain hash of the key: a fingerprint stored next
        // to every ciphertext must not double as a cheap key-guess oracle
        // shared with any other system hashing the same bytes.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key[..])
            .expect("HMAC accepts keys of any length");
        mac.update(FINGERPRINT_LABEL);
        let digest = mac.finalize().into_bytes();
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&digest[..16]);
        MasterKey { key, fingerprint }
    }

    /// First 16 bytes of HMAC-SHA256(key, "pg_byok kek fingerprint v1"):
    /// identifies which key sealed a blob without revealing the key.
    pub fn fingerprint(&self) -> [u8; 16] {
        self.fingerprint
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.key
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// The loaded master keys by version; never empty.
pub struct Keyring {
    keys: BTreeMap<u32, MasterKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Versions are not secret and help when debugging a rotation.
        f.debug_struct("Keyring")
            .field("versions", &self.versions())
            .finish()
    }
}

impl Keyring {
    /// Parses a keyring file: one `<version> <64 hex chars>` a line; `#`
    /// starts a comment (whole-line or trailing); blank lines ignored.
    /// Versions are 1..=u32::MAX and unique; at least one key is required.
    pub fn parse_file(text: &str) -> Result<Keyring, CoreError> {
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        let mut keys = BTreeMap::new();
        for (index, raw_line) in text.lines().enumerate() {
            let line = index + 1;
            let err = |reason| CoreError::Keyring { line, reason };
            let content = raw_line.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let mut fields = content.split_whitespace();
            let (Some(version), Some(hex), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(err("expected '<version> <64 hex characters>'"));
            };
            let version = parse_version(version).ok_or(err(
                "the version must be a whole number from 1 to 4294967295",
            ))?;
            let key = decode_key(hex).map_err(err)?;
            if keys.insert(version, MasterKey::new(key)).is_some() {
                return Err(err("this version appears on an earlier line too"));
            }
        }
        if keys.is_empty() {
            return Err(CoreError::Keyring {
                line: 0,
                reason: "the file holds no key",
            });
        }
        Ok(Keyring { keys })
    }

    /// Parses the `BYOK_MASTER_KEY` form: one key, 64 hex characters
    /// (surrounding whitespace ignored), loaded as version 1.
    pub fn from_env_value(hex: &str) -> Result<Keyring, CoreError> {
        let key = decode_key(hex.trim()).map_err(|reason| CoreError::BadEnvKey { reason })?;
        Ok(Keyring {
            keys: BTreeMap::from([(1, MasterKey::new(key))]),
        })
    }

    /// The version new encryptions use: the highest loaded.
    pub fn primary_version(&self) -> u32 {
        self.primary().0
    }

    /// The primary version and its key.
    pub fn primary(&self) -> (u32, &MasterKey) {
        let (version, key) = self
            .keys
            .last_key_value()
            .expect("a Keyring is never empty");
        (*version, key)
    }

    /// The key loaded as `version`, if any.
    pub fn get(&self, version: u32) -> Option<&MasterKey> {
        self.keys.get(&version)
    }

    /// Loaded versions, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// The version whose key has fingerprint `fp`, if one is loaded.
    pub fn find_by_fingerprint(&self, fp: &[u8; 16]) -> Option<u32> {
        self.keys
            .iter()
            .find(|(_, key)| key.fingerprint == *fp)
            .map(|(version, _)| *version)
    }
}

fn parse_version(text: &str) -> Option<u32> {
    // Digits only: u32::from_str would also take "+1".
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|&v| v >= 1)
}

fn decode_key(hex_text: &str) -> Result<Zeroizing<[u8; KEY_BYTES]>, &'static str> {
    if hex_text.len() != KEY_HEX_CHARS {
        return Err("the key must be exactly 64 hex characters");
    }
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    hex::decode_to_slice(hex_text, &mut key[..])
        .map_err(|_| "the key holds a character that is not a hex digit")?;
    Ok(key)
}

/// A fresh random master key as 64 lower-case hex characters (dev scripts,
/// tests). Uses the OS generator: this is a long-lived secret.
pub fn generate_hex_key() -> Zeroizing<String> {
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    OsRng.fill_bytes(&mut key[..]);
    Zeroizing::new(hex::encode(&key[..]))
}
