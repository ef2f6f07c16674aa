//! TLS material for mailgate.
//!
//! The upstream side always verifies certificates: the system's trust roots
//! (or, where the system has none, the Mozilla set from `webpki-roots`) plus
//! the provider's `ca_file`. There is no option to turn verification off.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}; check the path and its permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate; it must contain -----BEGIN CERTIFICATE----- blocks")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The process-wide crypto provider (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reads every certificate of a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Invalid {
            path: path.to_path_buf(),
            message: format!("not a valid PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The system trust roots, loaded once; the webpki-roots set when the system
/// store is empty or unreadable.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut store = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "reading a system trust root failed");
        }
        let (added, _ignored) = store.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::info!("no system trust roots found; using the bundled Mozilla roots");
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        store
    })
}

/// The rustls client configuration for one provider's upstream servers:
/// system roots plus `ca_file`, TLS 1.2 and 1.3, full verification.
pub fn upstream_client_config(
    ca_file: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, CertError> {
    let mut roots = system_roots().clone();
    if let Some(path) = ca_file {
        for cert in load_certificates(path)? {
            roots.add(cert).map_err(|e| CertError::Invalid {
                path: path.to_path_buf(),
                message: format!("not a usable trust anchor: {e}"),
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A server's certificate chain and key, as loaded.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// SHA-256 fingerprint of the leaf certificate, `AB:CD:...`.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.chain[0])
    }
}

/// SHA-256 fingerprint of a certificate, colon-separated upper-case hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Loads a PEM chain and its private key: RSA, ECDSA or Ed25519, in PKCS#8,
/// PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`) form.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, CertError> {
    let chain = load_certificates(cert)?;
    let bytes = std::fs::read(key).map_err(|source| CertError::Read {
        path: key.to_path_buf(),
        source,
    })?;
    let key_der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| CertError::Invalid {
        path: key.to_path_buf(),
        message: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })?;
    let id = Identity {
        chain,
        key: key_der,
    };
    // Fail now, with the file names, rather than at the first handshake.
    server_config(&id).map_err(|e| CertError::Invalid {
        path: key.to_path_buf(),
        message: format!(
            "the key does not fit the certificate {}: {e}",
            cert.display()
        ),
    })?;
    Ok(id)
}

/// The rustls server configuration for a listener: TLS 1.2 and 1.3 only.
pub fn server_config(id: &Identity) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    Ok(Arc::new(config))
}

/// The gateway's own certificate under `dir` (`gateway.pem`, `gateway.key`):
/// generated once (ECDSA P-256, valid for `hostname`, localhost, 127.0.0.1
/// and ::1) and reused afterwards. Returns the paths and whether it was
/// just generated.
pub fn self_signed(dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf, bool), CertError> {
    let cert = dir.join("gateway.pem");
    let key = dir.join("gateway.key");
    if cert.is_file() && key.is_file() {
        return Ok((cert, key, false));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Read { path, source }
    };
    private_dir(dir).map_err(io(dir))?;
    let mut names = vec![hostname.to_owned()];
    for n in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_owned());
        }
    }
    let failed = |e: rcgen::Error| CertError::Invalid {
        path: cert.clone(),
        message: format!("generating a certificate failed: {e}"),
    };
    let pair = rcgen::KeyPair::generate().map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(names).map_err(failed)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("mailgate on {hostname}"));
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let certificate = params.self_signed(&pair).map_err(failed)?;
    write_private(&key, pair.serialize_pem().as_bytes()).map_err(io(&key))?;
    std::fs::write(&cert, certificate.pem()).map_err(io(&cert))?;
    Ok((cert, key, true))
}

/// Creates `dir` (and its parents) with mode 0700, and makes an existing
/// one 0700: the generated key lives there.
#[cfg(unix)]
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Writes a new private file (0600): a stale file (or a link planted in
/// its place) is removed first, and the new one is created exclusively and
/// never through a symbolic link.
#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_is_added_and_errors_are_clear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("ca");
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.pem()).expect("write");
        assert!(upstream_client_config(Some(&good)).is_ok());
        assert!(upstream_client_config(None).is_ok());

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").expect("write");
        let err = upstream_client_config(Some(&empty)).expect_err("no certs");
        assert!(matches!(err, CertError::NoCertificate { .. }), "{err}");

        let missing = dir.path().join("missing.pem");
        let err = load_identity(&missing, &missing).expect_err("missing");
        assert!(err.to_string().contains("cannot read"), "{err}");
        let err = upstream_client_config(Some(&missing)).expect_err("missing");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    #[test]
    fn self_signed_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, fresh) = self_signed(dir.path(), "gw.example").expect("generate");
        assert!(fresh);
        let first = load_identity(&cert, &key).expect("loads").fingerprint();
        let (cert2, key2, fresh2) = self_signed(dir.path(), "gw.example").expect("reuse");
        assert!(!fresh2);
        assert_eq!(
            load_identity(&cert2, &key2).expect("loads").fingerprint(),
            first
        );
        assert_eq!(first.len(), 32 * 3 - 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let dir_mode = std::fs::metadata(key.parent().expect("dir"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o777, 0o700, "the key's directory is private");
            let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn mismatched_key_is_reported() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let (cert, _, _) = self_signed(a.path(), "a").expect("a");
        let (_, key, _) = self_signed(b.path(), "b").expect("b");
        let err = load_identity(&cert, &key).expect_err("mismatch");
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}

#[cfg(all(test, unix))]
mod link_tests {
    use super::*;

    #[test]
    fn a_planted_link_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls).expect("mkdir");
        let target = dir.path().join("victim");
        std::fs::write(&target, b"precious").expect("write");
        std::os::unix::fs::symlink(&target, tls.join("gateway.key")).expect("link");
        let (_, key, fresh) = self_signed(&tls, "gw.example").expect("generate");
        assert!(fresh);
        assert_eq!(std::fs::read(&target).expect("read"), b"precious");
        assert!(!std::fs::symlink_metadata(&key).expect("meta").is_symlink());
    }
}
