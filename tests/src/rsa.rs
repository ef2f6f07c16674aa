//! RSA keys and client certificates for the tests: keys made with
//! `openssl`, certificates signed with them by rcgen (any validity,
//! expired ones included).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use base64::Engine as _;
use sha2::Digest as _;

/// A fresh 2048-bit RSA key, written as PKCS#8 PEM to `path`; returns the
/// public half (PEM).
pub fn key(path: &Path) -> Vec<u8> {
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(path)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(path)
        .output()
        .expect("openssl");
    assert!(public.status.success());
    public.stdout
}

/// A self-signed client certificate and its key, as an Entra app
/// registration would have them uploaded.
#[derive(Debug)]
pub struct ClientCert {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// The public key (PEM), for the fake token endpoint.
    pub public: Vec<u8>,
    /// base64url SHA-256 of the DER certificate (`x5t#S256`).
    pub x5t_s256: String,
    /// SHA-1 of the DER certificate, upper-case hex without colons, as
    /// `openssl x509 -fingerprint -sha1` computes it.
    pub sha1: String,
}

/// Writes `NAME.crt` and `NAME.key` into `dir`, valid from `not_before`
/// to `not_after`.
pub fn client_certificate(
    dir: &Path,
    name: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> ClientCert {
    let key_path = dir.join(format!("{name}.key"));
    let public = key(&key_path);
    let pem = std::fs::read_to_string(&key_path).unwrap();
    let pair = rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("mailgate {name}"));
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    let cert = params.self_signed(&pair).unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    let x5t_s256 =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cert.der()));
    let fp = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(&cert_path)
        .output()
        .expect("openssl");
    assert!(fp.status.success());
    let sha1 = String::from_utf8_lossy(&fp.stdout)
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "");
    ClientCert {
        certificate: cert_path,
        key: key_path,
        public,
        x5t_s256,
        sha1,
    }
}
