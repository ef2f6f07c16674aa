//! A provider's credentials beyond a secret: an Entra certificate and its
//! key, a Google service account's key file. Reading these files (and
//! secret files) is the one I/O the resolution does.

use super::*;

/// `client_certificate`, `client_key` and `client_assertion_alg`: the
/// certificate credential of a confidential Microsoft (or custom) client.
pub(super) fn client_certificate(
    file: &Path,
    key: &dyn Fn(&str) -> String,
    preset: Preset,
    flow: Flow,
    has_secret: bool,
    (certificate, client_key, alg): (Option<String>, Option<String>, Option<String>),
    errs: &mut Errors<'_>,
) -> Option<crate::ClientCertificate> {
    let algorithm = match &alg {
        Some(_) if certificate.is_none() => {
            errs.push(
                key("client_assertion_alg"),
                "only used with client_certificate and client_key",
            );
            return None;
        }
        _ => choice::<AssertionAlg>(errs, &key("client_assertion_alg"), alg)
            .unwrap_or(AssertionAlg::Ps256),
    };
    let (certificate, client_key) = match (certificate, client_key) {
        (None, None) => return None,
        (Some(c), Some(k)) => (relative_to(file, &c), relative_to(file, &k)),
        (Some(_), None) => {
            errs.push(
                key("client_key"),
                "missing; client_certificate needs the certificate's private key (PEM) in client_key",
            );
            return None;
        }
        (None, Some(_)) => {
            errs.push(
                key("client_certificate"),
                "missing; client_key needs the certificate (PEM) that was uploaded to the app registration",
            );
            return None;
        }
    };
    if has_secret {
        errs.push(
            key("client_certificate"),
            "set a client secret or a client certificate, not both",
        );
        return None;
    }
    if preset == Preset::Gmail || flow == Flow::ServiceAccount {
        errs.push(
            key("client_certificate"),
            "certificate credentials are Microsoft Entra's; Google clients use a client secret or a service account",
        );
        return None;
    }
    match crate::certificate::load(&certificate, &client_key, algorithm) {
        Ok(c) => Some(c),
        Err((part, message)) => {
            errs.push(
                key(match part {
                    crate::certificate::Part::Certificate => "client_certificate",
                    crate::certificate::Part::Key => "client_key",
                }),
                message,
            );
            None
        }
    }
}

/// Reads a service account's JSON key (as Google's console gives it).
pub(super) fn service_account_key(
    path: &Path,
    key: &str,
    errs: &mut Errors<'_>,
) -> Option<ServiceAccount> {
    #[derive(serde::Deserialize)]
    struct Key {
        #[serde(rename = "type")]
        kind: Option<String>,
        client_email: Option<String>,
        client_id: Option<String>,
        private_key_id: Option<String>,
        private_key: Option<String>,
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errs.push(key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    // The parser's message could quote the file: only its position.
    let parsed: Key = match serde_json::from_str(&text) {
        Ok(k) => k,
        Err(e) => {
            errs.push(
                key,
                format!(
                    "{} is not a JSON key (line {}, column {})",
                    path.display(),
                    e.line(),
                    e.column()
                ),
            );
            return None;
        }
    };
    let problem = if parsed.kind.as_deref() != Some("service_account") {
        Some("its \"type\" is not \"service_account\"")
    } else if parsed
        .client_email
        .as_deref()
        .is_none_or(|e| !e.contains('@'))
    {
        Some("it has no client_email")
    } else if !parsed
        .private_key
        .as_deref()
        .is_some_and(|k| k.contains("-----BEGIN PRIVATE KEY-----"))
    {
        Some("it has no private_key in PKCS#8 PEM")
    } else {
        None
    };
    if let Some(p) = problem {
        errs.push(
            key,
            format!("{} is not a service account key: {p}", path.display()),
        );
        return None;
    }
    Some(ServiceAccount {
        file: path.to_owned(),
        client_email: parsed.client_email.unwrap_or_default(),
        client_id: parsed.client_id,
        private_key_id: parsed.private_key_id,
        private_key: SecretString::from(parsed.private_key.unwrap_or_default()),
    })
}
