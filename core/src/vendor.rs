//! The vendors whose keys pg_byok stores.
//!
//! Vendor names arrive from SQL as free text; parsing them here means the
//! extension and the sidecar agree on spelling and on the error for a typo.

use std::fmt;

use crate::error::CoreError;

/// A vendor whose API keys pg_byok can store and validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vendor {
    Anthropic,
    OpenAi,
}

impl Vendor {
    /// Every vendor, in a stable order (used by tests and by iteration over
    /// per-vendor settings).
    pub const ALL: [Vendor; 2] = [Vendor::Anthropic, Vendor::OpenAi];

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

    /// The stored, lower-case spelling (`byok.keys.vendor`, AAD, metrics).
    pub fn as_str(&self) -> &'static str {
        match self {
            Vendor::Anthropic => "anthropic",
            Vendor::OpenAi => "openai",
        }
    }

    /// The vendor's own spelling, for messages a person reads.
    pub fn display_name(&self) -> &'static str {
        match self {
            Vendor::Anthropic => "Anthropic",
            Vendor::OpenAi => "OpenAI",
        }
    }
}

/// Displays the stored spelling, so `format!("{v}")` round-trips through
/// [`Vendor::parse`].
impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

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
