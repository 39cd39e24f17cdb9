//! Vendor key shapes: recognising a key and normalising what a user pasted.
//!
//! Neither vendor's keys carry a checksum, so shape is all we can check
//! offline; the sidecar's validation call is the real test. The point of the
//! shape check is to refuse, with a useful message, the mistakes that happen
//! in practice: truncated pastes, admin keys, OAuth tokens, the other
//! vendor's key, or plain text.
//!
//! Leniency is chosen per vendor:
//! - Anthropic: prefix `sk-ant-api03-` and charset are strict; length is
//!   accepted from 100 to 200 characters although keys today are exactly 108
//!   (93 body characters + `AA`). A strict 108 would lock customers out on the
//!   day Anthropic lengthens keys, while 100 still catches the common cut-off
//!   paste (a key missing its tail fails much later, as an opaque 401).
//! - OpenAI project/service-account keys: any body of 40 to 250 key characters
//!   after the prefix, with or without the `T3BlbkFJ` marker. OpenAI has
//!   changed these lengths before (58 → 74 per half); the exact published
//!   shapes are a subset of this rule.
//! - OpenAI legacy `sk-` keys: exact (20 + `T3BlbkFJ` + 20 alphanumerics);
//!   no new ones are issued, and a loose `sk-` rule would swallow everything.

use zeroize::Zeroizing;

use crate::error::CoreError;
use crate::vendor::Vendor;

/// Longest input considered at all. Checked before any other work: a 1 MB
/// string sent to `add_key` is an attack or an accident, never a key.
pub const MAX_INPUT_LEN: usize = 1024;

/// What kind of credential a well-formed string is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    AnthropicApi,
    AnthropicAdmin,
    AnthropicOAuth,
    OpenAiProject,
    OpenAiServiceAccount,
    OpenAiAdmin,
    OpenAiLegacy,
}

impl KeyKind {
    /// The vendor that issues this kind of credential.
    pub fn vendor(self) -> Vendor {
        match self {
            KeyKind::AnthropicApi | KeyKind::AnthropicAdmin | KeyKind::AnthropicOAuth => {
                Vendor::Anthropic
            }
            _ => Vendor::OpenAi,
        }
    }

    /// Whether pg_byok stores this kind (API keys only; admin keys can manage
    /// an organisation and OAuth tokens expire).
    pub fn is_storable(self) -> bool {
        !matches!(
            self,
            KeyKind::AnthropicAdmin | KeyKind::AnthropicOAuth | KeyKind::OpenAiAdmin
        )
    }
}

/// The characters both vendors use in key bodies (base64url alphabet).
pub(crate) const fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// base64 of "OpenAI": the middle of every OpenAI key (redaction looks for
/// it too).
pub(crate) const OPENAI_MARKER: &str = "T3BlbkFJ";

/// Which vendor and kind `candidate` is, if it is exactly one well-formed
/// credential (no surrounding whitespace; see [`normalize`] for that).
pub fn recognize(candidate: &str) -> Option<(Vendor, KeyKind)> {
    if candidate.len() > MAX_INPUT_LEN {
        return None;
    }
    let kind = recognize_kind(candidate)?;
    Some((kind.vendor(), kind))
}

fn recognize_kind(s: &str) -> Option<KeyKind> {
    // Most specific prefixes first: every key starts with "sk-", and every
    // Anthropic one with "sk-ant-".
    let anthropic_len = |s: &str| (100..=200).contains(&s.len());
    if let Some(body) = s.strip_prefix("sk-ant-api03-") {
        return (anthropic_len(s) && all_key_bytes(body)).then_some(KeyKind::AnthropicApi);
    }
    if let Some(body) = s.strip_prefix("sk-ant-admin01-") {
        return (anthropic_len(s) && all_key_bytes(body)).then_some(KeyKind::AnthropicAdmin);
    }
    if let Some(body) = s
        .strip_prefix("sk-ant-oat01-")
        .or_else(|| s.strip_prefix("sk-ant-ort01-"))
    {
        return (body.len() >= 40 && all_key_bytes(body)).then_some(KeyKind::AnthropicOAuth);
    }
    if s.starts_with("sk-ant-") {
        return None;
    }
    let openai_body = |body: &str| (40..=250).contains(&body.len()) && all_key_bytes(body);
    for (prefix, kind) in [
        ("sk-proj-", KeyKind::OpenAiProject),
        ("sk-svcacct-", KeyKind::OpenAiServiceAccount),
        ("sk-admin-", KeyKind::OpenAiAdmin),
    ] {
        if let Some(body) = s.strip_prefix(prefix) {
            return openai_body(body).then_some(kind);
        }
    }
    let body = s.strip_prefix("sk-")?;
    // Charset before slicing: a multi-byte character would make the slice panic.
    let legacy = body.len() == 48
        && body.bytes().all(|b| b.is_ascii_alphanumeric())
        && &body[20..28] == OPENAI_MARKER;
    legacy.then_some(KeyKind::OpenAiLegacy)
}

fn all_key_bytes(body: &str) -> bool {
    body.bytes().all(is_key_byte)
}

/// Characters stripped from both ends of a paste: Unicode whitespace (which
/// covers CR, LF, tab and NBSP) plus the invisible characters editors and
/// web pages add — a byte-order mark, a zero-width space.
fn is_paste_artifact(c: char) -> bool {
    c.is_whitespace() || c == '\u{FEFF}' || c == '\u{200B}'
}

/// Strips copy-paste artifacts from both ends (so a BOM after leading
/// whitespace goes too). Shared with `mask` so both agree on "the key".
pub(crate) fn trim_paste(raw: &str) -> &str {
    raw.trim_matches(is_paste_artifact)
}

/// Turns what a user pasted as `vendor`'s key into the exact key to store,
/// or says why it cannot be one.
///
/// The result is zeroized on drop; the caller still owns (and should wipe)
/// `raw`.
pub fn normalize(vendor: Vendor, raw: &str) -> Result<Zeroizing<String>, CoreError> {
    if raw.len() > MAX_INPUT_LEN {
        return Err(CoreError::KeyTooLong {
            len: raw.len(),
            max: MAX_INPUT_LEN,
        });
    }
    let key = trim_paste(raw);
    if key.is_empty() {
        return Err(CoreError::EmptyKey);
    }
    if key.chars().any(is_paste_artifact) {
        return Err(CoreError::InnerWhitespace);
    }
    match recognize_kind(key) {
        Some(kind @ (KeyKind::AnthropicAdmin | KeyKind::OpenAiAdmin)) => Err(CoreError::AdminKey {
            vendor: kind.vendor(),
        }),
        Some(KeyKind::AnthropicOAuth) => Err(CoreError::OAuthToken),
        Some(kind) if kind.vendor() != vendor => Err(CoreError::WrongVendor {
            expected: vendor,
            found: kind.vendor(),
        }),
        Some(_) => Ok(Zeroizing::new(key.to_owned())),
        None => Err(refusal_by_prefix(vendor, key)),
    }
}

/// Why a malformed string is refused, judged by its prefix alone: a
/// truncated admin key is still an admin key to the person who pasted it,
/// and a broken `sk-ant-…` given as OpenAI is still the wrong vendor.
fn refusal_by_prefix(vendor: Vendor, key: &str) -> CoreError {
    let other = |found: Vendor| {
        if found == vendor {
            CoreError::NotAKey { vendor }
        } else {
            CoreError::WrongVendor {
                expected: vendor,
                found,
            }
        }
    };
    if key.starts_with("sk-ant-admin01-") {
        CoreError::AdminKey {
            vendor: Vendor::Anthropic,
        }
    } else if key.starts_with("sk-admin-") {
        CoreError::AdminKey {
            vendor: Vendor::OpenAi,
        }
    } else if key.starts_with("sk-ant-oat01-") || key.starts_with("sk-ant-ort01-") {
        CoreError::OAuthToken
    } else if key.starts_with("sk-ant-") {
        other(Vendor::Anthropic)
    } else if key.starts_with("sk-proj-") || key.starts_with("sk-svcacct-") {
        other(Vendor::OpenAi)
    } else {
        // A bare malformed "sk-…" is too vague to blame on the other vendor.
        CoreError::NotAKey { vendor }
    }
}
