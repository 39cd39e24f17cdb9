//! TLS to Postgres (rustls). Managed databases (Supabase, RDS, Cloud SQL …)
//! ask for `sslmode=require`; the driver does the `sslmode` negotiation and
//! this module supplies what it verifies against.
//!
//! Whenever TLS is used, the server's certificate chain and host name are
//! verified: stricter than libpq's `require` (which checks neither), because
//! an unverified TLS connection hands the role's password, and every claimed
//! plaintext key, to whoever sits in the middle. Roots are the Mozilla set
//! (webpki-roots, the same set reqwest uses for the vendors) plus the PEM
//! bundle of `--db-ca-file`, for databases signed by a private CA.

use std::borrow::Cow;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, SectionKind};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why `--db-ca-file` cannot be used. Messages name the file and the
/// problem, never the file's text (a wrong path could point at a secret).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read --db-ca-file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--db-ca-file {} is not a valid PEM bundle: {reason}", path.display())]
    BadPem { path: PathBuf, reason: &'static str },
    #[error("--db-ca-file {} holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("--db-ca-file {} holds a private key: give only the CA certificate(s), and keep the key elsewhere", path.display())]
    PrivateKey { path: PathBuf },
    #[error("--db-ca-file {}: certificate #{index} is not a usable CA certificate: {reason}", path.display())]
    BadCertificate {
        path: PathBuf,
        index: usize,
        reason: rustls::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The connector handed to tokio-postgres (cheap to clone: an `Arc`).
pub fn connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, TlsError> {
    client_config(ca_file).map(MakeRustlsConnect::new)
}

/// The client config: Mozilla roots plus the certificates of `ca_file`.
/// Built once at start-up, so a bad file stops the sidecar with exit 2
/// instead of failing every reconnect.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        for (i, cert) in read_ca_file(path)?.into_iter().enumerate() {
            roots.add(cert).map_err(|reason| TlsError::BadCertificate {
                path: path.to_owned(),
                index: i + 1,
                reason,
            })?;
        }
    }
    // The provider is named, not taken from the process default, so that
    // another crate enabling a second rustls provider cannot make this panic.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The certificates of a PEM bundle; other known sections (CRLs) are skipped.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = std::fs::File::open(path).map_err(|source| TlsError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let mut certs = Vec::new();
    loop {
        match pem::from_buf(&mut reader) {
            Ok(None) => break,
            Ok(Some((SectionKind::Certificate, der))) => certs.push(CertificateDer::from(der)),
            Ok(Some((
                SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey,
                _,
            ))) => {
                return Err(TlsError::PrivateKey {
                    path: path.to_owned(),
                })
            }
            Ok(Some(_)) => {}
            Err(pem::Error::Io(source)) => {
                return Err(TlsError::Unreadable {
                    path: path.to_owned(),
                    source,
                })
            }
            // Our own words: some pem errors carry a line of the file.
            Err(e) => {
                return Err(TlsError::BadPem {
                    path: path.to_owned(),
                    reason: pem_reason(&e),
                })
            }
        }
    }
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn pem_reason(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a -----BEGIN block has no matching -----END line",
        pem::Error::IllegalSectionStart { .. } => "malformed -----BEGIN line",
        pem::Error::Base64Decode(_) => "invalid base64 inside a block",
        pem::Error::SectionTooLarge => "a block is too large",
        _ => "unreadable PEM",
    }
}

/// What to do about a refused server certificate, for the connect-error
/// log line (rustls names the failed check, not the remedy).
pub fn certificate_hint(e: &tokio_postgres::Error) -> Option<&'static str> {
    use rustls::CertificateError as C;
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let inner: &(dyn std::error::Error + 'static) = match c.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map_or(c, |i| i as _),
            None => c,
        };
        if let Some(rustls::Error::InvalidCertificate(ce)) = inner.downcast_ref::<rustls::Error>() {
            return Some(match ce {
                C::UnknownIssuer => {
                    "the database's certificate is not signed by a trusted CA: give its CA \
                     with --db-ca-file (BYOK_DB_CA_FILE), or sslmode=disable on a trusted network"
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "the database's certificate does not name the host of DATABASE_URL: \
                     connect by a name (or IP) the certificate lists"
                }
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => {
                    "the database's certificate is outside its validity period (check the clocks)"
                }
                _ => "the database's certificate was refused; see --db-ca-file",
            });
        }
        cause = c.source();
    }
    None
}

/// libpq's `verify-ca` / `verify-full` are read as `require`, which here
/// already verifies chain and host name (tokio-postgres knows only
/// disable / prefer / require, and would refuse such a URL outright).
pub fn accept_verify_modes(url: &str) -> Cow<'_, str> {
    if url.contains("sslmode=verify-") {
        Cow::Owned(
            url.replace("sslmode=verify-full", "sslmode=require")
                .replace("sslmode=verify-ca", "sslmode=require"),
        )
    } else {
        Cow::Borrowed(url)
    }
}

#[cfg(test)]
#[path = "db_tls_tests.rs"]
mod tests;
