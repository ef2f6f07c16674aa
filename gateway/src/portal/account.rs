//! What a signed-in owner sees and does: the mail program settings, the
//! account page, a password change, authorising again, forgetting the
//! account, signing out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use mailgate_config::{Protocol, TlsMode};
use secrecy::SecretString;
use serde::Deserialize;
use tracing::{info, warn};

use super::app::{App, see_other};
use super::error::PortalError;
use super::extract::{Posted, SignedIn, SignedInPost};
use super::pages::{self, MIN, Setting, message, render};
use super::signin::{new_password, start_sign_in};
use crate::accounts::flows::PasswordError;
use crate::accounts::store::TokenFile;

/// The routes of this file.
pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/settings", get(settings))
        .route("/account", get(account))
        .route("/account/password", post(change_password))
        .route("/account/authorize", post(authorize_again))
        .route("/account/forget", post(forget))
        .route("/sign-out", post(sign_out))
}

#[derive(Deserialize)]
pub(super) struct SavedQuery {
    #[serde(default)]
    saved: Option<String>,
}

async fn settings(
    State(app): State<Arc<App>>,
    signed: SignedIn,
    Query(q): Query<SavedQuery>,
) -> Response {
    let rows = app.settings(&signed.user);
    render(
        StatusCode::OK,
        &pages::Settings {
            user: &signed.user,
            saved: q.saved.is_some(),
            listeners: &rows,
        },
    )
}

impl App {
    /// The host a mail program uses for a listener bound to `ip`.
    fn mail_host(&self, ip: IpAddr) -> String {
        if let Some(h) = self.config.public_url.as_ref().and_then(|u| u.host_str()) {
            return h.trim_matches(['[', ']']).to_owned();
        }
        if ip.is_loopback() {
            return ip.to_string();
        }
        if ip.is_unspecified() {
            return self.hostname.clone();
        }
        ip.to_string()
    }

    fn settings(&self, user: &str) -> Vec<Setting> {
        self.listeners
            .iter()
            .map(|l| {
                let (title, kind) = match l.protocol {
                    Protocol::Imap => ("Incoming mail (IMAP)", "IMAP"),
                    Protocol::Pop3 => ("Incoming mail (POP3)", "POP3"),
                    Protocol::Smtp => ("Outgoing mail (SMTP)", "SMTP"),
                };
                let encryption = match l.mode {
                    TlsMode::Implicit => "SSL/TLS",
                    TlsMode::Starttls => "STARTTLS",
                    TlsMode::None if l.bound.ip().is_loopback() => {
                        "None (the connection stays on this computer)"
                    }
                    TlsMode::None => "None",
                };
                let host = self.mail_host(l.bound.ip());
                let text = format!(
                    "{kind} server: {host}\nPort: {}\nEncryption: {encryption}\nUser name: {user}\nAuthentication: normal password",
                    l.bound.port()
                );
                Setting {
                    id: format!("{}-{}", l.protocol, l.bound.port()),
                    title: title.to_owned(),
                    host,
                    port: l.bound.port(),
                    encryption,
                    fingerprint: l.self_signed.clone(),
                    text,
                }
            })
            .collect()
    }
}

fn time(t: Option<u64>) -> String {
    match t {
        Some(s) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
                .to_string()
                .replace('T', " ")
                .replace('Z', " UTC")
        }
        None => "never".into(),
    }
}

async fn account_page(
    app: &App,
    signed: &SignedIn,
    status: StatusCode,
    message: Option<String>,
    error: Option<String>,
) -> Response {
    let (user, csrf) = (&signed.user, &signed.csrf);
    let file: Option<TokenFile> = app.ctx.accounts.record(user).await.ok().flatten();
    let state = match &file {
        None => "No access stored: authorise again to set it up",
        Some(f) if f.needs_authorization => {
            "Needs authorisation: the provider ended the access; authorise again"
        }
        Some(f) if f.graph_refused => {
            "Reads mail, but cannot send: this authorisation does not allow sending through Microsoft Graph; authorise again to allow it"
        }
        Some(_) => "Ready: your mail program can sign in",
    };
    let f = file.as_ref();
    render(
        status,
        &pages::Account {
            csrf,
            user,
            state,
            expires: time(f.and_then(|f| f.expires_at)),
            last_refresh: time(f.and_then(|f| f.last_refresh)),
            sealed_at: time(f.map(|f| f.sealed_at)),
            last_error: f
                .and_then(|f| f.last_error.clone())
                .unwrap_or_else(|| "none".into()),
            shared: app
                .ctx
                .config()
                .find_account(user)
                .map(|a| a.shared.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            message,
            error,
            min: MIN,
        },
    )
}

async fn account(State(app): State<Arc<App>>, signed: SignedIn) -> Response {
    account_page(&app, &signed, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
pub(super) struct ChangeForm {
    #[serde(default)]
    old: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    confirm: String,
}

async fn change_password(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    SignedInPost { signed, form }: SignedInPost<ChangeForm>,
) -> Response {
    let user = &signed.user;
    let new = match new_password(&form.new, &form.confirm) {
        Ok(p) => p,
        Err(e) => {
            return account_page(&app, &signed, StatusCode::BAD_REQUEST, None, Some(e)).await;
        }
    };
    let old = SecretString::from(form.old);
    let done = app
        .ctx
        .accounts
        .change_password(user, &old, &new, peer.ip())
        .await;
    let (status, error) = match done {
        Ok(()) => {
            info!(user = %user, "portal: local password changed");
            return account_page(
                &app,
                &signed,
                StatusCode::OK,
                Some("Your password is changed. Use the new one in your mail programs.".into()),
                None,
            )
            .await;
        }
        Err(PasswordError::WrongPassword) => {
            info!(user = %user, "portal: password change with a wrong current password");
            (
                StatusCode::FORBIDDEN,
                "The current password is wrong; nothing was changed.".to_owned(),
            )
        }
        Err(PasswordError::Refused(crate::accounts::LoginError::BadCredentials)) => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many wrong passwords. Wait a minute, then try again.".to_owned(),
        ),
        Err(PasswordError::Refused(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The gateway is busy. Try again in a moment.".to_owned(),
        ),
        Err(PasswordError::NoTokens(_)) => (
            StatusCode::CONFLICT,
            "No access is stored for this account: authorise again instead.".to_owned(),
        ),
        Err(PasswordError::TooShort) => (
            StatusCode::BAD_REQUEST,
            format!("The password must have at least {MIN} characters."),
        ),
        Err(PasswordError::Store(e)) => {
            warn!(user = %user, error = %e, "portal: password change failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "The password could not be changed now; nothing was changed. Reload the page and try again.".to_owned(),
            )
        }
    };
    account_page(&app, &signed, status, None, Some(error)).await
}

/// A form with nothing but its CSRF token.
#[derive(Deserialize)]
pub(super) struct Nothing {}

async fn authorize_again(
    State(app): State<Arc<App>>,
    SignedInPost { signed, .. }: SignedInPost<Nothing>,
) -> Result<Response, PortalError> {
    let SignedIn {
        session,
        user,
        provider,
        ..
    } = signed;
    start_sign_in(&app, &session, user, provider, true).await
}

async fn forget(
    State(app): State<Arc<App>>,
    SignedInPost { signed, .. }: SignedInPost<Nothing>,
) -> Response {
    let user = &signed.user;
    if let Err(e) = app.ctx.accounts.forget(user).await {
        warn!(user = %user, error = %e, "portal: forgetting the account failed");
        return account_page(
            &app,
            &signed,
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            Some("The account could not be forgotten now. Try again.".into()),
        )
        .await;
    }
    info!(user = %user, "portal: the owner forgot the account's tokens");
    app.sessions.end(&signed.session);
    let mut r = message(
        StatusCode::OK,
        "Account forgotten",
        format!(
            "mailgate no longer holds access for {user}. Mail programs cannot sign in until you set it up again from the first page."
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&app.sessions.clear_cookie()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn sign_out(
    State(app): State<Arc<App>>,
    Posted { session, .. }: Posted<Nothing>,
) -> Response {
    app.sessions.end(&session);
    let mut r = see_other("/");
    if let Ok(v) = HeaderValue::from_str(&app.sessions.clear_cookie()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}
