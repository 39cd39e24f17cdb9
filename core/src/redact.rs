//! `byok.redact` and the log hook: mask every key-shaped run in free text.
//!
//! Deliberately broader than [`crate::keys::recognize`]: a truncated key, a
//! key with a typo, a key broken by a line wrap or a key of a format we do
//! not know yet is still a secret. Masked, in a stretch of key characters
//! (`[A-Za-z0-9_-]`):
//! - from its first `sk-` on, when 20 or more key characters follow it,
//!   whatever precedes it (keys appear glued to `Bearer`, quotes, `key=`);
//! - the whole stretch, when it is 40 or more characters long (the rest of a
//!   key broken by a space or an escape, base64 secrets, JWT parts);
//! - a stretch of 12 or more right after a masked one, separated only by
//!   whitespace, quotes or concatenation (`'…' || '…'`): the tail of a key
//!   pasted across lines.
//!
//! The price is that text like `task-scheduler-configuration-x`, a 40-digit
//! hash or a long word after a key is masked too; in a log line that is a
//! far cheaper mistake than a leaked key.

use std::borrow::Cow;

use memchr::memmem;

use crate::keys::is_key_byte;
use crate::mask::mask;

const PREFIX: &[u8] = b"sk-";

/// Key characters that must follow `sk-` for a run to count as key-shaped.
/// Shorter runs are ordinary words (`sk-learn`); real keys have 48+.
const MIN_BODY: usize = 20;

/// A stretch of key characters this long is masked whatever it starts with.
/// Real keys are 51+ characters; identifiers and words are far shorter, and
/// uuids (36) stay readable.
const MIN_BARE_RUN: usize = 40;

/// A stretch this long right after a masked one (see the module docs).
const MIN_TAIL_RUN: usize = 12;

/// How far (in separator bytes) a tail may sit after a masked stretch.
const MAX_TAIL_GAP: usize = 8;

/// `text` with every key-shaped run replaced by its [`mask`]
/// (`"…"` + last 4 characters).
///
/// Runs on every server log line, so text without a key costs a memchr scan
/// and a skipping scan for long stretches, and no allocation
/// (`Cow::Borrowed`).
pub fn redact(text: &str) -> Cow<'_, str> {
    if !may_hold_key(text.as_bytes()) {
        return Cow::Borrowed(text);
    }
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `text` already accounted for in `out`
    for (start, end) in key_ranges(text.as_bytes()) {
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
    may_hold_key(text.as_bytes()) && !key_ranges(text.as_bytes()).is_empty()
}

/// A cheap test that `bytes` may hold a key-shaped run: false means
/// [`key_ranges`] is certainly empty. For hot paths (every log line).
pub fn may_hold_key(bytes: &[u8]) -> bool {
    SK_FINDER.find(bytes).is_some() || has_stretch(bytes, MIN_BARE_RUN)
}

/// Built once: `memmem::find` would build a searcher on every log line.
static SK_FINDER: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(PREFIX));

/// Whether `bytes` has `len` key characters in a row. Looks at every
/// `len`-th byte only: a stretch of `len` must cover one of them.
fn has_stretch(bytes: &[u8], len: usize) -> bool {
    let mut probe = len - 1;
    while probe < bytes.len() {
        if !is_key_byte(bytes[probe]) {
            probe += len;
            continue;
        }
        let start = bytes[..probe]
            .iter()
            .rev()
            .take_while(|&&b| is_key_byte(b))
            .count();
        let end = bytes[probe..]
            .iter()
            .take_while(|&&b| is_key_byte(b))
            .count();
        if start + end >= len {
            return true;
        }
        probe += end + len;
    }
    false
}

/// Byte ranges to mask, in order, non-overlapping. Every range starts and
/// ends next to an ASCII byte (or the text's ends), so for UTF-8 input both
/// ends are char boundaries.
pub fn key_ranges(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_key_byte(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_key_byte(bytes[i]) {
            i += 1;
        }
        if let Some(from) = masked_part(bytes, start, i, ranges.last().copied()) {
            ranges.push((from, i));
        }
    }
    ranges
}

/// Where the stretch `bytes[start..end]` is masked from, if at all.
fn masked_part(
    bytes: &[u8],
    start: usize,
    end: usize,
    previous: Option<(usize, usize)>,
) -> Option<usize> {
    let stretch = &bytes[start..end];
    if stretch.len() >= MIN_BARE_RUN {
        return Some(start);
    }
    if let Some(p) = memmem::find(stretch, PREFIX) {
        if stretch.len() - p - PREFIX.len() >= MIN_BODY {
            return Some(start + p);
        }
    }
    let (_, prev_end) = previous?;
    let gap = &bytes[prev_end..start];
    let joins = gap.len() <= MAX_TAIL_GAP
        && gap
            .iter()
            .all(|b| b.is_ascii_whitespace() || b"'\"|+,".contains(b));
    (joins && stretch.len() >= MIN_TAIL_RUN).then_some(start)
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
}
