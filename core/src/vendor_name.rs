//! Vendor names as users type them (SQL arguments, sidecar rows).
//!
//! Parsing them in one place means the extension and the sidecar agree on
//! spelling and on the error for a typo. The error quotes the name, so the
//! quote is redacted first: people paste keys into the wrong argument.

use crate::error::CoreError;
use crate::redact::redact;
use crate::vendor::Vendor;

/// How many characters of an unknown vendor name a message quotes: enough to
/// recognise a typo, too few to carry a secret someone pasted in the wrong box.
const VENDOR_QUOTE_CHARS: usize = 20;

impl Vendor {
    /// Parses a vendor name as users type it: surrounding whitespace ignored,
    /// case-insensitive, because `'OpenAI'` and `'openai '` clearly mean the
    /// same vendor and refusing them would only annoy.
    pub fn parse(s: &str) -> Result<Vendor, CoreError> {
        let name = s.trim();
        Vendor::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| CoreError::unknown_vendor(s))
    }
}

impl CoreError {
    /// Builds [`CoreError::UnknownVendor`] from raw user input. The input is
    /// redacted *before* truncation, so a key pasted into the vendor argument
    /// is masked as a whole rather than cut to a 20-character prefix that
    /// would no longer look key-shaped and would leak its first characters.
    pub fn unknown_vendor(raw: &str) -> CoreError {
        let redacted = redact(raw.trim());
        let shown = redacted
            .chars()
            .take(VENDOR_QUOTE_CHARS)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        CoreError::UnknownVendor { shown }
    }
}

#[cfg(test)]
mod tests {
    use crate::error::{CoreError, ErrorKind};
    use crate::vendor::Vendor;

    #[test]
    fn parses_known_names_in_any_case_with_spaces() {
        assert_eq!(Vendor::parse("anthropic").unwrap(), Vendor::Anthropic);
        assert_eq!(Vendor::parse("  OpenAI\n").unwrap(), Vendor::OpenAi);
        assert_eq!(Vendor::parse("ANTHROPIC").unwrap(), Vendor::Anthropic);
    }

    #[test]
    fn as_str_round_trips() {
        for v in Vendor::ALL {
            assert_eq!(Vendor::parse(v.as_str()).unwrap(), v);
            assert_eq!(Vendor::parse(&v.to_string()).unwrap(), v);
        }
    }

    #[test]
    fn gemini_is_unknown() {
        let e = Vendor::parse("gemini").unwrap_err();
        assert!(matches!(e, CoreError::UnknownVendor { .. }));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("gemini"));
        assert!(e.hint().unwrap().contains("openai"));
    }

    #[test]
    fn empty_and_near_misses_are_unknown() {
        for s in ["", "   ", "open ai", "anthropic-x", "claude"] {
            assert!(Vendor::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn a_key_pasted_as_vendor_is_not_echoed() {
        let key = format!("sk-ant-api03-{}AA", "x".repeat(93));
        let msg = Vendor::parse(&key).unwrap_err().to_string();
        assert!(!msg.contains("xxxxxxxx"), "{msg}");
        assert!(!msg.contains("api03"), "{msg}");
    }

    #[test]
    fn unknown_vendor_quotes_at_most_20_chars() {
        let long = "abcdefghij ".repeat(10);
        let msg = Vendor::parse(&long).unwrap_err().to_string();
        assert!(msg.contains("abcdefghij abcdefghi"));
        assert!(!msg.contains("abcdefghij abcdefghij"));
    }
}
