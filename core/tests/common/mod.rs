//! Key samples and generators shared by the integration tests.
//!
//! The grammars follow ../shared/reference/vendors.md; keys are random, so
//! none is real.
#![allow(dead_code)] // each test binary uses a different subset

use proptest::prelude::*;

pub const KEY_CHARS: &str = "[A-Za-z0-9_-]";

pub fn anthropic_api() -> String {
    format!(
        "sk-ant-api03-{}AA",
        "aB3_-xYz9".repeat(11).chars().take(93).collect::<String>()
    )
}

pub fn anthropic_admin() -> String {
    format!(
        "sk-ant-admin01-{}AA",
        "Qw7-_e".repeat(16).chars().take(93).collect::<String>()
    )
}

pub fn anthropic_oauth(kind: &str) -> String {
    format!("sk-ant-{kind}01-{}", "Zt4_k".repeat(20))
}

pub fn openai_project(half: usize) -> String {
    let side: String = "pQ8_-r".repeat(20).chars().take(half).collect();
    format!("sk-proj-{side}T3BlbkFJ{side}")
}

pub fn openai_svcacct(half: usize) -> String {
    let side: String = "Mn2-_s".repeat(20).chars().take(half).collect();
    format!("sk-svcacct-{side}T3BlbkFJ{side}")
}

pub fn openai_admin() -> String {
    let side: String = "Ad5_m".repeat(20).chars().take(74).collect();
    format!("sk-admin-{side}T3BlbkFJ{side}")
}

pub fn openai_legacy() -> String {
    "sk-abcdefghij0123456789T3BlbkFJ9876543210ABCDEFGHIJ".to_owned()
}

fn half_58_or_74() -> impl Strategy<Value = usize> {
    prop_oneof![Just(58usize), Just(74usize)]
}

fn body(len: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{KEY_CHARS}{{{len}}}")).unwrap()
}

fn alnum(len: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9]{{{len}}}")).unwrap()
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
    proptest::string::string_regex(r#"[a-zA-Z0-9 "'{}:,=&?/\\.\n\t_-é→\u{FEFF}]{0,40}"#).unwrap()
}

/// A filler that can never form a key-shaped run (no `-`), for "unchanged" tests.
pub fn key_free_text() -> impl Strategy<Value = String> {
    // Words of at most 12 key characters between separators: no `sk-`, no
    // stretch long enough to be masked on its own.
    proptest::string::string_regex(r#"([a-zA-Z0-9_]{0,12}[ "'{}:,=&?/\\.\n\té→]){0,16}"#).unwrap()
}
