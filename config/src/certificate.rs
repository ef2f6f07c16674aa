//! Certificate credentials of a confidential Microsoft client: the
//! certificate uploaded to the app registration and its private key, which
//! sign a `client_assertion` (RFC 7523 §2.2) on every token request.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use sha1::Digest as _;

/// How long before its expiry a certificate is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The signature algorithm of the client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlg {
    /// RSASSA-PSS with SHA-256 (what Microsoft recommends).
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (for servers without PSS, e.g. AD FS).
    Rs256,
}

impl fmt::Display for AssertionAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AssertionAlg::Ps256 => "PS256",
            AssertionAlg::Rs256 => "RS256",
        })
    }
}

impl AssertionAlg {
    /// The JOSE algorithm.
    pub fn jose(self) -> jsonwebtoken::Algorithm {
        match self {
            AssertionAlg::Ps256 => jsonwebtoken::Algorithm::PS256,
            AssertionAlg::Rs256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}

/// A client certificate and its key, checked to belong together.
#[derive(Clone)]
pub struct ClientCertificate {
    pub certificate_file: PathBuf,
    pub key_file: PathBuf,
    pub algorithm: AssertionAlg,
    /// The certificate's subject, as text.
    pub subject: String,
    /// SHA-1 of the DER certificate in upper-case hex: the "Thumbprint"
    /// Entra shows under Certificates & secrets.
    pub thumbprint: String,
    /// SHA-256 of the DER certificate, base64url: the assertion's
    /// `x5t#S256` header.
    pub x5t_s256: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The RSA private key, PEM (PKCS#8 or PKCS#1).
    pub private_key: SecretString,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("certificate_file", &self.certificate_file)
            .field("key_file", &self.key_file)
            .field("thumbprint", &self.thumbprint)
            .field(
                "not_after",
                &humantime::format_rfc3339_seconds(self.not_after),
            )
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// A warning when the certificate has expired, is not valid yet, or
    /// expires within [`EXPIRY_WARNING`] of `now`.
    pub fn expiry_warning(&self, now: SystemTime) -> Option<String> {
        let file = self.certificate_file.display();
        let when = humantime::format_rfc3339_seconds(self.not_after);
        if now >= self.not_after {
            return Some(format!(
                "the client certificate {file} (thumbprint {}) expired on {when}: the provider refuses its assertions; create a new one, upload it to the app registration and point client_certificate and client_key at it",
                self.thumbprint
            ));
        }
        if now < self.not_before {
            return Some(format!(
                "the client certificate {file} is not valid before {}",
                humantime::format_rfc3339_seconds(self.not_before)
            ));
        }
        let left = self.not_after.duration_since(now).unwrap_or_default();
        (left < EXPIRY_WARNING).then(|| {
            format!(
                "the client certificate {file} (thumbprint {}) expires on {when}, in {} day(s): create a new one and upload it to the app registration before then",
                self.thumbprint,
                left.as_secs() / 86_400
            )
        })
    }
}

/// Which of the two files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Certificate,
    Key,
}

/// Reads `certificate` (PEM; the first certificate is the one used) and
/// `key` (PEM, unencrypted RSA; may be the same file) and checks that the
/// key signs what the certificate's public key verifies.
pub fn load(
    certificate: &Path,
    key: &Path,
    algorithm: AssertionAlg,
) -> Result<ClientCertificate, (Part, String)> {
    let cert_text = std::fs::read(certificate).map_err(|e| {
        (
            Part::Certificate,
            format!("cannot read {}: {e}", certificate.display()),
        )
    })?;
    let der = x509_parser::pem::Pem::iter_from_buffer(&cert_text)
        .filter_map(Result::ok)
        .find(|p| p.label == "CERTIFICATE")
        .ok_or_else(|| {
            (
                Part::Certificate,
                format!(
                    "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    certificate.display()
                ),
            )
        })?
        .contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
        (
            Part::Certificate,
            format!("{} is not an X.509 certificate: {e}", certificate.display()),
        )
    })?;
    let time = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    let (not_before, not_after) = (
        time(&cert.validity().not_before),
        time(&cert.validity().not_after),
    );
    let spki = cert.public_key();
    if !matches!(
        spki.parsed(),
        Ok(x509_parser::public_key::PublicKey::RSA(_))
    ) {
        return Err((
            Part::Certificate,
            format!(
                "{} has no RSA key: certificate credentials need RSA (openssl req -x509 -newkey rsa:2048 …)",
                certificate.display()
            ),
        ));
    }
    let public = jsonwebtoken::DecodingKey::from_rsa_der(&spki.subject_public_key.data);

    let key_text = std::fs::read_to_string(key)
        .map_err(|e| (Part::Key, format!("cannot read {}: {e}", key.display())))?;
    let private = pem_block(&key_text, &["PRIVATE KEY", "RSA PRIVATE KEY"]).ok_or_else(|| {
        let why = if key_text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            "its key is encrypted; mailgate needs it without a passphrase (openssl pkey -in KEY -out plain.pem), in a file only mailgate can read"
        } else if key_text.contains("-----BEGIN EC PRIVATE KEY-----") {
            "its key is an EC key; certificate credentials need RSA"
        } else {
            "it holds no PEM private key (-----BEGIN PRIVATE KEY-----)"
        };
        (Part::Key, format!("{}: {why}", key.display()))
    })?;
    let signing = jsonwebtoken::EncodingKey::from_rsa_pem(private.as_bytes()).map_err(|e| {
        (
            Part::Key,
            format!("{} is not an RSA private key: {e}", key.display()),
        )
    })?;
    // The pair is checked once here, not at the first token request.
    let probe = b"mailgate: does this key belong to the certificate?";
    let matches = jsonwebtoken::crypto::sign(probe, &signing, algorithm.jose())
        .ok()
        .and_then(|sig| jsonwebtoken::crypto::verify(&sig, probe, &public, algorithm.jose()).ok())
        .unwrap_or(false);
    if !matches {
        return Err((
            Part::Key,
            format!(
                "{} is not the private key of the certificate {}",
                key.display(),
                certificate.display()
            ),
        ));
    }
    let thumbprint = sha1::Sha1::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let x5t_s256 =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der));
    Ok(ClientCertificate {
        certificate_file: certificate.to_owned(),
        key_file: key.to_owned(),
        algorithm,
        subject: cert.subject().to_string(),
        thumbprint,
        x5t_s256,
        not_before,
        not_after,
        private_key: SecretString::from(private),
    })
}

/// The first PEM block with one of `labels`, as text.
fn pem_block(text: &str, labels: &[&str]) -> Option<String> {
    labels.iter().find_map(|label| {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let start = text.find(&begin)?;
        let stop = text[start..].find(&end)? + start + end.len();
        Some(text[start..stop].to_owned())
    })
}

impl ClientCertificate {
    /// The private key, for signing.
    pub fn key_pem(&self) -> &str {
        self.private_key.expose_secret()
    }
}
