//! Examples of each rule; the properties are in tests/redact_props.rs.

use super::*;

#[test]
fn key_free_text_is_borrowed() {
    for t in ["", "hello", "sk-learn is a library", "ask-me", "sk-"] {
        assert!(matches!(redact(t), Cow::Borrowed(_)), "{t}");
        assert!(!contains_key_shaped(t));
    }
}

#[test]
fn masks_a_key_in_a_sentence() {
    let key = format!("sk-ant-api03-{}wxAA", "a".repeat(91));
    let text = format!("auth failed for {key}, retrying");
    assert_eq!(redact(&text), "auth failed for …wxAA, retrying");
    assert!(contains_key_shaped(&text));
}

#[test]
fn masks_runs_glued_to_letters_and_quotes() {
    let run = "sk-abcdefghijklmnopqrst";
    assert_eq!(redact(&format!("Bearer{run}\"")), "Bearer…qrst\"");
    assert_eq!(redact(&format!("{{\"k\":\"{run}\"}}")), "{\"k\":\"…qrst\"}");
    assert_eq!(redact(&format!("?key={run}&x=1")), "?key=…qrst&x=1");
}

#[test]
fn nineteen_body_chars_are_left_alone() {
    let t = "sk-abcdefghijklmnopqrs";
    assert!(matches!(redact(t), Cow::Borrowed(_)));
    assert_eq!(redact(&format!("{t}t")), "…qrst");
}

#[test]
fn masks_every_key_in_unicode_text() {
    let a = format!("sk-proj-{}", "Z".repeat(60));
    let b = format!("sk-{}", "9".repeat(30));
    let t = format!("é{a}→{b}ü");
    assert_eq!(redact(&t), "é…ZZZZ→…9999ü");
}

#[test]
fn masks_the_rest_of_a_key_broken_by_whitespace() {
    let key = format!("sk-ant-api03-{}{}AA", "a".repeat(40), "b".repeat(53));
    let (head, tail) = key.split_at(30);
    for sep in [" ", "\n", "\r\n  ", "' || '", "\t"] {
        let out = redact(&format!("x {head}{sep}{tail} y")).into_owned();
        assert!(
            !out.contains("aaaaaaaa") && !out.contains("bbbbbbbb"),
            "{out}"
        );
    }
    // A key broken early: the bare tail is long enough on its own.
    let out = redact(&format!("sk-ant-a {}", &key[8..])).into_owned();
    assert!(!out.contains("bbbbbbbb"), "{out}");
}

#[test]
fn long_bare_stretches_are_masked_short_ones_kept() {
    let long = "Z".repeat(40);
    assert_eq!(redact(&format!("token {long} end")), "token …ZZZZ end");
    let uuid = "0b8e7a59-2f3c-4a8e-9d1b-5c6f7e8d9a0b";
    assert!(matches!(redact(uuid), Cow::Borrowed(_)));
    assert!(matches!(redact(&"Z".repeat(39)), Cow::Borrowed(_)));
}

#[test]
fn has_stretch_finds_runs_at_any_offset() {
    for pre in 0..50 {
        let t = format!("{}{} .", " ".repeat(pre), "k".repeat(40));
        assert!(has_stretch(t.as_bytes(), 40), "{pre}");
        let t = format!("{}{} .", " ".repeat(pre), "k".repeat(39));
        assert!(!has_stretch(t.as_bytes(), 40), "{pre}");
    }
}

/// The secret part of a sample key (after its public prefix).
fn secret(key: &str) -> &str {
    let prefix = ["sk-ant-api03-", "sk-proj-", "sk-"]
        .into_iter()
        .find(|p| key.starts_with(p))
        .unwrap();
    &key[prefix.len()..]
}

/// No 12 characters in a row of `key`'s secret part are in `out`.
fn assert_no_piece_of_12(out: &str, key: &str) {
    for w in secret(key).as_bytes().windows(12) {
        let w = std::str::from_utf8(w).unwrap();
        assert!(!out.contains(w), "{w} of the key survived in {out:?}");
    }
}

fn anthropic() -> String {
    // Fixed, key-shaped, not real: 93 body characters + AA.
    let body: String = "Qz7_pL2-vX9k".repeat(8).chars().take(93).collect();
    format!("sk-ant-api03-{body}AA")
}

fn legacy_openai() -> String {
    "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".to_owned()
}

#[test]
fn finding_11a_a_tail_holding_sk_is_masked_whole() {
    let key = anthropic();
    // sk-ant-api03-<60> \n <12>sk-<18>AA, as in the finding: make the tail
    // hold an `sk-` 12 characters in.
    let mut key = key.into_bytes();
    key[73 + 12..73 + 15].copy_from_slice(b"sk-");
    let key = String::from_utf8(key).unwrap();
    let text = format!("{}\n{}", &key[..73], &key[73..]);
    let out = redact(&text);
    assert_no_piece_of_12(&out, &key);
    assert_eq!(out.matches('…').count(), 2, "{out}");
}

#[test]
fn finding_11b_legacy_key_broken_early() {
    let key = legacy_openai();
    let text = format!("key {}\n{} rejected", &key[..15], &key[15..]);
    let out = redact(&text);
    assert_no_piece_of_12(&out, &key);
    assert!(out.ends_with(" rejected"), "{out}");
    assert!(out.starts_with("key "), "{out}");
}

#[test]
fn finding_11c_escapes_and_other_separators() {
    let key = anthropic();
    for sep in [
        "\\n",
        "\\\\n",
        "%0A",
        "%0D%0A",
        "\u{A0}",
        "\u{2028}",
        ".",
        ":",
        "\n            ",
        "\\u2028",
        "\r\n\t\t",
    ] {
        for cut in [20, 60, 69, 80, 96] {
            let text = format!("{{\"k\":\"{}{sep}{}\"}}", &key[..cut], &key[cut..]);
            let out = redact(&text);
            assert_no_piece_of_12(&out, &key);
            assert!(
                out.starts_with("{\"k\":\"") && out.ends_with("\"}"),
                "{out}"
            );
        }
    }
}

#[test]
fn finding_11d_a_short_middle_piece_does_not_stop_the_mask() {
    let key = anthropic();
    let text = format!("{}\n{}\n{}", &key[..63], &key[63..71], &key[71..]);
    let out = redact(&text);
    assert_no_piece_of_12(&out, &key);
}

#[test]
fn a_key_broken_inside_sk_is_found() {
    let key = anthropic();
    for text in [
        format!("s\n{}", &key[1..]),
        format!("sk\n{}", &key[2..]),
        format!("s\\nk\\n{}", &key[2..]),
    ] {
        assert!(may_hold_key(text.as_bytes()), "{text}");
        assert_no_piece_of_12(&redact(&text), &key);
    }
}

#[test]
fn a_complete_key_masks_only_itself() {
    let key = anthropic();
    let text = format!("key {key} is invalid: organization_identifier_x");
    assert_eq!(
        redact(&text),
        format!("key …{} is invalid: organization_identifier_x", &key[104..])
    );
    // Broken, but complete once reassembled: the words after it stay.
    let text = format!(
        "key {}\n  {} is invalid: organization_identifier_x",
        &key[..50],
        &key[50..]
    );
    let out = redact(&text);
    assert!(
        out.ends_with(" is invalid: organization_identifier_x"),
        "{out}"
    );
}

#[test]
fn ordinary_words_around_sk_stay() {
    for t in [
        "risk-based approach to the internationalization problem",
        "task-runner: processing organization_identifiers",
        "use sk-learn. classification_report",
        "disk-usage: 93%, threshold_exceeded_for_partition",
    ] {
        assert!(matches!(redact(t), Cow::Borrowed(_)), "{t}");
    }
}

#[test]
fn the_marker_alone_masks_around_it() {
    let key = legacy_openai();
    // `=` is no separator a key is broken by, but the marker still gives the
    // pieces away.
    let text = format!("{}={}", &key[..10], &key[10..]);
    let out = redact(&text);
    assert!(!out.contains("T3BlbkFJ"), "{out}");
}

#[test]
fn large_hostile_input_is_linear() {
    // ~1 MB of anchors of every rule: quadratic work here would take
    // minutes; linear work takes milliseconds.
    let unit = "sk-ant-abcdefghijklmnopqrstuvwxyzT3BlbkFJ-sk-\n";
    let text = unit.repeat(1 << 20 >> 5);
    let started = std::time::Instant::now();
    let out = redact(&text);
    assert!(!contains_key_shaped(&out));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // Every `-` starts the backward look for a broken `sk-`.
    let dashes = "- ".repeat(1 << 19);
    assert!(matches!(redact(&dashes), Cow::Borrowed(_)));
    eprintln!("{:?}", started.elapsed());
}

#[test]
fn fast_path_examples() {
    for line in [
        &b""[..],
        b"s",
        b"plain log line \xff with - dashes sk",
        b"2026-11-29 07:34:38.123 UTC [12345] LOG:  duration: 0.123 ms",
        b"checkpoint starting: time",
    ] {
        assert!(!may_hold_key(line), "{}", String::from_utf8_lossy(line));
    }
    for line in [
        &b"x sk-"[..],
        b"sk-learn",
        b"s\nk-",
        b"sk\\n-",
        b"s k -",
        b"T3BlbkFJ",
        &[b'k'; 40],
    ] {
        assert!(may_hold_key(line), "{}", String::from_utf8_lossy(line));
    }
}
