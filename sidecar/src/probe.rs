//! The vendor calls that prove a key works, and the mapping of their
//! results onto [`crate::classify`].

use std::error::Error as _;
use std::time::{Duration, Instant};

use crate::classify::{classify_response, classify_transport, TransportError, Verdict};
use byok_core::Vendor;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use zeroize::Zeroizing;

use crate::config::{Probe, Target};

/// Anthropic API version header value (required by the real API).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Bytes of a response body read at most: error bodies are small, and a
/// misbehaving server must not make the sidecar buffer megabytes.
const MAX_BODY: usize = 64 * 1024;

/// The result of one probe.
#[derive(Debug)]
pub struct ProbeResult {
    pub verdict: Verdict,
    /// The vendor's HTTP status, `None` when no answer arrived.
    pub http_status: Option<u16>,
    /// The account the vendor named in its answer (see [`vendor_account`]).
    pub vendor_account: Option<String>,
    pub took: Duration,
}

/// Makes validation calls. Cheap to clone (shares the connection pool).
#[derive(Clone)]
pub struct Prober {
    client: reqwest::Client,
    anthropic: Target,
    openai: Target,
}

impl Prober {
    /// A prober for the two vendors; `timeout` bounds connect + answer.
    pub fn new(anthropic: Target, openai: Target, timeout: Duration) -> reqwest::Result<Prober> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Never follow a redirect: it would carry the key to another URL.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("byok-sidecar/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Prober {
            client,
            anthropic,
            openai,
        })
    }

    pub fn target(&self, vendor: Vendor) -> &Target {
        match vendor {
            Vendor::Anthropic => &self.anthropic,
            Vendor::OpenAi => &self.openai,
        }
    }

    /// Probes `key` at `vendor`. The key is consumed: it is copied into a
    /// sensitive header value and wiped before the request is sent.
    pub async fn probe(&self, vendor: Vendor, key: Zeroizing<String>) -> ProbeResult {
        let request = self.request(vendor, &key);
        drop(key);
        let started = Instant::now();
        let outcome = match request {
            Ok(r) => self.client.execute(r).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = keep_headers(resp.headers());
                let account = vendor_account(vendor, resp.headers());
                match read_body(resp).await {
                    Ok(body) => {
                        let pairs: Vec<(&str, &str)> =
                            headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                        let verdict = classify_response(vendor, status, &pairs, &body);
                        ProbeResult {
                            verdict,
                            http_status: Some(status),
                            vendor_account: account,
                            took: started.elapsed(),
                        }
                    }
                    Err(e) => no_answer(vendor, &e, started),
                }
            }
            Err(e) => no_answer(vendor, &e, started),
        }
    }

    fn request(&self, vendor: Vendor, key: &str) -> reqwest::Result<reqwest::Request> {
        let t = self.target(vendor);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let secret = |v: String| {
            // A key with bytes a header cannot carry gets an empty header:
            // the vendor answers 401, which is the right verdict for it.
            let mut h = HeaderValue::from_str(&Zeroizing::new(v))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            h.set_sensitive(true);
            h
        };
        let (path, body) = match (vendor, t.probe) {
            (Vendor::Anthropic, Probe::Models) => ("/v1/models?limit=1", None),
            (Vendor::Anthropic, Probe::Completion) => {
                ("/v1/messages", Some(completion_body(&t.model)))
            }
            (Vendor::OpenAi, Probe::Models) => ("/v1/models", None),
            (Vendor::OpenAi, Probe::Completion) => {
                ("/v1/chat/completions", Some(completion_body(&t.model)))
            }
        };
        match vendor {
            Vendor::Anthropic => {
                headers.insert("x-api-key", secret(key.to_owned()));
                headers.insert(
                    "anthropic-version",
                    HeaderValue::from_static(ANTHROPIC_VERSION),
                );
            }
            Vendor::OpenAi => {
                headers.insert(AUTHORIZATION, secret(format!("Bearer {key}")));
            }
        }
        let url = format!("{}{path}", t.base_url);
        let builder = match body {
            Some(b) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                self.client.post(url).body(b)
            }
            None => self.client.get(url),
        };
        builder.headers(headers).build()
    }
}

/// `{"model": M, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]}`:
/// the same shape is accepted by both vendors' completion endpoints.
pub fn completion_body(model: &str) -> String {
    serde_json::json!({
        "model": model,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "ping"}],
    })
    .to_string()
}

/// The headers classification reads, copied out of the response.
fn keep_headers(h: &HeaderMap) -> Vec<(&'static str, String)> {
    [
        "retry-after",
        "retry-after-ms",
        "request-id",
        "x-request-id",
    ]
    .into_iter()
    .filter_map(|n| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .map(|v| (n, v.to_owned()))
    })
    .collect()
}

/// The vendor account behind a key, from the answer's headers: Anthropic's
/// `anthropic-organization-id`; OpenAI's `openai-organization`, followed by
/// `/` and `openai-project` when it sends one. A value that is not a short
/// identifier (letters, digits, `-`, `_`, `.`, `:`, at most 100 characters)
/// is ignored: it ends up in `key_info`, so nothing else is taken from an
/// answer that may not come from the vendor at all.
pub fn vendor_account(vendor: Vendor, h: &HeaderMap) -> Option<String> {
    let id = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 100
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
            })
    };
    match vendor {
        Vendor::Anthropic => id("anthropic-organization-id").map(str::to_owned),
        Vendor::OpenAi => id("openai-organization").map(|org| match id("openai-project") {
            Some(project) => format!("{org}/{project}"),
            None => org.to_owned(),
        }),
    }
}

async fn read_body(mut resp: reqwest::Response) -> reqwest::Result<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_BODY - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= MAX_BODY {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn no_answer(vendor: Vendor, e: &reqwest::Error, started: Instant) -> ProbeResult {
    ProbeResult {
        verdict: classify_transport(vendor, transport_kind(e)),
        http_status: None,
        vendor_account: None,
        took: started.elapsed(),
    }
}

/// Sorts a reqwest failure into the kinds classification knows, by the
/// error's own flags and then its cause chain.
pub fn transport_kind(e: &reqwest::Error) -> TransportError {
    if e.is_timeout() {
        return TransportError::Timeout;
    }
    let mut chain = String::new();
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                TimedOut => return TransportError::Timeout,
                ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable => {
                    return TransportError::Connect
                }
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    return TransportError::Reset
                }
                // Garbage while connecting is the TLS layer refusing what it got.
                InvalidData if e.is_connect() => return TransportError::Tls,
                _ => {}
            }
        }
        chain.push_str(&s.to_string().to_ascii_lowercase());
        chain.push(' ');
        source = s.source();
    }
    if ["certificate", "tls", "handshake", "corrupt message", "peer"]
        .iter()
        .any(|w| chain.contains(w))
    {
        TransportError::Tls
    } else if e.is_connect() {
        TransportError::Connect
    } else if chain.contains("closed")
        || chain.contains("reset")
        || chain.contains("incomplete")
        || e.is_body()
    {
        TransportError::Reset
    } else {
        TransportError::Other
    }
}

#[cfg(test)]
#[path = "probe_tests.rs"]
mod against_the_mock;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_vendor_account_is_read_from_each_vendors_headers() {
        let a = headers(&[("anthropic-organization-id", "0f3c-11aa")]);
        assert_eq!(
            vendor_account(Vendor::Anthropic, &a).as_deref(),
            Some("0f3c-11aa")
        );
        assert_eq!(
            vendor_account(Vendor::OpenAi, &a),
            None,
            "another vendor's header"
        );
        let o = headers(&[("openai-organization", "org-abc")]);
        assert_eq!(
            vendor_account(Vendor::OpenAi, &o).as_deref(),
            Some("org-abc")
        );
        let op = headers(&[
            ("openai-organization", "org-abc"),
            ("openai-project", "proj_9"),
        ]);
        assert_eq!(
            vendor_account(Vendor::OpenAi, &op).as_deref(),
            Some("org-abc/proj_9")
        );
        let project_only = headers(&[("openai-project", "proj_9")]);
        assert_eq!(vendor_account(Vendor::OpenAi, &project_only), None);
    }

    #[test]
    fn a_vendor_account_that_is_not_a_short_identifier_is_ignored() {
        let key = byok_core::samples::sample_key("anthropic", 9);
        for bad in [key.as_str(), "org abc", "org<script>", "", &"o".repeat(101)] {
            let h = headers(&[("anthropic-organization-id", bad)]);
            assert_eq!(vendor_account(Vendor::Anthropic, &h), None, "{bad:?}");
        }
    }

    #[test]
    fn completion_body_has_the_documented_shape() {
        let v: serde_json::Value = serde_json::from_str(&completion_body("m-1")).unwrap();
        assert_eq!(v["model"], "m-1");
        assert_eq!(v["max_tokens"], 1);
        assert_eq!(v["messages"][0]["role"], "user");
        assert_eq!(v["messages"][0]["content"], "ping");
    }
}
