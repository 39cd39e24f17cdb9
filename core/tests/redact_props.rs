//! Property tests of `mask` and `redact`.

use std::borrow::Cow;

use byok_core::mask::mask;
use byok_core::redact::{contains_key_shaped, key_ranges, may_hold_key, redact};
use byok_core::samples::strategies::*;
use proptest::prelude::*;

/// Prefixes are public; only the characters after them are secret.
fn body_of(key: &str) -> &str {
    const PREFIXES: [&str; 8] = [
        "sk-ant-api03-",
        "sk-ant-admin01-",
        "sk-ant-oat01-",
        "sk-ant-ort01-",
        "sk-proj-",
        "sk-svcacct-",
        "sk-admin-",
        "sk-",
    ];
    let prefix = PREFIXES.iter().find(|p| key.starts_with(**p)).unwrap();
    &key[prefix.len()..]
}

fn assert_hidden(out: &str, key: &str) -> Result<(), TestCaseError> {
    for window in body_of(key).as_bytes().windows(8) {
        let w = std::str::from_utf8(window).unwrap();
        prop_assert!(
            !out.contains(w),
            "window {} of a key survived in {}",
            w,
            out
        );
    }
    Ok(())
}

/// No 12 characters in a row of the key's secret part survive in `out`
/// (the promise for keys broken by separators; masks show 4).
fn assert_no_piece_of_12(out: &str, key: &str) -> Result<(), TestCaseError> {
    for window in body_of(key).as_bytes().windows(12) {
        let w = std::str::from_utf8(window).unwrap();
        prop_assert!(!out.contains(w), "{} of a key survived in {:?}", w, out);
    }
    Ok(())
}

fn any_key_shaped() -> impl Strategy<Value = String> {
    prop_oneof![3 => any_published_key(), 1 => malformed_sk_run()]
}

proptest! {
    #[test]
    fn mask_shows_at_most_four_trailing_chars(s in any::<String>()) {
        let m = mask(&s);
        prop_assert!(m.starts_with('…'));
        let shown = &m['…'.len_utf8()..];
        prop_assert!(shown.chars().count() <= 4);
        prop_assert!(s.contains(shown));
        if s.trim().chars().count() < 8 {
            prop_assert_eq!(shown, "");
        }
    }

    #[test]
    fn mask_of_a_key_is_its_last_four(key in any_key_shaped()) {
        prop_assert_eq!(mask(&key), format!("…{}", &key[key.len() - 4..]));
    }

    #[test]
    fn every_embedded_key_is_masked(
        parts in prop::collection::vec((filler(), any_key_shaped()), 1..4), tail in filler(),
    ) {
        let mut text = String::new();
        for (before, key) in &parts {
            text.push_str(before);
            text.push_str(key);
        }
        text.push_str(&tail);
        prop_assert!(contains_key_shaped(&text));
        let out = redact(&text);
        prop_assert!(matches!(out, Cow::Owned(_)));
        for (_, key) in &parts {
            assert_hidden(&out, key)?;
        }
        prop_assert!(!contains_key_shaped(&out), "{}", out);
    }

    #[test]
    fn keys_glued_to_syntax_are_masked(
        key in any_key_shaped(),
        (open, close) in prop::sample::select(vec![
            ("\"", "\""), ("Bearer", ""), ("x-api-key: ", "\r\n"), ("?api_key=", "&v=1"),
            ("{\"key\":\"", "\"}"), ("abc", "é"), ("'", "'"), ("(", ")"), ("", ""),
        ]),
    ) {
        let text = format!("{open}{key}{close}");
        let out = redact(&text);
        assert_hidden(&out, &key)?;
        prop_assert!(out.contains(&mask(&key)), "{}", out);
    }

    #[test]
    fn a_key_broken_anywhere_leaves_no_piece_of_12(
        (key, text) in any_published_key().prop_flat_map(broken_key),
        (before, after) in (filler(), filler()),
    ) {
        let text = format!("{before}{text}{after}");
        prop_assert!(may_hold_key(text.as_bytes()));
        let out = redact(&text);
        assert_no_piece_of_12(&out, &key)?;
        prop_assert!(!contains_key_shaped(&out), "{:?}", out);
        prop_assert!(matches!(redact(&out), Cow::Borrowed(_)));
    }

    #[test]
    fn broken_keys_in_json_and_urls_are_masked(
        (key, text) in any_published_key().prop_flat_map(broken_key),
        (open, close) in prop::sample::select(vec![
            ("{\"key\":\"", "\"}"), ("?api_key=", "&v=1"), ("Authorization: Bearer ", "\r\n"),
            ("['", "']"), ("key=", ""), ("", ""),
        ]),
    ) {
        let text = format!("{open}{text}{close}");
        let out = redact(&text);
        assert_no_piece_of_12(&out, &key)?;
        prop_assert!(out.starts_with(open) && out.ends_with(close), "{:?}", out);
    }

    #[test]
    fn the_fast_path_never_skips_a_key(text in prop_oneof![
        any::<String>(),
        (filler(), any_published_key().prop_flat_map(broken_key), filler())
            .prop_map(|(a, (_, k), b)| format!("{a}{k}{b}")),
        prop::collection::vec(prop_oneof![filler(), key_separator(), "[A-Za-z0-9_-]{0,30}"], 0..12)
            .prop_map(|v| v.concat()),
    ]) {
        prop_assert!(may_hold_key(text.as_bytes()) || key_ranges(text.as_bytes()).is_empty());
        let out = redact(&text);
        prop_assert!(!contains_key_shaped(&out), "{:?} -> {:?}", text, out);
        prop_assert!(matches!(redact(&out), Cow::Borrowed(_)), "{:?}", out);
    }

    #[test]
    fn key_free_text_is_returned_borrowed(text in key_free_text()) {
        prop_assert!(!contains_key_shaped(&text));
        prop_assert!(matches!(redact(&text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn redact_agrees_with_contains_and_is_idempotent(text in any::<String>()) {
        let out = redact(&text);
        prop_assert_eq!(matches!(out, Cow::Owned(_)), contains_key_shaped(&text));
        prop_assert!(!contains_key_shaped(&out));
        prop_assert!(matches!(redact(&out), Cow::Borrowed(_)));
    }
}
