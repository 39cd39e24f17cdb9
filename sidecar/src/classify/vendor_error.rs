//! The structured parts of a vendor error body, and how a detail quotes them.
//!
//! The body is parsed with serde_json and only named fields are kept. A body
//! that does not parse (HTML, plain text, truncated or hostile JSON) yields
//! no fields at all and is never quoted: a raw body can carry a key in a
//! form redaction cannot see (`\u00XX` escapes splitting it into short
//! runs), so the detail then names the HTTP status only.

use byok_core::redact::redact;
use serde_json::Value;

/// Longest piece of vendor text (the message) quoted in a detail.
const MAX_QUOTED_CHARS: usize = 300;
/// Longest `error.type` / `error.code` quoted.
const MAX_IDENT_CHARS: usize = 60;
/// Longest request id quoted.
const MAX_REQUEST_ID_CHARS: usize = 80;

/// The structured parts of a vendor error body, whichever vendor's shape.
#[derive(Debug, Default)]
pub(super) struct VendorError {
    kind: Option<String>,
    code: Option<String>,
    message: Option<String>,
    request_id: Option<String>,
}

impl VendorError {
    /// Anthropic: `{"type":"error","error":{"type","message"},"request_id"}`;
    /// OpenAI: `{"error":{"message","type","param","code"}}`. Fields of any
    /// other JSON type than string are ignored; an unparseable body yields
    /// none (the request id header is still kept).
    pub(super) fn parse(body: &str, request_id_header: Option<&str>) -> VendorError {
        let doc: Option<Value> = serde_json::from_str(body).ok();
        let field = |pointer: &str| {
            doc.as_ref()
                .and_then(|d| d.pointer(pointer))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        VendorError {
            kind: field("/error/type").filter(|k| identifier(k, MAX_IDENT_CHARS)),
            code: field("/error/code").filter(|c| identifier(c, MAX_IDENT_CHARS)),
            message: field("/error/message"),
            request_id: request_id_header
                .map(str::to_owned)
                .or_else(|| field("/request_id"))
                .filter(|id| identifier(id, MAX_REQUEST_ID_CHARS)),
        }
    }

    /// Whether `error.type` or `error.code` equals `name`.
    pub(super) fn is(&self, name: &str) -> bool {
        self.kind.as_deref() == Some(name) || self.code.as_deref() == Some(name)
    }

    pub(super) fn message_has(&self, needle: &str) -> bool {
        self.message
            .as_deref()
            .is_some_and(|m| m.to_ascii_lowercase().contains(needle))
    }

    /// ` (HTTP 401 authentication_error: "invalid x-api-key", request req_1)`,
    /// redacted and bounded; ` (HTTP 503 Service Unavailable)` when the body
    /// named no error type or code.
    pub(super) fn quote(&self, status: u16) -> String {
        let mut out = format!(" (HTTP {status}");
        match self.code.as_deref().or(self.kind.as_deref()) {
            Some(kind) => {
                out.push(' ');
                out.push_str(kind);
            }
            None => {
                if let Some(reason) = reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                {
                    out.push(' ');
                    out.push_str(reason);
                }
            }
        }
        if let Some(message) = &self.message {
            out.push_str(": \"");
            out.push_str(&bounded(message, MAX_QUOTED_CHARS));
            out.push('"');
        }
        if let Some(id) = &self.request_id {
            out.push_str(", request ");
            out.push_str(id);
        }
        out.push(')');
        out
    }
}

/// Error types, codes and request ids are short identifiers
/// (`invalid_api_key`, `req_011CV…`); anything else is not quoted, so no
/// free text reaches a detail except the redacted message.
fn identifier(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !byok_core::redact::contains_key_shaped(text)
}

/// Redacted (before truncating, so a cut can't hide a key from the
/// redactor), control characters flattened, at most `max` characters.
fn bounded(text: &str, max: usize) -> String {
    let clean: String = redact(text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match clean.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean,
    }
}
