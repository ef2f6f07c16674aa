//! Obtaining an account's first tokens: the browser flow (authorization code
//! with PKCE, redirect to a loopback listener), the device flow and the paste
//! flow, and sealing what they grant. Used by `mailgate login` and by in-band
//! authorisation in the gateway.

use std::time::Duration;

use mailgate_config::Provider;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::oauth::{AuthorizationRequest, DeviceAuthorization, Grant, OAuth, OAuthError};
use crate::redirect::{BindError, RedirectError, RedirectServer};
use crate::store::{Kdf, SealingKey, Store, StoreError, TokenFile, Tokens, now};

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("{0}")]
    OAuth(#[from] OAuthError),
    #[error("{0}")]
    Redirect(#[from] RedirectError),
    #[error("{0}")]
    Bind(#[from] BindError),
    #[error("no sign-in arrived within {}; run the login again (a desktop firewall can block the redirect to {uri}: allow it, or use --flow paste)", humantime::format_duration(*.waited))]
    Timeout { waited: Duration, uri: url::Url },
    #[error("{0}")]
    Input(String),
    #[error(
        "the provider granted no refresh token; check the scopes (offline_access for Microsoft) and, for Google, that access_type=offline is sent"
    )]
    NoRefreshToken,
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Seals what a flow granted for `user` with `password` and stores it.
pub fn store_grant(
    store: &Store,
    user: &str,
    provider: &str,
    grant: &Grant,
    password: &SecretString,
) -> Result<(), FlowError> {
    let rt = grant
        .refresh_token
        .as_ref()
        .ok_or(FlowError::NoRefreshToken)?;
    let mut tokens = Tokens::default();
    tokens.refresh_token = Some(rt.expose_secret().to_owned());
    tokens.access_token = Some(grant.access_token.expose_secret().to_owned());
    let life = grant.expires_in.map(|d| d.as_secs()).unwrap_or(3600);
    tokens.expires_at = Some(now().saturating_add(life));
    let key = SealingKey::derive(password, &Kdf::generate())?;
    let mut file = TokenFile::seal(user, provider, &key, &tokens);
    file.last_refresh = Some(now());
    store.save(&file)?;
    Ok(())
}

/// A browser sign-in whose redirect `server` already expects.
#[derive(Debug)]
pub struct BrowserSignIn {
    pub request: AuthorizationRequest,
    redirect: tokio::sync::oneshot::Receiver<Result<SecretString, RedirectError>>,
}

/// The browser flow's first half: an authorization request whose redirect
/// comes to `server`, registered there before its URL is shown to anyone.
pub fn browser_request(
    oauth: &OAuth,
    provider: &Provider,
    server: &RedirectServer,
    user: &str,
) -> Result<BrowserSignIn, FlowError> {
    let request = oauth.authorization_request(provider, &server.redirect_uri, user)?;
    let redirect = server.expect(&request.state);
    Ok(BrowserSignIn { request, redirect })
}

/// The browser flow's second half: waits for the redirect (at most
/// `timeout`) and exchanges the code.
pub async fn browser_finish(
    oauth: &OAuth,
    provider: &Provider,
    server: &RedirectServer,
    sign_in: BrowserSignIn,
    timeout: Duration,
) -> Result<Grant, FlowError> {
    let BrowserSignIn { request, redirect } = sign_in;
    let code = match tokio::time::timeout(timeout, redirect).await {
        Err(_) => {
            server.forget(&request.state);
            return Err(FlowError::Timeout {
                waited: timeout,
                uri: server.redirect_uri.clone(),
            });
        }
        Ok(Err(_)) => return Err(RedirectError::Abandoned.into()),
        Ok(Ok(result)) => result?,
    };
    Ok(oauth.exchange_code(provider, &request, &code).await?)
}

/// The paste flow: `redirected` is the URL the browser ended on; its
/// `state` must match, then its code is exchanged.
pub async fn paste_finish(
    oauth: &OAuth,
    provider: &Provider,
    request: &AuthorizationRequest,
    redirected: &str,
) -> Result<Grant, FlowError> {
    let url = url::Url::parse(redirected.trim()).map_err(|e| {
        FlowError::Input(format!(
            "that is not a URL ({e}); paste the whole address the browser ended on"
        ))
    })?;
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    let state = q.get("state").cloned().unwrap_or_default();
    if !bool::from(
        state
            .as_bytes()
            .ct_eq(request.state.expose_secret().as_bytes()),
    ) {
        return Err(RedirectError::StateMismatch.into());
    }
    if let Some(error) = q.get("error") {
        return Err(RedirectError::Provider {
            error: error.clone(),
            description: q.get("error_description").cloned().unwrap_or_default(),
        }
        .into());
    }
    let code = q.get("code").ok_or(RedirectError::NoCode)?;
    Ok(oauth
        .exchange_code(provider, request, &SecretString::from(code.clone()))
        .await?)
}

/// What to tell the user for a started device authorization.
pub fn device_instructions(d: &DeviceAuthorization) -> String {
    let mut s = format!(
        "To sign in, open {} and enter the code {}",
        d.verification_uri().as_str(),
        d.user_code().secret()
    );
    if let Some(m) = &d.extra_fields().message {
        s.push_str(&format!(" ({m})"));
    }
    s
}
