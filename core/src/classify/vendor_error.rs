//! The structured parts of a vendor error body, and how a detail quotes them.

use super::json::Json;
use super::MAX_QUOTED_CHARS;
use crate::redact::redact;

/// The structured parts of a vendor error body, whichever vendor's shape.
pub(super) struct VendorError {
    kind: Option<String>,
    code: Option<String>,
    message: Option<String>,
    request_id: Option<String>,
}

impl VendorError {
    /// Anthropic: `{"type":"error","error":{"type","message"},"request_id"}`;
    /// OpenAI: `{"error":{"message","type","param","code"}}`. Unparseable
    /// bodies yield no fields; a short plain-text body is kept as the message.
    pub(super) fn parse(body: &str, request_id_header: Option<&str>) -> VendorError {
        let doc = Json::parse(body);
        let error = doc.as_ref().and_then(|d| d.get("error"));
        let field = |k: &str| {
            error
                .and_then(|e| e.get(k))
                .and_then(Json::as_str)
                .map(str::to_owned)
        };
        let message = match (&doc, field("message")) {
            (_, Some(m)) => Some(m),
            (None, None) if !body.trim().is_empty() && body.len() <= 2 * MAX_QUOTED_CHARS => {
                Some(body.trim().to_owned())
            }
            _ => None,
        };
        let request_id = request_id_header.map(str::to_owned).or_else(|| {
            doc.as_ref()
                .and_then(|d| d.get("request_id"))
                .and_then(Json::as_str)
                .map(str::to_owned)
        });
        VendorError {
            kind: field("type"),
            code: field("code"),
            message,
            request_id,
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
    /// redacted and bounded.
    pub(super) fn quote(&self, status: u16) -> String {
        let mut out = format!(" (HTTP {status}");
        if let Some(kind) = self.code.as_deref().or(self.kind.as_deref()) {
            out.push(' ');
            out.push_str(&bounded(kind, 60));
        }
        if let Some(message) = &self.message {
            out.push_str(": \"");
            out.push_str(&bounded(message, MAX_QUOTED_CHARS));
            out.push('"');
        }
        if let Some(id) = &self.request_id {
            out.push_str(", request ");
            out.push_str(&bounded(id, 80));
        }
        out.push(')');
        out
    }
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
