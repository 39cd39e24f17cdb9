//! What a vendor's answer to a validation probe means for the key.
//!
//! One pure function per kind of answer (an HTTP response, or no response at
//! all), following the classification table in the reference notes exactly:
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx | `Valid` |
//! | 401 | `Invalid` (wrong, rotated or revoked key) |
//! | 403 | `Invalid`, detail says why (permission, region) |
//! | Anthropic 400 "credit balance is too low" | `Valid` + warning |
//! | OpenAI 429 `insufficient_quota` | `Valid` + warning |
//! | 429 rate limit | `Retry`, honouring `Retry-After` |
//! | 5xx, 529, 408, timeout, refused, reset, TLS | `Retry`, `vendor_fault` |
//! | anything else (400, 404, 422 …) | `Retry`: the probe itself was refused, so the key was not judged |
//!
//! The last row is a choice the table leaves open: a vendor that refuses the
//! probe request (retired model, wrong base URL) has said nothing about the
//! key, so the key is neither activated nor erased; it is retried and ends
//! `unverified` with a detail that points at the sidecar's settings.
//!
//! Every `detail` is safe to store and log, and users and the audit log see
//! it: the only vendor text it ever quotes is the parsed `error.message`
//! (plus the short identifiers `error.type`/`error.code` and the request id),
//! passed through [`byok_core::redact::redact`] (an error body may echo the
//! key) and bounded. A body that does not parse as JSON is never quoted: the
//! detail then names the HTTP status only (security finding 12: a raw body
//! defeats redaction with `\u00XX` escapes that split the key into short runs).

mod vendor_error;

use byok_core::Vendor;
use vendor_error::VendorError;

/// What the worker should tell `byok.finish_job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Valid,
    Invalid,
    Retry,
}

impl Outcome {
    /// The `outcome` argument of `byok.finish_job`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::Invalid => "invalid",
            Outcome::Retry => "retry",
        }
    }
}

/// The verdict on one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// For the key's `status_detail`: actionable, redacted, at most ~600 chars.
    pub detail: String,
    /// The vendor's `Retry-After` (or `retry-after-ms`), capped at an hour.
    pub retry_after_seconds: Option<u32>,
    /// Valid, but the user should act (no credit, no quota).
    pub warning: bool,
    /// The vendor itself is in trouble (5xx, 529, no answer): says nothing
    /// about this key. Feeds the sidecar's per-vendor circuit breaker.
    pub vendor_fault: bool,
}

/// Why no HTTP answer arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// No complete answer within the request timeout.
    Timeout,
    /// Connection refused, host unreachable, DNS failure.
    Connect,
    /// TLS handshake or certificate failure.
    Tls,
    /// The connection was reset or closed before a complete answer.
    Reset,
    /// Any other failure to get an answer.
    Other,
}

/// Classifies an HTTP answer. `headers` are (name, value) pairs; names are
/// matched case-insensitively. `body` is the response body as text.
pub fn classify_response(
    vendor: Vendor,
    status: u16,
    headers: &[(&str, &str)],
    body: &str,
) -> Verdict {
    let err = VendorError::parse(
        body,
        header(headers, "request-id").or(header(headers, "x-request-id")),
    );
    let name = vendor.display_name();
    let retry_after = retry_after_seconds(headers);
    let verdict = |outcome, detail: String| Verdict {
        outcome,
        detail,
        retry_after_seconds: None,
        warning: false,
        vendor_fault: false,
    };
    match status {
        200..=299 => verdict(Outcome::Valid, format!("{name} accepted the key (HTTP {status}).")),
        400 if vendor == Vendor::Anthropic && err.message_has("credit balance") => Verdict {
            warning: true,
            ..verdict(
                Outcome::Valid,
                format!(
                    "Warning: the key works, but {name} says the account's credit balance is too low \
                     to make calls{}; add credits under Plans & Billing in the Anthropic Console.",
                    err.quote(status)
                ),
            )
        },
        429 if vendor == Vendor::OpenAi && err.is("insufficient_quota") => Verdict {
            warning: true,
            ..verdict(
                Outcome::Valid,
                format!(
                    "Warning: the key works, but the {name} account has no quota left{}; add credit \
                     or raise the usage limit in the OpenAI billing settings.",
                    err.quote(status)
                ),
            )
        },
        401 => verdict(Outcome::Invalid, unauthorized_detail(vendor, &err)),
        403 => verdict(Outcome::Invalid, forbidden_detail(vendor, &err)),
        429 => Verdict {
            retry_after_seconds: retry_after,
            ..verdict(
                Outcome::Retry,
                format!("{name} rate-limited the validation call{}; it will be retried later.", err.quote(status)),
            )
        },
        408 | 500..=599 => Verdict {
            retry_after_seconds: retry_after,
            vendor_fault: true,
            ..verdict(
                Outcome::Retry,
                format!(
                    "{name} could not answer{}: vendor-side trouble; the key was not judged and \
                     will be checked again.",
                    err.quote(status)
                ),
            )
        },
        _ => verdict(
            Outcome::Retry,
            format!(
                "{name} refused the validation request itself{}, so the key was not judged; check the \
                 sidecar's probe settings (model, base URL).",
                err.quote(status)
            ),
        ),
    }
}

/// Classifies a probe that got no HTTP answer: always vendor trouble.
pub fn classify_transport(vendor: Vendor, error: TransportError) -> Verdict {
    let name = vendor.display_name();
    let what = match error {
        TransportError::Timeout => format!("{name} did not answer within the request timeout"),
        TransportError::Connect => format!("could not connect to {name} (refused or unreachable)"),
        TransportError::Tls => format!("the TLS handshake with {name} failed"),
        TransportError::Reset => format!("the connection to {name} was reset before an answer"),
        TransportError::Other => format!("no answer from {name}"),
    };
    Verdict {
        outcome: Outcome::Retry,
        detail: format!("{what}; the key was not judged and will be checked again."),
        retry_after_seconds: None,
        warning: false,
        vendor_fault: true,
    }
}

fn unauthorized_detail(vendor: Vendor, err: &VendorError) -> String {
    let name = vendor.display_name();
    let quote = err.quote(401);
    if vendor == Vendor::OpenAi && err.message_has("missing scopes") {
        return format!(
            "{name} refused the key{quote}: it is a restricted key without the permission the validation \
             call needs; allow model requests (Model capabilities: Write) for it, or use an unrestricted key."
        );
    }
    if vendor == Vendor::OpenAi && err.message_has("organization") {
        return format!(
            "{name} refused the key{quote}: the key's owner is not a member of an organization; \
             check the account or generate a key in the right organization."
        );
    }
    if vendor == Vendor::OpenAi && err.message_has("ip address") {
        return format!(
            "{name} refused the key{quote}: the key may not be used from this IP address; \
             update the key's allowed IP list."
        );
    }
    format!(
        "{name} rejected the key{quote}: it may have been mistyped, rotated or revoked; \
         generate a fresh one and add it again."
    )
}

fn forbidden_detail(vendor: Vendor, err: &VendorError) -> String {
    let name = vendor.display_name();
    let quote = err.quote(403);
    if err.is("unsupported_country_region_territory")
        || err.message_has("country")
        || err.message_has("region")
    {
        return format!(
            "{name} refused the key{quote}: requests from this country, region or territory are not \
             supported; the key is real but cannot be used from here."
        );
    }
    format!(
        "{name} refused the key{quote}: the key is real but not allowed to make this call; check the \
         key's permissions (workspace, project or role) in the {name} console."
    )
}

fn header<'a>(headers: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// `retry-after-ms` (OpenAI) wins over `retry-after` (seconds, possibly
/// fractional). HTTP-date values are ignored: the queue's own backoff then
/// applies, which is a safe default. Capped at the core backoff's limit.
fn retry_after_seconds(headers: &[(&str, &str)]) -> Option<u32> {
    let parse = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
    };
    let seconds = header(headers, "retry-after-ms")
        .and_then(parse)
        .map(|ms| ms / 1000.0)
        .or_else(|| header(headers, "retry-after").and_then(parse))?;
    Some(
        seconds
            .ceil()
            .min(byok_core::backoff::MAX_RETRY_AFTER_SECONDS) as u32,
    )
}

#[cfg(test)]
mod tests;
