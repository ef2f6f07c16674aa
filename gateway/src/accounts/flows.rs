//! Obtaining an account's first tokens: the browser flow (authorization code
//! with PKCE, redirect to a loopback listener), the device flow and the paste
//! flow, and sealing what they grant. Used by `mailgate login` and by in-band
//! authorisation in the gateway.

use std::time::Duration;

use mailgate_config::Provider;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::accounts::changes::{AccountEvent, Changes};
use crate::accounts::errors::{LoginError, Unavailable};
use crate::accounts::identity::ConfirmedGrant;
use crate::accounts::oauth::{AuthorizationRequest, DeviceAuthorization, Grant, OAuth, OAuthError};
use crate::accounts::redirect::{BindError, RedirectError, RedirectServer};
use crate::accounts::store::{
    Access, Audience, Expect, Kdf, SealingKey, Store, StoreError, TokenFile, Tokens, now,
};

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
    /// The process's Argon2 bound is full.
    #[error("the gateway is busy; try again in a moment")]
    Busy,
    #[error(
        "the provider granted no refresh token; check the scopes (offline_access for Microsoft) and, for Google, that access_type=offline is sent"
    )]
    NoRefreshToken,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Identity(#[from] crate::accounts::identity::IdentityError),
}

/// Seals a confirmed grant with `password` (blocking: one Argon2
/// derivation; run it through [`crate::accounts::argon::limiter`]).
pub fn seal_confirmed(
    confirmed: &ConfirmedGrant,
    password: &SecretString,
) -> Result<TokenFile, FlowError> {
    let rt = confirmed.refresh_token().ok_or(FlowError::NoRefreshToken)?;
    let mut tokens = Tokens {
        refresh_token: Some(rt.clone()),
        ..Tokens::default()
    };
    // An asserted import carries no access token: the first login
    // refreshes.
    let verified = confirmed.access().is_some();
    if let Some((token, life)) = confirmed.access() {
        let life = life.map(|d| d.as_secs()).unwrap_or(3600);
        tokens.access.insert(
            Audience::Mail,
            Access {
                token: token.clone(),
                expires_at: now().saturating_add(life),
            },
        );
    }
    let key = SealingKey::derive(password, &Kdf::generate())?;
    let mut file = TokenFile::seal(confirmed.user(), confirmed.provider(), &key, &tokens)?;
    if verified {
        file.last_refresh = Some(now());
    }
    file.tenant = confirmed.tenant().map(str::to_owned);
    Ok(file)
}

/// Why a local password was not changed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("no tokens are stored for {0}; authorise the account first")]
    NoTokens(String),
    #[error("the old password is wrong")]
    WrongPassword,
    #[error("the new password must have at least {MIN_PASSWORD} characters")]
    TooShort,
    #[error("{0}")]
    Store(StoreError),
    /// Refused without a check (backoff, or too many checks at once).
    #[error("{0}")]
    Refused(LoginError),
}

/// The shortest local password that may seal an account's tokens.
pub const MIN_PASSWORD: usize = 8;

/// The file of `user` to re-seal with a new password, or why not.
pub async fn file_to_rekey(
    store: &Store,
    user: &str,
    new: &SecretString,
) -> Result<TokenFile, PasswordError> {
    if new.expose_secret().chars().count() < MIN_PASSWORD {
        return Err(PasswordError::TooShort);
    }
    store
        .load(user)
        .await
        .map_err(PasswordError::Store)?
        .ok_or_else(|| PasswordError::NoTokens(user.to_owned()))
}

/// `file` opened with `old` and sealed again under `new` (blocking: two
/// Argon2 derivations). `at` names it in errors.
pub fn rekey(
    file: &TokenFile,
    old: &SecretString,
    new: &SecretString,
    at: &std::path::Path,
) -> Result<TokenFile, PasswordError> {
    let key = SealingKey::derive(old, &file.kdf).map_err(PasswordError::Store)?;
    let tokens = match file.open(&key, at) {
        Ok(t) => t,
        Err(StoreError::WrongPassword) => return Err(PasswordError::WrongPassword),
        Err(e) => return Err(PasswordError::Store(e)),
    };
    let new_key = SealingKey::derive(new, &Kdf::generate()).map_err(PasswordError::Store)?;
    let mut next = file.clone();
    next.reseal(&new_key, &tokens)
        .map_err(PasswordError::Store)?;
    Ok(next)
}

/// Re-seals `user`'s tokens under `new` after opening them with `old`
/// (`mailgate passwd`; the two derivations run within the process's one
/// Argon2 bound). The write is a compare-and-swap on the file that was
/// opened, so a running gateway takes the new password from its next login
/// on and nothing written meanwhile is lost.
pub async fn change_password(
    changes: &Changes,
    store: &Store,
    user: &str,
    old: &SecretString,
    new: &SecretString,
) -> Result<(), PasswordError> {
    let file = file_to_rekey(store, user, new).await?;
    let (f, o, n, at) = (file.clone(), old.clone(), new.clone(), store.location(user));
    let next = crate::accounts::argon::limiter()
        .run(move || rekey(&f, &o, &n, &at))
        .await
        .map_err(|_| PasswordError::Refused(LoginError::Unavailable(Unavailable::Busy)))??;
    changes
        .save(
            &next,
            Expect::Same(&file),
            Some(AccountEvent::PasswordChanged {
                user: user.to_owned(),
            }),
        )
        .await
        .map_err(PasswordError::Store)?;
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

/// A page under `state_dir` that sends the browser on to a sign-in URL;
/// removed when dropped.
#[derive(Debug)]
pub struct SignInPage(std::path::PathBuf);

impl Drop for SignInPage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Opens `url` in the user's browser without putting it on a command line
/// (where `ps` shows it, `state` included, to every user of the machine):
/// the browser is given the path of a private page (0600, in a 0700
/// directory under `state_dir`) that redirects to it. Keep the returned
/// page until the sign-in is over.
pub fn open_browser(url: &url::Url, state_dir: &std::path::Path) -> std::io::Result<SignInPage> {
    let dir = state_dir.join("sign-in");
    let mut name = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut name);
    let name: String = name.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("{name}.html"));
    let escaped = html_escape(url.as_str());
    let body = format!(
        "<!doctype html><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\"><meta http-equiv=\"refresh\" content=\"0;url={escaped}\"><title>mailgate sign-in</title><p><a href=\"{escaped}\">Continue to the sign-in</a></p>\n"
    );
    crate::accounts::store::file::write_atomic(&dir, &path, body.as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let page = SignInPage(path);
    let file_url = url::Url::from_file_path(&page.0)
        .map_err(|()| std::io::Error::other("the page's path is not absolute"))?;
    webbrowser::open(file_url.as_str())?;
    Ok(page)
}

/// Escapes text for an HTML attribute or element.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
