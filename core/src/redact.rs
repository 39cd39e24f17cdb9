//! `byok.redact` and the log hook: mask every key-shaped run in free text.
//!
//! Deliberately broader than [`crate::keys::recognize`]: a truncated key, a
//! key with a typo or a key of a format we do not know yet is still a
//! secret. Any `sk-` followed by 20 or more key characters is masked,
//! whatever precedes it (keys appear glued to `Bearer`, quotes, `key=`).
//! The price is that text like `task-scheduler-configuration-x` is masked
//! too; in a log line that is a far cheaper mistake than a leaked key.

use std::borrow::Cow;

use memchr::memmem;

use crate::keys::is_key_byte;
use crate::mask::mask;

const PREFIX: &[u8] = b"sk-";

/// Key characters that must follow `sk-` for a run to count as key-shaped.
/// Shorter runs are ordinary words (`sk-learn`); real keys have 48+.
const MIN_BODY: usize = 20;

/// `text` with every key-shaped run replaced by its [`mask`]
/// (`"…"` + last 4 characters).
///
/// Runs on every server log line, so text without a key costs one memchr
/// scan and no allocation (`Cow::Borrowed`).
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `text` already accounted for in `out`
    for (start, end) in key_runs(text) {
        let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
        buf.push_str(&text[copied..start]);
        buf.push_str(&mask(&text[start..end]));
        copied = end;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut buf) => {
            buf.push_str(&text[copied..]);
            Cow::Owned(buf)
        }
    }
}

/// Whether `text` holds anything [`redact`] would mask.
pub fn contains_key_shaped(text: &str) -> bool {
    key_runs(text).next().is_some()
}

/// Byte ranges of key-shaped runs, in order, non-overlapping. Every range
/// starts at an ASCII `s` and ends before a non-key byte or at the end, so
/// both ends are char boundaries.
fn key_runs(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let bytes = text.as_bytes();
    let mut pos = 0;
    std::iter::from_fn(move || {
        while let Some(found) = memmem::find(&bytes[pos..], PREFIX) {
            let start = pos + found;
            let body = start + PREFIX.len();
            let end = body
                + bytes[body..]
                    .iter()
                    .take_while(|&&b| is_key_byte(b))
                    .count();
            // Any later "sk-" inside a too-short run has a shorter run still,
            // so the scan can resume after the run either way.
            pos = end;
            if end - body >= MIN_BODY {
                return Some((start, end));
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
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
}
