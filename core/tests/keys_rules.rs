//! One test per normalisation rule and per refusal.

use byok_core::keys::{normalize, recognize, KeyKind, MAX_INPUT_LEN};
use byok_core::samples::*;
use byok_core::{CoreError, ErrorKind, Vendor};

fn refuse(vendor: Vendor, raw: &str) -> CoreError {
    let err = normalize(vendor, raw).expect_err("should be refused");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    err
}

#[test]
fn accepts_every_storable_published_shape() {
    let anthropic = anthropic_api();
    assert_eq!(anthropic.len(), 108);
    assert_eq!(
        *normalize(Vendor::Anthropic, &anthropic).unwrap(),
        anthropic
    );
    for key in [
        openai_project(74),
        openai_project(58),
        openai_svcacct(74),
        openai_svcacct(58),
        openai_legacy(),
    ] {
        assert_eq!(*normalize(Vendor::OpenAi, &key).unwrap(), key);
    }
    assert_eq!(openai_project(74).len(), 164);
    assert_eq!(openai_svcacct(58).len(), 135);
    assert_eq!(openai_legacy().len(), 51);
}

#[test]
fn recognizes_every_kind() {
    let cases = [
        (anthropic_api(), KeyKind::AnthropicApi),
        (anthropic_admin(), KeyKind::AnthropicAdmin),
        (anthropic_oauth("oat"), KeyKind::AnthropicOAuth),
        (anthropic_oauth("ort"), KeyKind::AnthropicOAuth),
        (openai_project(74), KeyKind::OpenAiProject),
        (openai_svcacct(58), KeyKind::OpenAiServiceAccount),
        (openai_admin(), KeyKind::OpenAiAdmin),
        (openai_legacy(), KeyKind::OpenAiLegacy),
    ];
    for (key, kind) in cases {
        assert_eq!(recognize(&key), Some((kind.vendor(), kind)), "{kind:?}");
    }
    for s in ["", "hello", "sk-", "sk-short", " sk-x", &"sk-a".repeat(400)] {
        assert_eq!(recognize(s), None, "{s}");
    }
}

#[test]
fn strips_whitespace_crlf_nbsp_and_bom() {
    let key = anthropic_api();
    for raw in [
        format!("  {key}\r\n"),
        format!("\t{key}\n"),
        format!("\u{A0}{key}\u{A0}"),
        format!("\u{FEFF}{key}"),
        format!(" \r\n\u{FEFF}{key}\r\n"),
    ] {
        assert_eq!(
            *normalize(Vendor::Anthropic, &raw).unwrap(),
            key,
            "{:?}",
            &raw[..4]
        );
    }
}

#[test]
fn refuses_empty_and_blank() {
    for raw in ["", "   ", "\r\n\t", "\u{FEFF}", "\u{A0}"] {
        assert!(
            matches!(refuse(Vendor::OpenAi, raw), CoreError::EmptyKey),
            "{raw:?}"
        );
    }
}

#[test]
fn refuses_hello_as_not_a_key_with_the_expected_shape() {
    let err = refuse(Vendor::Anthropic, "hello");
    assert!(matches!(
        err,
        CoreError::NotAKey {
            vendor: Vendor::Anthropic
        }
    ));
    assert!(
        err.to_string()
            .contains("starts with sk-ant-api03- and is 108 characters long"),
        "{err}"
    );
    assert!(matches!(
        refuse(Vendor::OpenAi, "hello"),
        CoreError::NotAKey {
            vendor: Vendor::OpenAi
        }
    ));
}

#[test]
fn refuses_inner_whitespace() {
    let key = anthropic_api();
    for sep in [" ", "\n", "\r\n", "\t", "\u{A0}", "\u{FEFF}"] {
        let raw = format!("{}{sep}{}", &key[..50], &key[50..]);
        assert!(
            matches!(refuse(Vendor::Anthropic, &raw), CoreError::InnerWhitespace),
            "{sep:?}"
        );
    }
}

#[test]
fn refuses_a_megabyte_before_looking_at_it() {
    let huge = format!("{}{}", anthropic_api(), " ".repeat(1 << 20));
    match refuse(Vendor::Anthropic, &huge) {
        CoreError::KeyTooLong { len, max } => assert_eq!((len, max), (huge.len(), MAX_INPUT_LEN)),
        other => panic!("{other}"),
    }
    let edge = "x".repeat(MAX_INPUT_LEN + 1);
    assert!(matches!(
        refuse(Vendor::OpenAi, &edge),
        CoreError::KeyTooLong { .. }
    ));
    assert!(matches!(
        refuse(Vendor::OpenAi, &"x".repeat(MAX_INPUT_LEN)),
        CoreError::NotAKey { .. }
    ));
}

#[test]
fn refuses_the_other_vendors_key() {
    for key in [openai_project(74), openai_svcacct(58), openai_legacy()] {
        match refuse(Vendor::Anthropic, &key) {
            CoreError::WrongVendor {
                expected: Vendor::Anthropic,
                found: Vendor::OpenAi,
            } => {}
            other => panic!("{other}"),
        }
    }
    let err = refuse(Vendor::OpenAi, &anthropic_api());
    assert!(matches!(
        err,
        CoreError::WrongVendor {
            expected: Vendor::OpenAi,
            found: Vendor::Anthropic
        }
    ));
    assert!(err.hint().unwrap().contains("'anthropic'"));
}

#[test]
fn refuses_truncated_keys_of_the_other_vendor_as_wrong_vendor() {
    let err = refuse(Vendor::OpenAi, &anthropic_api()[..60]);
    assert!(matches!(
        err,
        CoreError::WrongVendor {
            found: Vendor::Anthropic,
            ..
        }
    ));
    let err = refuse(Vendor::Anthropic, &openai_project(74)[..30]);
    assert!(matches!(
        err,
        CoreError::WrongVendor {
            found: Vendor::OpenAi,
            ..
        }
    ));
    // A bare broken "sk-…" is not blamed on OpenAI.
    assert!(matches!(
        refuse(Vendor::Anthropic, "sk-abc"),
        CoreError::NotAKey { .. }
    ));
}

#[test]
fn refuses_both_admin_keys_for_either_vendor() {
    for vendor in Vendor::ALL {
        let err = refuse(vendor, &anthropic_admin());
        assert!(matches!(
            err,
            CoreError::AdminKey {
                vendor: Vendor::Anthropic
            }
        ));
        assert_eq!(
            err.to_string(),
            "this looks like an Anthropic admin key (sk-ant-admin01-…); pg_byok stores only API keys"
        );
        assert_eq!(
            err.hint().unwrap(),
            "Create an API key in the Anthropic console (Settings → API keys) and paste that instead."
        );
        let err = refuse(vendor, &openai_admin());
        assert!(matches!(
            err,
            CoreError::AdminKey {
                vendor: Vendor::OpenAi
            }
        ));
        assert!(err.to_string().contains("sk-admin-…"));
    }
    // Truncated admin keys are still called admin keys.
    assert!(matches!(
        refuse(Vendor::Anthropic, "sk-ant-admin01-abc"),
        CoreError::AdminKey { .. }
    ));
    assert!(matches!(
        refuse(Vendor::OpenAi, "sk-admin-abc"),
        CoreError::AdminKey { .. }
    ));
}

#[test]
fn refuses_oauth_tokens() {
    for kind in ["oat", "ort"] {
        for vendor in Vendor::ALL {
            assert!(matches!(
                refuse(vendor, &anthropic_oauth(kind)),
                CoreError::OAuthToken
            ));
        }
    }
    assert!(matches!(
        refuse(Vendor::Anthropic, "sk-ant-oat01-short"),
        CoreError::OAuthToken
    ));
}

#[test]
fn anthropic_length_window_is_100_to_200() {
    let with_body = |n: usize| format!("sk-ant-api03-{}", "a".repeat(n));
    assert!(normalize(Vendor::Anthropic, &with_body(87)).is_ok()); // 100 chars
    assert!(normalize(Vendor::Anthropic, &with_body(187)).is_ok()); // 200 chars
    assert!(matches!(
        refuse(Vendor::Anthropic, &with_body(86)),
        CoreError::NotAKey { .. }
    ));
    assert!(matches!(
        refuse(Vendor::Anthropic, &with_body(188)),
        CoreError::NotAKey { .. }
    ));
    let bad_char = format!("sk-ant-api03-{}!AA", "a".repeat(92));
    assert!(matches!(
        refuse(Vendor::Anthropic, &bad_char),
        CoreError::NotAKey { .. }
    ));
}

#[test]
fn openai_project_body_window_is_40_to_250() {
    for (n, ok) in [(39, false), (40, true), (250, true), (251, false)] {
        let key = format!("sk-proj-{}", "b".repeat(n));
        assert_eq!(normalize(Vendor::OpenAi, &key).is_ok(), ok, "{n}");
        let key = format!("sk-svcacct-{}", "b".repeat(n));
        assert_eq!(normalize(Vendor::OpenAi, &key).is_ok(), ok, "{n}");
    }
}

#[test]
fn openai_legacy_is_exact() {
    let key = openai_legacy();
    assert!(normalize(Vendor::OpenAi, &key[..50]).is_err());
    assert!(normalize(Vendor::OpenAi, &format!("{key}x")).is_err());
    assert!(normalize(Vendor::OpenAi, &key.replace("T3BlbkFJ", "T3BlbkFX")).is_err());
    assert!(normalize(Vendor::OpenAi, &key.replacen('a', "_", 1)).is_err());
    // Multi-byte characters where the marker would be must not panic.
    assert!(normalize(
        Vendor::OpenAi,
        &format!("sk-{}éééé{}", "a".repeat(20), "b".repeat(20))
    )
    .is_err());
}

#[test]
fn no_refusal_echoes_the_key() {
    let inputs = [
        anthropic_api(),
        anthropic_admin(),
        anthropic_oauth("oat"),
        openai_project(74),
        openai_admin(),
        openai_legacy(),
        format!("{} x", anthropic_api()),
    ];
    for raw in &inputs {
        for vendor in Vendor::ALL {
            if let Err(e) = normalize(vendor, raw) {
                let all = format!("{e} {:?} {:?} {:?}", e.hint(), e.detail(), e);
                // Skip windows that overlap the public prefixes (at most 15 chars).
                for window in raw.as_bytes().windows(8).skip(15) {
                    let w = std::str::from_utf8(window).unwrap();
                    assert!(!all.contains(w), "{vendor:?}: leaked {w} in {all}");
                }
            }
        }
    }
}
