//! The vendors whose keys pg_byok stores.
//!
//! A leaf: the error type names vendors, so this module imports nothing from
//! the crate. Parsing a vendor name a user typed (which can fail, and must
//! redact what it quotes) lives in `vendor_name.rs`.

use std::fmt;

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

    #[test]
    fn display_is_the_stored_spelling() {
        for v in Vendor::ALL {
            assert_eq!(v.to_string(), v.as_str());
            assert_eq!(v.as_str(), v.as_str().to_ascii_lowercase());
            assert!(v.display_name().eq_ignore_ascii_case(v.as_str()));
        }
    }
}
