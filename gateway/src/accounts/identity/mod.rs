//! Tokens belong to one identity (SPEC §4): before anything is sealed for
//! an account, mailgate makes sure the grant is that account's.
//!
//! With an OpenID Connect ID token (mailgate asks for `openid email`), its
//! claims are checked: the audience is our client ID, it has not expired,
//! the issuer is the provider's, and for browser flows it echoes our
//! `nonce`. Its signature is not checked: the ID token came straight from
//! the token endpoint over verified TLS, which OpenID Connect Core §3.1.3.7
//! allows in place of the signature. The identity it names must be the
//! account's user or its `upstream_user`, and it is read only where the
//! provider verified it (SPEC §4):
//!
//! - Microsoft: `preferred_username` (the sign-in name, whose domain the
//!   tenant has verified); `email` only with `xms_edov = true` (Entra's
//!   mail attribute is set by each tenant's administrators, to anything:
//!   the "nOAuth" class). The token's tenant (`tid`) must be one the
//!   configuration pins (`allowed_tenants`, or `tenant` as an ID), and an
//!   account's tokens stay in the tenant of its first sign-in: a personal
//!   account or another organisation with the same address cannot take it
//!   over.
//! - Google: `email` with `email_verified`.
//!
//! Without an ID token (or without an identity in it), one upstream XOAUTH2
//! login as the account's upstream user proves that the token opens that
//! mailbox.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mailgate_config::{Preset, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::accounts::oauth::Grant;

mod confirmed;
pub use confirmed::{ConfirmedGrant, HeldGrant, asserted};

/// Seconds of clock difference tolerated on `exp`.
const SKEW: u64 = 120;

/// Why a grant could not be tied to the account.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Someone else signed in.
    #[error(
        "the sign-in was for {signed_in}, not for {expected}; nothing was stored. Sign in as {expected} (sign out of {signed_in} in the browser first, or use a private window) and try again"
    )]
    Mismatch { signed_in: String, expected: String },
    /// The token does not open the account's mailbox upstream.
    #[error(
        "the token from this sign-in does not open the mailbox of {expected} at {server} ({detail}); nothing was stored. The browser was probably signed in to another account: sign in as {expected} and try again"
    )]
    NotThisMailbox {
        expected: String,
        server: String,
        detail: String,
    },
    /// The ID token is not acceptable.
    #[error("the provider's ID token is not acceptable ({0}); nothing was stored")]
    BadIdToken(String),
    /// Signed in from an organisation (tenant) that may not claim it.
    #[error(
        "the sign-in came from the Microsoft organisation {tid}, which may not claim {expected}{why}; nothing was stored. Sign in with the account of {expected}'s own organisation"
    )]
    Tenant {
        tid: String,
        expected: String,
        why: &'static str,
    },
    /// No way to check the identity right now.
    #[error(
        "the identity of the sign-in cannot be checked now ({0}); nothing was stored; try again"
    )]
    Unverifiable(String),
}

/// The claims mailgate reads from an ID token.
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    aud: Audience,
    exp: u64,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    tid: Option<String>,
    /// Microsoft: whether the `email` claim's domain is verified by the
    /// tenant that issued the token.
    #[serde(default)]
    xms_edov: Option<serde_json::Value>,
}

/// A boolean claim (`true`, or Microsoft's and Google's `"true"`).
fn claim_true(v: Option<&serde_json::Value>) -> Option<bool> {
    match v? {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) => Some(s.eq_ignore_ascii_case("true") || s == "1"),
        serde_json::Value::Number(n) => Some(n.as_u64() == Some(1)),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, id: &str) -> bool {
        match self {
            Audience::One(a) => a == id,
            Audience::Many(v) => v.iter().any(|a| a == id),
        }
    }
}

fn decode_claims(id_token: &str) -> Result<Claims, IdentityError> {
    let bad = |s: &str| IdentityError::BadIdToken(s.to_owned());
    let mut parts = id_token.split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a compact JWT"));
    };
    let json = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| bad("its payload is not base64url"))?;
    serde_json::from_slice(&json).map_err(|e| bad(&format!("its claims are not usable: {e}")))
}

/// The host of Google's token endpoint.
const GOOGLE_TOKEN_HOST: &str = "oauth2.googleapis.com";

/// Whether `iss` is the provider's issuer: Google's fixed one for the
/// gmail preset with Google's token endpoint; otherwise an issuer at the token endpoint's own origin
/// (Microsoft: `https://login.microsoftonline.com/{tid}/v2.0`, whose
/// tenant must be the configured one when that is a tenant ID).
fn issuer_ok(provider: &Provider, claims: &Claims) -> bool {
    let iss = claims.iss.as_str();
    if provider.preset == Preset::Gmail && provider.token_url.host_str() == Some(GOOGLE_TOKEN_HOST)
    {
        return iss == "https://accounts.google.com" || iss == "accounts.google.com";
    }
    let Ok(url) = url::Url::parse(iss) else {
        return false;
    };
    if url.origin() != provider.token_url.origin() {
        return false;
    }
    if matches!(provider.preset, Preset::Office365 | Preset::Outlook) {
        let Some(tid) = &claims.tid else {
            return false;
        };
        if url.path().trim_end_matches('/') != format!("/{tid}/v2.0") {
            return false;
        }
        if let Some(tenant) = &provider.tenant
            && tenant.len() == 36
            && tenant.chars().filter(|c| *c == '-').count() == 4
            && !tenant.eq_ignore_ascii_case(tid)
        {
            return false;
        }
    }
    true
}

/// The identities an ID token vouches for (see the module's notes).
fn identities(provider: &Provider, claims: &Claims) -> Vec<String> {
    let verified = claim_true(claims.email_verified.as_ref());
    let mut out = Vec::new();
    let email_ok = match provider.preset {
        // Google: only a verified address names the account.
        Preset::Gmail => verified == Some(true),
        // Microsoft: only an address whose domain the tenant verified.
        Preset::Office365 | Preset::Outlook => claim_true(claims.xms_edov.as_ref()) == Some(true),
        _ => verified != Some(false),
    };
    if provider.preset != Preset::Gmail
        && let Some(u) = &claims.preferred_username
    {
        out.push(u.clone());
    }
    if email_ok && let Some(e) = &claims.email {
        out.push(e.clone());
    }
    out
}

/// Microsoft: whether the token's tenant may claim the account: one the
/// configuration pins, and the tenant its tokens were first sealed from
/// (`recorded`), when known.
fn tenant_ok(
    provider: &Provider,
    claims: &Claims,
    expected: &Expected<'_>,
) -> Result<(), IdentityError> {
    if !provider.is_microsoft() {
        return Ok(());
    }
    let tid = claims.tid.as_deref().unwrap_or("").to_ascii_lowercase();
    let refuse = |why| {
        warn!(tid = %one_line(&tid), expected = %expected.user, "the sign-in came from a tenant that may not claim the account; nothing stored");
        Err(IdentityError::Tenant {
            tid: one_line(&tid),
            expected: expected.user.to_owned(),
            why,
        })
    };
    if let Some(pinned) = provider.pinned_tenants()
        && !pinned.contains(&tid)
    {
        return refuse(" (the gateway allows only its own tenants)");
    }
    if let Some(recorded) = expected.tenant
        && !recorded.eq_ignore_ascii_case(&tid)
    {
        return refuse(" (its tokens come from another organisation)");
    }
    Ok(())
}

/// The tenant (`tid`) of a grant's ID token, when it has one: recorded
/// with the account's tokens so that later sign-ins stay in it.
pub fn tenant_of(grant: &Grant) -> Option<String> {
    let claims = decode_claims(grant.id_token.as_ref()?.expose_secret()).ok()?;
    claims.tid.map(|t| t.to_ascii_lowercase())
}

/// What the sign-in must prove.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The account's (lower-cased) login name.
    pub user: &'a str,
    /// The SASL identity upstream (`upstream_user`, else the login name).
    pub upstream_user: &'a str,
    /// The nonce of a browser flow's authorization request.
    pub nonce: Option<&'a SecretString>,
    /// Microsoft: the tenant the account's stored tokens came from, if
    /// known; a sign-in from another one is refused.
    pub tenant: Option<&'a str>,
}

/// One upstream XOAUTH2 login to be made as proof that a token opens a
/// mailbox.
#[derive(Debug, Clone)]
pub struct ProofRequest {
    pub provider: Arc<Provider>,
    /// The SASL identity upstream.
    pub user: String,
    pub token: SecretString,
    pub timeout: Duration,
    /// The EHLO name when the proof is an SMTP login.
    pub hostname: String,
}

/// How an upstream proof login ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// The server took the token for that user.
    Opened { server: String },
    /// The server refused the token; its reply.
    Refused { server: String, detail: String },
    /// The login could not be made (no server, unreachable, broken).
    Failed(String),
}

/// Makes one upstream proof login; the session layer provides it (the
/// accounts do not speak mail protocols themselves).
pub type Prove = fn(ProofRequest) -> Pin<Box<dyn Future<Output = Proof> + Send>>;

/// How to reach the provider's mail server for the upstream proof.
#[derive(Debug, Clone)]
pub struct Prover {
    pub timeout: Duration,
    /// The EHLO name when the proof is an SMTP login.
    pub hostname: String,
    pub prove: Prove,
}

/// Checks that `grant` belongs to the account `expected` names; the grant,
/// confirmed, names the identity that signed in. Nothing is stored here.
pub async fn confirm(
    provider: &Arc<Provider>,
    grant: Grant,
    expected: Expected<'_>,
    prover: &Prover,
) -> Result<ConfirmedGrant, IdentityError> {
    let identity = check(provider, &grant, expected, prover).await?;
    Ok(ConfirmedGrant::new(
        expected.user,
        &provider.name,
        identity,
        tenant_of(&grant),
        grant,
    ))
}

/// The identity that signed in, when it is the account's.
async fn check(
    provider: &Arc<Provider>,
    grant: &Grant,
    expected: Expected<'_>,
    prover: &Prover,
) -> Result<String, IdentityError> {
    if let Some(id_token) = &grant.id_token {
        let claims = decode_claims(id_token.expose_secret())?;
        if !claims.aud.contains(&provider.client_id) {
            return Err(IdentityError::BadIdToken(
                "it is not for this client ID".into(),
            ));
        }
        if claims.exp.saturating_add(SKEW) < crate::accounts::store::now() {
            return Err(IdentityError::BadIdToken("it has expired".into()));
        }
        if !issuer_ok(provider, &claims) {
            return Err(IdentityError::BadIdToken(format!(
                "its issuer {} is not the provider's",
                one_line(&claims.iss)
            )));
        }
        if let Some(want) = expected.nonce {
            let got = claims.nonce.as_deref().unwrap_or("");
            if !bool::from(got.as_bytes().ct_eq(want.expose_secret().as_bytes())) {
                return Err(IdentityError::BadIdToken(
                    "its nonce is not this sign-in's".into(),
                ));
            }
        }
        tenant_ok(provider, &claims, &expected)?;
        let names = identities(provider, &claims);
        if let Some(first) = names.first() {
            let matches = |n: &String| {
                n.eq_ignore_ascii_case(expected.user)
                    || n.eq_ignore_ascii_case(expected.upstream_user)
            };
            if names.iter().any(matches) {
                let who = names.iter().find(|n| matches(n)).unwrap_or(first).clone();
                info!(identity = %who, "the sign-in's identity is the account's");
                return Ok(who);
            }
            let signed_in = one_line(first);
            warn!(
                signed_in = %signed_in,
                expected = %expected.user,
                "the sign-in was for another identity; nothing stored"
            );
            return Err(IdentityError::Mismatch {
                signed_in,
                expected: expected.user.to_owned(),
            });
        }
        info!("the ID token names no identity; proving the token upstream instead");
    } else {
        info!("no ID token; proving the token with one upstream login");
    }
    prove_upstream(provider, &grant.access_token, expected, prover).await?;
    Ok(expected.upstream_user.to_owned())
}

/// One upstream XOAUTH2 login as the account's upstream user.
async fn prove_upstream(
    provider: &Arc<Provider>,
    token: &SecretString,
    expected: Expected<'_>,
    prover: &Prover,
) -> Result<(), IdentityError> {
    let proof = (prover.prove)(ProofRequest {
        provider: provider.clone(),
        user: expected.upstream_user.to_owned(),
        token: token.clone(),
        timeout: prover.timeout,
        hostname: prover.hostname.clone(),
    })
    .await;
    match proof {
        Proof::Opened { server } => {
            info!(%server, "the token opens the account's mailbox");
            Ok(())
        }
        Proof::Refused { server, detail } => {
            warn!(%server, expected = %expected.upstream_user, %detail, "the token does not open the account's mailbox; nothing stored");
            Err(IdentityError::NotThisMailbox {
                expected: expected.upstream_user.to_owned(),
                server,
                detail: one_line(&detail),
            })
        }
        Proof::Failed(e) => Err(IdentityError::Unverifiable(e)),
    }
}

/// Text from a provider or a server, on one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.c2ln",
            enc(&serde_json::json!({"alg": "RS256", "typ": "JWT"})),
            enc(&claims)
        )
    }

    fn provider(preset: Preset, token_url: &str) -> Provider {
        Provider {
            name: "p".into(),
            preset,
            client_id: "cid".into(),
            client_secret: None,
            tenant: None,
            flow: mailgate_config::Flow::AuthorizationCode,
            redirect_uri: url::Url::parse("http://localhost:3017/").expect("url"),
            authorize_url: None,
            token_url: url::Url::parse(token_url).expect("url"),
            device_code_url: None,
            scopes: vec![],
            imap: None,
            pop3: None,
            smtp: None,
            ca_file: None,
            min_token_life: Duration::from_secs(60),
            service_account: None,
            client_certificate: None,
            proxy: None,
            allowed_tenants: Vec::new(),
            sending: mailgate_config::Sending::Smtp,
            graph: mailgate_config::GraphApi {
                url: url::Url::parse(mailgate_config::GRAPH_URL).expect("url"),
                save_to_sent_items: true,
                max_message_size: 35_000_000,
                scopes: vec![mailgate_config::GRAPH_MAIL_SEND.into()],
            },
        }
    }

    fn grant(id_token: Option<String>) -> Grant {
        Grant {
            access_token: SecretString::from("at"),
            refresh_token: None,
            expires_in: None,
            id_token: id_token.map(SecretString::from),
        }
    }

    async fn check(
        p: Provider,
        claims: serde_json::Value,
        nonce: Option<&str>,
    ) -> Result<String, IdentityError> {
        check_in(p, claims, nonce, None).await
    }

    async fn check_in(
        p: Provider,
        claims: serde_json::Value,
        nonce: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<String, IdentityError> {
        let nonce = nonce.map(SecretString::from);
        confirm(
            &Arc::new(p),
            grant(Some(jwt(claims))),
            Expected {
                user: "alice@x.test",
                upstream_user: "alice@x.test",
                nonce: nonce.as_ref(),
                tenant,
            },
            &Prover {
                timeout: Duration::from_secs(1),
                hostname: "localhost".into(),
                prove: |_| Box::pin(async { Proof::Failed("no mail server in this test".into()) }),
            },
        )
        .await
        .map(|c| c.identity().to_owned())
    }

    #[tokio::test]
    async fn microsoft_and_google_claims() {
        let exp = crate::accounts::store::now() + 600;
        let ms = provider(
            Preset::Office365,
            "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        );
        let tid = "9188040d-6c67-4c5b-b112-36a304b66dad";
        let ok = serde_json::json!({
            "iss": format!("https://login.microsoftonline.com/{tid}/v2.0"),
            "aud": "cid", "exp": exp, "tid": tid, "nonce": "n1",
            "preferred_username": "Alice@X.test",
        });
        assert_eq!(
            check(ms.clone(), ok.clone(), Some("n1")).await.expect("ok"),
            "Alice@X.test"
        );
        let mut other = ok.clone();
        other["preferred_username"] = "mallory@evil.test".into();
        match check(ms.clone(), other, Some("n1")).await {
            Err(IdentityError::Mismatch {
                signed_in,
                expected,
            }) => {
                assert_eq!(signed_in, "mallory@evil.test");
                assert_eq!(expected, "alice@x.test");
            }
            other => panic!("{other:?}"),
        }
        for (field, value) in [
            ("aud", serde_json::json!("someone-else")),
            ("exp", serde_json::json!(1000)),
            ("iss", serde_json::json!("https://evil.test/x/v2.0")),
            ("nonce", serde_json::json!("n2")),
        ] {
            let mut bad = ok.clone();
            bad[field] = value;
            assert!(
                matches!(
                    check(ms.clone(), bad, Some("n1")).await,
                    Err(IdentityError::BadIdToken(_))
                ),
                "{field}"
            );
        }
        let mut pinned = ms.clone();
        pinned.tenant = Some("00000000-0000-0000-0000-000000000001".into());
        assert!(matches!(
            check(pinned, ok.clone(), Some("n1")).await,
            Err(IdentityError::BadIdToken(_))
        ));

        // nOAuth: another tenant's user whose (unverified) mail attribute
        // is the victim's address is that user, not the victim.
        let mut forged = ok.clone();
        forged["preferred_username"] = "mallory@evil.test".into();
        forged["email"] = "alice@x.test".into();
        assert!(matches!(
            check(ms.clone(), forged.clone(), Some("n1")).await,
            Err(IdentityError::Mismatch { .. })
        ));
        // With xms_edov the tenant verified the address's domain.
        forged["xms_edov"] = true.into();
        assert_eq!(
            check(ms.clone(), forged, Some("n1")).await.expect("ok"),
            "alice@x.test"
        );
        // allowed_tenants: only those tenants' users.
        let mut allowed = ms.clone();
        allowed.allowed_tenants = vec!["00000000-0000-0000-0000-000000000001".into()];
        assert!(matches!(
            check(allowed.clone(), ok.clone(), Some("n1")).await,
            Err(IdentityError::Tenant { .. })
        ));
        allowed.allowed_tenants.push(tid.into());
        assert!(check(allowed, ok.clone(), Some("n1")).await.is_ok());
        // The tenant of the account's tokens: a sign-in from another one
        // (the same address as a personal account) is refused.
        assert!(matches!(
            check_in(
                ms.clone(),
                ok.clone(),
                Some("n1"),
                Some("00000000-0000-0000-0000-000000000002")
            )
            .await,
            Err(IdentityError::Tenant { .. })
        ));
        assert!(
            check_in(ms.clone(), ok, Some("n1"), Some(tid))
                .await
                .is_ok()
        );

        let g = provider(Preset::Gmail, "https://oauth2.googleapis.com/token");
        let gok = serde_json::json!({
            "iss": "https://accounts.google.com", "aud": "cid", "exp": exp,
            "email": "alice@x.test", "email_verified": true,
        });
        assert!(check(g.clone(), gok.clone(), None).await.is_ok());
        let mut unverified = gok.clone();
        unverified["email_verified"] = false.into();
        // No usable identity: the upstream proof is tried, and this
        // provider has no server, so nothing can vouch for it.
        assert!(matches!(
            check(g, unverified, None).await,
            Err(IdentityError::Unverifiable(_))
        ));
        assert!(matches!(
            decode_claims("a.b"),
            Err(IdentityError::BadIdToken(_))
        ));
    }
}
