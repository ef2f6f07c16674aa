//! Signed client assertions: an Entra certificate's (RFC 7523 client
//! authentication) and a Google service account's (a JWT bearer grant).

use std::time::Duration;

use mailgate_config::Provider;
use secrecy::{ExposeSecret, SecretString};

use super::answer::OAuthError;

/// How long a client assertion is valid (Microsoft's libraries use ten
/// minutes).
pub(super) const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

/// The `client_assertion` parameters of a token request when the provider
/// authenticates with a certificate (none otherwise): a JWT signed with the
/// certificate's key, naming the certificate by its SHA-256 thumbprint
/// (`x5t#S256`), with `iss` and `sub` the client ID and `aud` the token
/// endpoint (RFC 7523 §2.2 and §3, Microsoft's certificate credentials).
pub(super) fn client_assertion(
    provider: &Provider,
    lifetime: Duration,
) -> Result<Vec<(&'static str, String)>, OAuthError> {
    let Some(cert) = &provider.client_certificate else {
        return Ok(Vec::new());
    };
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        sub: &'a str,
        aud: &'a str,
        jti: String,
        iat: u64,
        nbf: u64,
        exp: u64,
    }
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(cert.key_pem().as_bytes()).map_err(|e| {
        OAuthError::BadKey(format!(
            "the client key {} cannot be used: {e}",
            cert.key_file.display()
        ))
    })?;
    let mut header = jsonwebtoken::Header::new(cert.algorithm.jose());
    header.x5t_s256 = Some(cert.x5t_s256.clone());
    let now = crate::accounts::store::now();
    let claims = Claims {
        iss: &provider.client_id,
        sub: &provider.client_id,
        aud: provider.token_url.as_str(),
        jti: random_guid(),
        iat: now,
        nbf: now,
        exp: now + lifetime.as_secs(),
    };
    let jwt = jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| OAuthError::BadKey(format!("cannot sign the client assertion: {e}")))?;
    Ok(vec![
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
        ),
        ("client_assertion", jwt),
    ])
}

/// 16 random bytes as a GUID (`8-4-4-4-12` hex), the `jti` Microsoft asks for.
pub(super) fn random_guid() -> String {
    use rand_core::RngCore as _;
    let mut id = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut id);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A service account's signed assertion for `subject` (Google's claims:
/// `iss` the account, `sub` the mailbox, `scope`, `aud` the token endpoint,
/// an hour at most; a random `jti`; the key's ID as `kid`).
pub(super) fn service_account_assertion(
    sa: &mailgate_config::ServiceAccount,
    subject: &str,
    scopes: &str,
    token_url: &str,
) -> Result<SecretString, OAuthError> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        sub: &'a str,
        scope: &'a str,
        aud: &'a str,
        iat: u64,
        exp: u64,
        jti: String,
    }
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(sa.private_key.expose_secret().as_bytes())
        .map_err(|e| {
            OAuthError::BadKey(format!(
                "the private key of {} cannot be used: {e}",
                sa.file.display()
            ))
        })?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = sa.private_key_id.clone();
    let iat = crate::accounts::store::now();
    let claims = Claims {
        iss: &sa.client_email,
        sub: subject,
        scope: scopes,
        aud: token_url,
        iat,
        exp: iat + 3600,
        // RS256 is deterministic: without a unique ID two assertions in the
        // same second would be the same bytes, which a token endpoint may
        // refuse as a replay (RFC 7523 §3).
        jti: random_guid(),
    };
    jsonwebtoken::encode(&header, &claims, &key)
        .map(SecretString::from)
        .map_err(|e| OAuthError::BadKey(format!("cannot sign the assertion: {e}")))
}
