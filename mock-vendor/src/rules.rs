//! How the mock vendor judges a key: by a marker word inside it.
//!
//! Keys that pass pg_byok's shape check can still carry any letters, so a
//! test picks the vendor's behaviour by embedding one of these markers in
//! the key body (e.g. `sk-ant-api03-mock401…AA`). A key without a marker is
//! valid. A string that is not key-shaped for the vendor at all is refused
//! with 401, as the real vendor would.
//!
//! | marker | Anthropic | OpenAI |
//! |---|---|---|
//! | (none) | 200 | 200 |
//! | `mock401` | 401 authentication_error | 401 invalid_api_key (key masked, as OpenAI does) |
//! | `mockecho` | 401, message echoes the whole key | same |
//! | `mock403` | 403 permission_error | 403 unsupported_country_region_territory |
//! | `mockcredit` | completion: 400 "credit balance is too low"; models: 200 | same as `mockquota` |
//! | `mockquota` | same as `mockcredit` | completion: 429 insufficient_quota; models: 200 |
//! | `mock429` | 429 rate_limit_error, `retry-after: 2` | 429 rate_limit_exceeded, `retry-after: 2` |
//! | `mock500` | 500 api_error | 500 server_error |
//! | `mock503` | 503 api_error | 503 server_error (overloaded) |
//! | `mock529` | 529 overloaded_error | 503 server_error (OpenAI has no 529) |
//! | `mockslow` | 200 after `--slow-ms` | same |
//! | `mockhang` | no answer for `--hang-seconds` (past any sane timeout) | same |
//! | `mockreset` | connection reset (TCP RST), no answer | same |

use byok_core::Vendor;

/// What the mock does for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Valid,
    Unauthorized,
    EchoKey,
    Forbidden,
    /// Anthropic's low credit / OpenAI's insufficient quota (completions only).
    NoCredit,
    RateLimited,
    ServerError,
    Unavailable,
    Overloaded,
    Slow,
    Hang,
    Reset,
}

/// Markers in the order they are checked (first match wins).
pub const MARKERS: [(&str, Behaviour); 12] = [
    ("mock401", Behaviour::Unauthorized),
    ("mockecho", Behaviour::EchoKey),
    ("mock403", Behaviour::Forbidden),
    ("mockcredit", Behaviour::NoCredit),
    ("mockquota", Behaviour::NoCredit),
    ("mock429", Behaviour::RateLimited),
    ("mock500", Behaviour::ServerError),
    ("mock503", Behaviour::Unavailable),
    ("mock529", Behaviour::Overloaded),
    ("mockslow", Behaviour::Slow),
    ("mockhang", Behaviour::Hang),
    ("mockreset", Behaviour::Reset),
];

/// Whether the credential looks like one of `vendor`'s API keys at all.
pub fn key_shaped(vendor: Vendor, key: &str) -> bool {
    let body_ok = |rest: &str| {
        rest.len() >= 20
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match vendor {
        Vendor::Anthropic => key.strip_prefix("sk-ant-api03-").is_some_and(body_ok),
        Vendor::OpenAi => {
            !key.starts_with("sk-ant-")
                && !key.starts_with("sk-admin-")
                && key.strip_prefix("sk-").is_some_and(body_ok)
        }
    }
}

/// The behaviour a well-shaped key selects.
pub fn behaviour(key: &str) -> Behaviour {
    MARKERS
        .iter()
        .find(|(m, _)| key.contains(m))
        .map_or(Behaviour::Valid, |(_, b)| *b)
}

#[cfg(test)]
mod tests {
    use byok_core::samples::{sample_key, sample_key_marked};

    use super::*;

    #[test]
    fn markers_select_behaviours() {
        let k = |m: &str| sample_key_marked("anthropic", m, 1);
        assert_eq!(behaviour(&k("")), Behaviour::Valid);
        assert_eq!(behaviour(&k("mock401")), Behaviour::Unauthorized);
        assert_eq!(behaviour(&k("mockquota")), Behaviour::NoCredit);
        assert_eq!(behaviour(&k("mockreset")), Behaviour::Reset);
        assert!(key_shaped(Vendor::Anthropic, &k("")));
        assert!(!key_shaped(
            Vendor::Anthropic,
            &sample_key("anthropic-admin", 1)
        ));
        assert!(!key_shaped(Vendor::OpenAi, &k("")));
        assert!(!key_shaped(Vendor::OpenAi, &sample_key("openai-admin", 1)));
        for openai in ["openai", "openai-svcacct", "openai-legacy"] {
            assert!(
                key_shaped(Vendor::OpenAi, &sample_key(openai, 1)),
                "{openai}"
            );
        }
        assert!(!key_shaped(Vendor::OpenAi, "Bearer"));
        for vendor in Vendor::ALL {
            for (marker, b) in MARKERS {
                let key = sample_key_marked(vendor.as_str(), marker, 2);
                assert!(key_shaped(vendor, &key), "{key}");
                assert_eq!(behaviour(&key), b, "{key}");
            }
        }
    }
}
