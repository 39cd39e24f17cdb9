use std::io::{Read, Write};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConnection, ServerConfig, ServerConnection};

use super::*;

/// Text that must never show up in an error message.
const MARKER: &str = "TOP-SECRET-CONTENTS-4711";

/// A CA and a server certificate for localhost / 127.0.0.1 it signed:
/// (ca pem, server cert der, server key der).
fn pki() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &Issuer::new(ca, ca_key))
        .unwrap();
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    (ca_pem, leaf.der().clone(), key_der)
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn err(path: &Path) -> String {
    let e = client_config(Some(path))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(!e.contains(MARKER), "{e}");
    e
}

/// In-memory TLS handshake of `client` against a server presenting `cert`.
fn handshake(
    client: ClientConfig,
    name: &'static str,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<(), rustls::Error> {
    let server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)?;
    let mut c = ClientConnection::new(Arc::new(client), ServerName::try_from(name).unwrap())?;
    let mut s = ServerConnection::new(Arc::new(server))?;
    let mut buf = Vec::new();
    for _ in 0..10 {
        buf.clear();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets()?;
        buf.clear();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            c.writer().write_all(b"ok").unwrap();
            buf.clear();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()?;
            let mut got = [0u8; 2];
            s.reader().read_exact(&mut got).unwrap();
            assert_eq!(&got, b"ok");
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn without_a_ca_file_the_mozilla_roots_are_used() {
    assert!(client_config(None).is_ok());
}

#[test]
fn a_private_ca_is_trusted_and_host_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = pki();
    let ca = write(&dir, "ca.pem", &ca_pem);
    let with_ca = || client_config(Some(&ca)).unwrap();
    handshake(with_ca(), "127.0.0.1", cert.clone(), key.clone_key()).unwrap();
    handshake(with_ca(), "localhost", cert.clone(), key.clone_key()).unwrap();
    // Right CA, wrong name: refused (libpq's `require` would accept it).
    let e = handshake(with_ca(), "db.example.com", cert.clone(), key.clone_key()).unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    // Without the CA: unknown issuer.
    let e = handshake(client_config(None).unwrap(), "127.0.0.1", cert, key).unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
}

#[test]
fn a_bundle_of_several_cas_and_other_sections_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = pki();
    let (b, _, _) = pki();
    let text = format!("# comment lines are ignored\n{a}\n{b}");
    assert!(client_config(Some(&write(&dir, "bundle.pem", &text))).is_ok());
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = err(&dir.path().join("nope.pem"));
    assert!(e.contains("cannot read --db-ca-file"), "{e}");
    let e = err(dir.path());
    assert!(e.contains("cannot read --db-ca-file"), "{e}");
}

#[test]
fn a_file_without_certificates_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = err(&write(&dir, "empty.pem", ""));
    assert!(e.contains("holds no certificate"), "{e}");
    let e = err(&write(&dir, "text.pem", &format!("password={MARKER}\n")));
    assert!(e.contains("holds no certificate"), "{e}");
}

#[test]
fn broken_pem_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let unterminated = format!("-----BEGIN CERTIFICATE-----\n{MARKER}\n");
    let e = err(&write(&dir, "cut.pem", &unterminated));
    assert!(e.contains("not a valid PEM bundle"), "{e}");
    let bad_start = format!("-----BEGIN {MARKER}\n");
    let e = err(&write(&dir, "start.pem", &bad_start));
    assert!(e.contains("not a valid PEM bundle"), "{e}");
    let bad_b64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    let e = err(&write(&dir, "b64.pem", bad_b64));
    assert!(e.contains("not a valid PEM bundle"), "{e}");
}

#[test]
fn a_block_that_is_no_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    let e = err(&write(&dir, "junk.pem", junk));
    assert!(
        e.contains("certificate #1 is not a usable CA certificate"),
        "{e}"
    );
}

#[test]
fn a_private_key_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, _, _) = pki();
    let key = KeyPair::generate().unwrap().serialize_pem();
    let e = err(&write(&dir, "key.pem", &format!("{ca_pem}{key}")));
    assert!(e.contains("holds a private key"), "{e}");
    let body: String = key.lines().nth(1).unwrap().to_owned();
    assert!(!e.contains(&body), "{e}");
}

#[test]
fn verify_modes_read_as_require() {
    let u = "postgres://u:p@db:5432/x?sslmode=verify-full";
    assert_eq!(
        accept_verify_modes(u),
        "postgres://u:p@db:5432/x?sslmode=require"
    );
    assert_eq!(
        accept_verify_modes("host=db sslmode=verify-ca user=u"),
        "host=db sslmode=require user=u"
    );
    let plain = "postgres://u@db/x?sslmode=prefer";
    assert!(matches!(accept_verify_modes(plain), Cow::Borrowed(_)));
    for url in [u, "host=db sslmode=verify-ca"] {
        let c: tokio_postgres::Config = accept_verify_modes(url).parse().unwrap();
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    }
}
