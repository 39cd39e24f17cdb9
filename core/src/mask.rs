//! `byok.mask`: the only form of a key pg_byok ever shows back.

use crate::keys::trim_paste;

/// Shortest input whose last 4 characters may be shown. Below this, 4
/// characters would be half the secret or more.
const MIN_MASKABLE_CHARS: usize = 8;

/// Characters of the key a mask reveals.
const SHOWN_CHARS: usize = 4;

/// `"…"` (U+2026) followed by the last 4 characters of `key` after trimming
/// copy-paste whitespace; just `"…"` for inputs shorter than 8 characters.
///
/// Enough for a person to tell two keys apart, never enough to use one.
pub fn mask(key: &str) -> String {
    let key = trim_paste(key);
    if key.chars().nth(MIN_MASKABLE_CHARS - 1).is_none() {
        return "…".to_owned();
    }
    // char_indices, not byte offsets: the input may hold any Unicode text.
    let start = key
        .char_indices()
        .rev()
        .nth(SHOWN_CHARS - 1)
        .map_or(0, |(i, _)| i);
    let mut out = String::with_capacity(3 + key.len() - start);
    out.push('…');
    out.push_str(&key[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn shows_ellipsis_and_last_four() {
        assert_eq!(mask("sk-ant-api03-abcdefgh1234"), "…1234");
    }

    #[test]
    fn trims_before_masking() {
        assert_eq!(mask("\u{FEFF} sk-proj-abcdefWXYZ\r\n"), "…WXYZ");
    }

    #[test]
    fn short_inputs_show_nothing() {
        for s in ["", "a", "abcdefg", "  abcdefg  ", "\u{FEFF}"] {
            assert_eq!(mask(s), "…", "{s:?}");
        }
        assert_eq!(mask("abcdefgh"), "…efgh");
    }

    #[test]
    fn counts_characters_not_bytes() {
        assert_eq!(mask("ééééééé"), "…");
        assert_eq!(mask("ééééé1234"), "…1234");
        assert_eq!(mask("abcdéèêë"), "…éèêë");
    }
}
