//! TLS material for mailgate.
//!
//! The upstream side always verifies certificates: the system's trust roots
//! (or, where the system has none, the Mozilla set from `webpki-roots`) plus
//! the provider's `ca_file`. There is no option to turn verification off.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

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
        let err = upstream_client_config(Some(&missing)).expect_err("missing");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
