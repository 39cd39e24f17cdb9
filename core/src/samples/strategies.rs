//! proptest generators of keys and of the text around them (the key
//! grammars of `shared/reference/vendors.md`; random, so none is real).

use proptest::prelude::*;

/// Regex class of Anthropic / OpenAI project key characters.
pub const KEY_CHARS: &str = "[A-Za-z0-9_-]";

fn half_58_or_74() -> impl Strategy<Value = usize> {
    prop_oneof![Just(58usize), Just(74usize)]
}

/// `len` key characters.
pub fn body(len: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{KEY_CHARS}{{{len}}}")).expect("valid regex")
}

/// `len` alphanumerics (legacy OpenAI key halves).
pub fn alnum(len: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9]{{{len}}}")).expect("valid regex")
}

/// Every published shape, storable or not, from the scanner grammars.
pub fn any_published_key() -> impl Strategy<Value = String> {
    let openai = (
        prop_oneof![Just("proj"), Just("svcacct"), Just("admin")],
        half_58_or_74(),
    )
        .prop_flat_map(|(kind, half)| {
            (body(half), body(half)).prop_map(move |(a, b)| format!("sk-{kind}-{a}T3BlbkFJ{b}"))
        });
    prop_oneof![
        body(93).prop_map(|b| format!("sk-ant-api03-{b}AA")),
        body(93).prop_map(|b| format!("sk-ant-admin01-{b}AA")),
        (prop_oneof![Just("oat"), Just("ort")], 40usize..120)
            .prop_flat_map(|(k, n)| body(n).prop_map(move |b| format!("sk-ant-{k}01-{b}"))),
        openai,
        (alnum(20), alnum(20)).prop_map(|(a, b)| format!("sk-{a}T3BlbkFJ{b}")),
    ]
}

/// Malformed but key-shaped runs: `sk-` plus 20..200 key characters.
pub fn malformed_sk_run() -> impl Strategy<Value = String> {
    (20usize..200)
        .prop_flat_map(body)
        .prop_map(|b| format!("sk-{b}"))
}

/// Filler text around keys: letters, punctuation, JSON and URL syntax,
/// whitespace and non-ASCII, so keys get glued to anything.
pub fn filler() -> impl Strategy<Value = String> {
    proptest::string::string_regex(r#"[a-zA-Z0-9 "'{}:,=&?/\\.\n\t_-é→\u{FEFF}]{0,40}"#)
        .expect("valid regex")
}

/// Text that can never hold a key-shaped run, for "returned unchanged" tests:
/// words of at most 12 key characters (no `-`, so no `sk-`) between
/// separators.
pub fn key_free_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex(r#"([a-zA-Z0-9_]{0,12}[ "'{}:,=&?/\\.\n\té→]){0,16}"#)
        .expect("valid regex")
}

/// One separator that logs and JSON put inside a key: whitespace of every
/// kind, line breaks with indentation, quotes and concatenation, `.` and
/// `:`, JSON escapes (`\n` as two characters, doubly escaped `\\n`,
/// `\u2028`), URL escapes (`%0A`), and short runs of these.
pub fn key_separator() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec![
        " ", "\n", "\r\n", "\t", r"\n", r"\\n", r"\r\n", r"\t", r"\u2028", r"\u00a0", "%0A",
        "%0D%0A", "%20", "%C2%A0", "\u{A0}", "\u{2028}", "\u{2029}", "\u{200B}", "\u{FEFF}", ".",
        ":", ";", ",", "'", "\"", "|", "+",
    ]);
    prop_oneof![
        prop::collection::vec(unit, 1..=3).prop_map(|v| v.concat()),
        (0usize..48).prop_map(|n| format!("\n{}", " ".repeat(n))),
        (0usize..40).prop_map(|n| format!(r"\n{}", " ".repeat(n))),
        Just("' || '".to_owned()),
        Just("\" +\n  \"".to_owned()),
    ]
}

/// `key` cut at 1 to 8 arbitrary points, each cut filled with a
/// [`key_separator`]: `(key, broken text)`. Redaction must leave no 12
/// characters in a row of the key's secret part (core/tests/redact_props.rs).
pub fn broken_key(key: String) -> impl Strategy<Value = (String, String)> {
    let len = key.len();
    prop::collection::vec((1..len, key_separator()), 1..=8).prop_map(move |mut cuts| {
        cuts.sort_by_key(|(at, _)| *at);
        cuts.dedup_by_key(|(at, _)| *at);
        let mut text = String::new();
        let mut from = 0;
        for (at, sep) in cuts {
            text.push_str(&key[from..at]);
            text.push_str(&sep);
            from = at;
        }
        text.push_str(&key[from..]);
        (key.clone(), text)
    })
}
