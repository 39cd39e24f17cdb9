//! A throw-away CA and the server certificate it signed, for the TLS tests.

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use byok_integration::Cluster;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// PEM texts of a CA and of a server certificate (with its key) it signed.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A fresh CA and a certificate for `names` (DNS names or IP addresses).
pub fn generate(names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "pg_byok test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, names[0]);
    let cert_pem = leaf
        .signed_by(&key, &Issuer::new(ca, ca_key))
        .unwrap()
        .pem();
    Pki {
        ca_pem,
        cert_pem,
        key_pem: key.serialize_pem(),
    }
}

/// Turns TLS on: server.crt / server.key in the data directory (0600 and
/// owned like it, or Postgres refuses the key), `ssl = on`, restart.
pub fn enable_ssl(cluster: &mut Cluster, pki: &Pki) {
    let data = cluster.data_dir().to_owned();
    let owner = fs::metadata(&data).unwrap();
    for (name, text) in [("server.crt", &pki.cert_pem), ("server.key", &pki.key_pem)] {
        let path = data.join(name);
        write_0600(&path, text);
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    cluster.append_conf(&["ssl = on".to_owned()]);
    cluster.restart();
}

fn write_0600(path: &Path, text: &str) {
    use std::io::Write;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
        .write_all(text.as_bytes())
        .unwrap();
}
