//! Splits text into *pieces* (maximal stretches of key characters) and
//! decides, for each gap between two pieces, whether the gap could have been
//! inserted into a key by the tools that carry keys into logs: wrapping,
//! indentation, quoting and concatenation, JSON and URL escaping.
//!
//! Works on bytes (the log hook sees text in the server encoding, not always
//! UTF-8); a byte that is not valid UTF-8 is an ordinary, non-joining gap.

use crate::keys::is_key_byte;

/// Most separator units in a joining gap; a run of whitespace (any length,
/// so indentation is fine) counts as one. `' || '` is six.
const MAX_GAP_UNITS: usize = 8;

/// Most bytes in a joining gap (a line break plus deep indentation).
pub(super) const MAX_GAP_BYTES: usize = 64;

/// A maximal stretch `bytes[start..end]` of key characters (all ASCII, so
/// both ends are char boundaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Piece {
    pub start: usize,
    pub end: usize,
    /// Whether the gap before it could sit inside a key (see the module doc).
    pub joined: bool,
}

impl Piece {
    pub fn len(&self) -> usize {
        self.end - self.start
    }
}

/// What one unit of a gap is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Any whitespace, including NBSP, U+2028/2029 and zero-width spaces.
    Space,
    /// Quotes, concatenation and punctuation that wraps or lists values
    /// (`' " `` ` `` | + , . : ;`), and escapes: JSON/C backslash escapes
    /// (`\n`, `\\n`, `\u2028`, `\x0a`, a lone `\`) and URL `%XX`.
    Joiner,
    /// Anything else: a key is not broken by it.
    Other,
}

/// [`is_key_byte`] as a table: this loop sees every byte of a log line
/// that may hold a key.
const KEY_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_key_byte(b as u8);
        b += 1;
    }
    table
};

/// Every piece of `bytes`, in order.
pub(super) fn pieces(bytes: &[u8]) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::with_capacity(bytes.len() / 8 + 1);
    let mut gap = Gap::default();
    let mut i = 0;
    while i < bytes.len() {
        if KEY_BYTE[bytes[i] as usize] {
            let start = i;
            i += bytes[i..]
                .iter()
                .position(|&b| !KEY_BYTE[b as usize])
                .unwrap_or(bytes.len() - i);
            let joined = !out.is_empty() && gap.joins();
            out.push(Piece {
                start,
                end: i,
                joined,
            });
            gap = Gap::default();
        } else {
            let (len, unit) = gap_unit(bytes, i);
            gap.add(unit, len);
            i += len;
        }
    }
    out
}

/// The gap between two pieces, as it is read.
#[derive(Default)]
struct Gap {
    units: usize,
    bytes: usize,
    other: bool,
    after_space: bool,
}

impl Gap {
    fn add(&mut self, unit: Unit, len: usize) {
        if !(unit == Unit::Space && self.after_space) {
            self.units += 1;
        }
        self.after_space = unit == Unit::Space;
        self.bytes += len;
        self.other |= unit == Unit::Other;
    }

    fn joins(&self) -> bool {
        !self.other && self.units <= MAX_GAP_UNITS && self.bytes <= MAX_GAP_BYTES
    }
}

/// The unit starting at `bytes[i]` (not a key character) and its length.
/// Escapes swallow the key characters that belong to them (`n` of `\n`,
/// `0A` of `%0A`), so those never count as characters of a piece.
fn gap_unit(bytes: &[u8], i: usize) -> (usize, Unit) {
    let hex_at = |at: usize, n: usize| {
        bytes.len() >= at + n && bytes[at..at + n].iter().all(u8::is_ascii_hexdigit)
    };
    match bytes[i] {
        b'\\' => {
            let mut j = i;
            while j < bytes.len() && bytes[j] == b'\\' {
                j += 1;
            }
            let tail = match bytes.get(j) {
                Some(b'n' | b'r' | b't' | b'b' | b'f' | b'v' | b'0') => 1,
                Some(b'u') if hex_at(j + 1, 4) => 5,
                Some(b'x') if hex_at(j + 1, 2) => 3,
                _ => 0,
            };
            (j - i + tail, Unit::Joiner)
        }
        b'%' if hex_at(i + 1, 2) => (3, Unit::Joiner),
        b if b.is_ascii_whitespace() || b == 0x0b => (1, Unit::Space),
        b'\'' | b'"' | b'`' | b'|' | b'+' | b',' | b'.' | b':' | b';' => (1, Unit::Joiner),
        b if b < 0x80 => (1, Unit::Other),
        b => {
            let width = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => return (1, Unit::Other),
            };
            let Some(c) = bytes
                .get(i..i + width)
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.chars().next())
            else {
                return (1, Unit::Other);
            };
            let space = c.is_whitespace()
                || matches!(
                    c,
                    '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
                );
            (width, if space { Unit::Space } else { Unit::Other })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(text: &str) -> Vec<bool> {
        pieces(text.as_bytes()).iter().map(|p| p.joined).collect()
    }

    #[test]
    fn escapes_belong_to_the_gap() {
        for sep in [
            "\\n", "\\\\n", "\\r\\n", "\\u2028", "\\u00a0", "%0A", "%0D%0A", "%C2%A0", "\\",
        ] {
            let text = format!("abc{sep}def");
            let p = pieces(text.as_bytes());
            assert_eq!(p.len(), 2, "{sep}");
            assert_eq!(&text[p[1].start..p[1].end], "def", "{sep}");
            assert!(p[1].joined, "{sep}");
        }
    }

    #[test]
    fn whitespace_runs_count_once() {
        assert_eq!(
            joined("a\n                                b"),
            [false, true]
        );
        assert_eq!(
            joined("a\u{A0}b\u{2028}c\u{200B}\u{FEFF} d"),
            [false, true, true, true]
        );
        assert_eq!(joined("a' || 'b"), [false, true]);
        assert_eq!(joined("a.b:c;d,e"), [false, true, true, true, true]);
    }

    #[test]
    fn other_characters_and_long_gaps_separate() {
        assert_eq!(joined("a=b&c/d(e)f{g}h"), [false; 8]);
        assert_eq!(joined("aéb→c"), [false; 3]);
        assert_eq!(joined("a. . . . . b"), [false, false]); // 9 units
        assert_eq!(joined(&format!("a\n{}b", " ".repeat(64))), [false, false]);
        assert_eq!(joined("a%zzb"), [false, false]);
        // A byte that is not UTF-8 (LATIN1 NBSP) is not whitespace here.
        assert_eq!(
            pieces(b"a\xa0b")
                .iter()
                .map(|p| p.joined)
                .collect::<Vec<_>>(),
            [false, false]
        );
    }
}
