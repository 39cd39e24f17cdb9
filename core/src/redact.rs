//! `byok.redact`, the log hook and the sidecar's log writer: mask every
//! key-shaped run in free text. One rule, here, for all three.
//!
//! Deliberately broader than [`crate::keys::recognize`]: a truncated key, a
//! key broken across lines or escaped into JSON, or a key of a format we do
//! not know yet is still a secret.
//!
//! # The rule
//!
//! Text is read as *pieces*, maximal stretches of key characters
//! (`[A-Za-z0-9_-]`), and the gaps between them. A gap *joins* its two
//! pieces when it could have been inserted into a key on its way to a log:
//! at most 8 units (a whitespace run of any kind and length, NBSP, U+2028
//! and zero-width spaces included, is one unit) of whitespace, quotes,
//! `| + , . : ;`, JSON/C escapes (`\n`, `\\n`, `\u2028`) and URL escapes
//! (`%0A`), at most 64 bytes in all. Joined pieces form a *group*; reading a
//! group's key characters in a row, with the gaps left out, *reassembles* a
//! broken key.
//!
//! A *key region* of a group starts at:
//! 1. an `sk-` followed by 20 or more key characters within its own piece
//!    (keys appear glued to `Bearer`, quotes, `key=`; `sk-learn` is a word);
//! 2. an `sk-` in the reassembled text, even one broken itself, followed by
//!    a vendor's key prefix (`ant-`, `proj-`, `svcacct-`, `admin-`) or the
//!    legacy OpenAI shape (20 alphanumerics + `T3BlbkFJ`), and 20 or more
//!    key characters in all;
//!
//!    and runs, in the reassembled text, over the key: exactly its length
//!    when the text there is a complete published key ending where a piece
//!    ends, otherwise as far as the longest key could reach (220 characters
//!    after `sk-ant-`, 270 after any other `sk-`);
//! 3. the OpenAI marker `T3BlbkFJ` inside a piece, when no region of rule 1
//!    or 2 covers it: 90 characters either side (base64 of "OpenAI"; only
//!    OpenAI keys carry it);
//! 4. a piece of 40 or more characters, whatever it holds: just that piece
//!    (the rest of a key whose head was lost, base64 secrets, JWT parts).
//!
//! Every piece a region touches is masked, from the region's start (or the
//! piece's, if later) to the piece's end; each masked piece becomes `…` plus
//! its last 4 characters (see [`mask`]). So a key broken anywhere by those
//! separators leaves at most 4 characters of each piece.
//!
//! Masked output holds nothing key-shaped any more: a mask starts with `…`,
//! which joins nothing, and every anchor of the input was inside a masked
//! piece (tested as a property: redacting twice changes nothing).
//!
//! The price is that a long word glued to a key (`task-scheduler-config`),
//! a 40-digit hash, or the words after a truncated (incomplete) key within
//! its reach are masked too; in a log line that is a far cheaper mistake than
//! a leaked key. An intact, complete key masks only itself.

mod pieces;

use std::borrow::Cow;

use crate::mask::mask;
use pieces::{pieces, Piece, MAX_GAP_BYTES};

const PREFIX: &[u8] = b"sk-";

const OPENAI_MARKER: &[u8] = crate::keys::OPENAI_MARKER.as_bytes();

/// Key characters that must follow `sk-` (rules 1 and 2). Shorter runs are
/// ordinary words (`sk-learn`); real keys have 48+.
const MIN_BODY: usize = 20;

/// A piece this long is masked whatever it holds (rule 4). Real keys are
/// 51+ characters; identifiers and words are far shorter, and uuids (36)
/// stay readable.
const MIN_BARE_RUN: usize = 40;

/// How far a region reaches when the key is not complete: past the longest
/// key `keys` accepts (Anthropic 200, OpenAI prefix + 250).
const MAX_ANTHROPIC_KEY: usize = 220;
const MAX_KEY: usize = 270;

/// How far a `T3BlbkFJ` region reaches either side: past the longest
/// published half (74) plus the longest prefix (`sk-svcacct-`).
const MARKER_REACH: usize = 90;

/// Vendor key prefixes after `sk-` that make a reassembled `sk-` a key.
const VENDOR_PREFIXES: [&[u8]; 4] = [b"ant-", b"proj-", b"svcacct-", b"admin-"];

/// `text` with every key-shaped run replaced by its [`mask`]
/// (`"…"` + last 4 characters).
///
/// Runs on every server log line, so text without a key usually costs a
/// few memchr scans and no allocation (`Cow::Borrowed`); see
/// [`may_hold_key`].
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
///
/// Looks for what every region needs: an `sk-` (or, for one broken by a
/// separator, a `-` with an `s` and then a `k` shortly before it), the
/// `T3BlbkFJ` marker, or 40 key characters in a row.
pub fn may_hold_key(bytes: &[u8]) -> bool {
    may_hold_sk_or_marker(bytes) || has_stretch(bytes, MIN_BARE_RUN)
}

/// Whether some `-` has an `s` followed by a `k` before it, within the two
/// gaps an `sk-` broken twice can span (so a plain `sk-` too), or some `T`
/// starts the marker. Over-approximates (`task-`,
/// `desk -`): it only decides whether to look closer.
fn may_hold_sk_or_marker(bytes: &[u8]) -> bool {
    const REACH: usize = 2 * MAX_GAP_BYTES + 2;
    let sk = memchr::memchr_iter(b'-', bytes).any(|dash| {
        let before = &bytes[dash.saturating_sub(REACH)..dash];
        memchr::memrchr(b'k', before).is_some_and(|k| memchr::memchr(b's', &before[..k]).is_some())
    });
    sk || MARKER_FINDER.find(bytes).is_some()
}

/// Built once: `memmem::find` would build a searcher on every call.
static MARKER_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(OPENAI_MARKER));

/// Where the marker starts in `text`, if anywhere (a `T` is rare enough in
/// key-character text that this beats a searcher's setup).
fn markers(text: &[u8]) -> impl Iterator<Item = usize> + '_ {
    memchr::memchr_iter(b'T', text).filter(move |&t| text[t..].starts_with(OPENAI_MARKER))
}

/// Whether `bytes` has `len` key characters in a row. Looks at every
/// `len`-th byte only: a stretch of `len` must cover one of them.
fn has_stretch(bytes: &[u8], len: usize) -> bool {
    use crate::keys::is_key_byte;
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

/// Byte ranges to mask, in order, non-overlapping, at most one per piece.
/// Every range starts and ends next to an ASCII byte (or the text's ends),
/// so for UTF-8 input both ends are char boundaries. Works on any bytes
/// (the log hook's text may not be UTF-8).
pub fn key_ranges(bytes: &[u8]) -> Vec<(usize, usize)> {
    let all = pieces(bytes);
    let mut ranges = Vec::new();
    let mut group = Group::default();
    let mut first = 0;
    for i in 1..=all.len() {
        if i == all.len() || !all[i].joined {
            group.mask(bytes, &all[first..i], &mut ranges);
            first = i;
        }
    }
    ranges
}

/// One group of joined pieces, reassembled; buffers reused across groups.
#[derive(Default)]
struct Group {
    /// The group's key characters in a row.
    text: Vec<u8>,
    /// Where each piece starts in `text`.
    starts: Vec<usize>,
    /// Key regions, in `text` coordinates.
    regions: Vec<(usize, usize)>,
}

impl Group {
    fn mask(&mut self, bytes: &[u8], pieces: &[Piece], ranges: &mut Vec<(usize, usize)>) {
        if !may_anchor(bytes, pieces) {
            return; // most groups of a log line: no copy, no search
        }
        self.text.clear();
        self.starts.clear();
        self.regions.clear();
        self.text
            .reserve(pieces[pieces.len() - 1].end - pieces[0].start);
        self.starts.reserve(pieces.len());
        for p in pieces {
            self.starts.push(self.text.len());
            self.text.extend_from_slice(&bytes[p.start..p.end]);
        }
        self.find_regions(pieces);
        if self.regions.is_empty() {
            return;
        }
        // One sweep over pieces and regions, both in order (a text full of
        // `sk-` must not cost pieces × regions).
        self.regions.sort_unstable();
        let mut next = 0; // first region not yet started at `from`
        let mut reach = 0; // furthest end of the regions started so far
        for (i, p) in pieces.iter().enumerate() {
            let (from, to) = (self.starts[i], self.starts[i] + p.len());
            while next < self.regions.len() && self.regions[next].0 <= from {
                reach = reach.max(self.regions[next].1);
                next += 1;
            }
            let masked_from = if reach > from {
                Some(from)
            } else {
                self.regions
                    .get(next)
                    .map(|r| r.0)
                    .filter(|&start| start < to)
            };
            if let Some(at) = masked_from {
                ranges.push((p.start + (at - from), p.end));
            }
        }
    }

    /// Rules 1 to 4 of the module docs.
    fn find_regions(&mut self, pieces: &[Piece]) {
        let mut regions = std::mem::take(&mut self.regions);
        let text = &self.text;
        // Every `sk-` of the group: each `-` with `sk` before it.
        let sk_at = memchr::memchr_iter(b'-', text)
            .filter(|&dash| dash >= 2 && &text[dash - 2..dash] == b"sk")
            .map(|dash| dash - 2);
        for at in sk_at {
            let piece = self.piece_at(at);
            let piece_end = self.starts[piece] + pieces[piece].len();
            let after = &text[at + PREFIX.len()..];
            let intact = piece_end >= at + PREFIX.len() + MIN_BODY;
            let reassembled = after.len() >= MIN_BODY
                && (VENDOR_PREFIXES.iter().any(|p| after.starts_with(p))
                    || is_legacy_openai_start(after));
            if intact || reassembled {
                let complete = complete_key_lens(&text[at..]).find(|&n| self.is_piece_end(at + n));
                let reach = match complete {
                    Some(len) => len,
                    None if after.starts_with(b"ant-") => MAX_ANTHROPIC_KEY,
                    None => MAX_KEY,
                };
                regions.push((at, (at + reach).min(text.len())));
            }
        }
        // Rule 1/2 regions start in order; `covered[k]` is the furthest end
        // among the first k + 1, so "is m covered" is one binary search.
        let covered: Vec<usize> = regions
            .iter()
            .scan(0, |end, r| {
                *end = r.1.max(*end);
                Some(*end)
            })
            .collect();
        let is_covered = |m: usize| {
            let started = regions.partition_point(|r| r.0 <= m);
            started > 0 && covered[started - 1] > m
        };
        let mut other_regions = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            if p.len() >= MIN_BARE_RUN {
                other_regions.push((self.starts[i], self.starts[i] + p.len()));
            }
        }
        // Markers inside one piece (a marker reassembled across a gap is
        // left to rules 1 and 2).
        let whole = |m: usize| self.piece_at(m) == self.piece_at(m + OPENAI_MARKER.len() - 1);
        for m in markers(text).filter(|&m| whole(m) && !is_covered(m)) {
            let end = (m + OPENAI_MARKER.len() + MARKER_REACH).min(text.len());
            other_regions.push((m.saturating_sub(MARKER_REACH), end));
        }
        regions.append(&mut other_regions);
        self.regions = regions;
    }

    /// The piece holding `text[at]`.
    fn piece_at(&self, at: usize) -> usize {
        self.starts.partition_point(|&s| s <= at) - 1
    }

    /// Whether a piece ends at `text[..at]` (or the group does).
    fn is_piece_end(&self, at: usize) -> bool {
        at == self.text.len() || self.starts.binary_search(&at).is_ok()
    }
}

/// Whether a group can hold a region at all: a piece of [`MIN_BARE_RUN`],
/// or, anywhere in its span, what [`may_hold_key`] looks for. Most groups of
/// a log line fail this, and then cost no copy and no search.
fn may_anchor(bytes: &[u8], pieces: &[Piece]) -> bool {
    let span = &bytes[pieces[0].start..pieces[pieces.len() - 1].end];
    pieces.iter().any(|p| p.len() >= MIN_BARE_RUN) || may_hold_sk_or_marker(span)
}

fn is_legacy_openai_start(after_sk: &[u8]) -> bool {
    after_sk.len() >= 28
        && after_sk[..20].iter().all(u8::is_ascii_alphanumeric)
        && &after_sk[20..28] == OPENAI_MARKER
}

/// The lengths of the complete published keys `text` (starting with `sk-`)
/// may start with (exact shapes only: a key cut short must not end its
/// region early). `text` holds key characters only.
fn complete_key_lens(text: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let anthropic = [&b"sk-ant-api03-"[..], b"sk-ant-admin01-"]
        .into_iter()
        .filter(|prefix| text.starts_with(prefix))
        .map(|prefix| prefix.len() + 93 + 2)
        .filter(|&len| text.len() >= len && &text[len - 2..len] == b"AA");
    let openai = [&b"sk-proj-"[..], b"sk-svcacct-", b"sk-admin-"]
        .into_iter()
        .filter(|prefix| text.starts_with(prefix))
        .flat_map(|prefix| [74, 58].map(|half| (prefix.len() + half, half)))
        .filter(|&(marker, half)| {
            text.len() >= marker + OPENAI_MARKER.len() + half
                && &text[marker..marker + OPENAI_MARKER.len()] == OPENAI_MARKER
        })
        .map(|(marker, half)| marker + OPENAI_MARKER.len() + half);
    let legacy = (is_legacy_openai_start(&text[PREFIX.len()..])
        && text.len() >= 51
        && text[31..51].iter().all(u8::is_ascii_alphanumeric))
    .then_some(51);
    anthropic.chain(openai).chain(legacy)
}

#[cfg(test)]
mod tests;
