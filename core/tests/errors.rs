//! Every error: its SQLSTATE class, a message, and a hint that says what to do.

use byok_core::{CoreError, ErrorKind, Vendor};

fn all_errors() -> Vec<(CoreError, ErrorKind)> {
    use CoreError::*;
    use ErrorKind::{InvalidArgument, MasterKeyUnavailable, NullValue};
    vec![
        (CoreError::unknown_vendor("gemini"), InvalidArgument),
        (EmptyKey, InvalidArgument),
        (
            KeyTooLong {
                len: 1 << 20,
                max: 1024,
            },
            InvalidArgument,
        ),
        (InnerWhitespace, InvalidArgument),
        (
            NotAKey {
                vendor: Vendor::Anthropic,
            },
            InvalidArgument,
        ),
        (
            NotAKey {
                vendor: Vendor::OpenAi,
            },
            InvalidArgument,
        ),
        (
            AdminKey {
                vendor: Vendor::Anthropic,
            },
            InvalidArgument,
        ),
        (
            AdminKey {
                vendor: Vendor::OpenAi,
            },
            InvalidArgument,
        ),
        (OAuthToken, InvalidArgument),
        (
            WrongVendor {
                expected: Vendor::Anthropic,
                found: Vendor::OpenAi,
            },
            InvalidArgument,
        ),
        (NullArgument { name: "api_key" }, NullValue),
        (
            CoreError::Tampered {
                reason: "authentication tag mismatch",
            },
            ErrorKind::Tampered,
        ),
        (MasterKeyMissing { version: 4 }, MasterKeyUnavailable),
        (MasterKeyMismatch { version: 1 }, MasterKeyUnavailable),
        (
            MasterKeyRetired { version: 1, min: 2 },
            MasterKeyUnavailable,
        ),
        (NoMasterKey, MasterKeyUnavailable),
        (
            Keyring {
                line: 3,
                reason: "the key must be exactly 64 hex characters",
            },
            MasterKeyUnavailable,
        ),
        (
            Keyring {
                line: 0,
                reason: "the file holds no key",
            },
            MasterKeyUnavailable,
        ),
        (
            BadEnvKey {
                reason: "the key must be exactly 64 hex characters",
            },
            MasterKeyUnavailable,
        ),
        (VaultTampered { reason: "is gone" }, ErrorKind::Tampered),
        (VaultNotInstalled, ErrorKind::VaultUnavailable),
        (VaultNotPreloaded, ErrorKind::VaultUnavailable),
        (
            VaultTooOld {
                version: "0.2.8".into(),
            },
            ErrorKind::VaultUnavailable,
        ),
        (
            VaultUnsafe {
                object: "table vault.secrets".into(),
            },
            ErrorKind::VaultUnavailable,
        ),
        (VaultRootKeyMissing, ErrorKind::VaultUnavailable),
        (VaultWrongRootKey, ErrorKind::VaultUnavailable),
    ]
}

#[test]
fn every_error_has_its_kind_a_message_and_a_hint() {
    for (err, kind) in all_errors() {
        assert_eq!(err.kind(), kind, "{err}");
        let msg = err.to_string();
        assert!(!msg.is_empty() && !msg.ends_with('.'), "{msg}");
        let hint = err.hint().expect("every error has a hint");
        assert!(hint.ends_with('.') || hint.ends_with("32"), "{hint}");
    }
}

#[test]
fn specific_wording_users_see() {
    assert_eq!(
        CoreError::WrongVendor {
            expected: Vendor::Anthropic,
            found: Vendor::OpenAi
        }
        .to_string(),
        "this looks like an OpenAI API key, but the vendor given is Anthropic"
    );
    assert_eq!(
        CoreError::Keyring {
            line: 3,
            reason: "r"
        }
        .to_string(),
        "keyring file, line 3: r"
    );
    assert_eq!(
        CoreError::Keyring {
            line: 0,
            reason: "r"
        }
        .to_string(),
        "keyring file: r"
    );
    assert!(CoreError::MasterKeyMissing { version: 4 }
        .to_string()
        .contains("version 4"));
    assert!(CoreError::MasterKeyMissing { version: 4 }
        .hint()
        .unwrap()
        .contains("version 4"));
    assert!(CoreError::NoMasterKey
        .hint()
        .unwrap()
        .contains("byok.master_key_file"));
}

#[test]
fn unknown_vendor_masks_keys_and_control_chars() {
    let key = format!("sk-proj-{}", "Q".repeat(100));
    let e = CoreError::unknown_vendor(&format!("  {key}  "));
    assert_eq!(e.to_string(), "unknown vendor \"…QQQQ\"");
    let e = CoreError::unknown_vendor("open\u{0}ai\n");
    assert_eq!(e.to_string(), "unknown vendor \"open?ai\"");
    // Short sk- runs are not key-shaped; truncation caps what is shown.
    let e = CoreError::unknown_vendor("sk-abcdefghijklmnopqrs-and-more");
    assert!(
        e.to_string()
            .chars()
            .filter(|c| c.is_alphanumeric())
            .count()
            <= 20 + 13
    );
}
