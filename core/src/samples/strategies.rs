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
