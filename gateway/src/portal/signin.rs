//! The sign-in round trip: the address form, the provider's redirect (the
//! session's own `state`, once; the identity check before anything else),
//! and the password that seals the tokens.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use mailgate_config::{Flow, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::app::{App, csrf_of, effective_redirect, one_line, see_other, with_cookie};
use super::device::start_device;
use super::error::PortalError;
use super::extract::{SignedIn, SignedInPost, WithCsrf, form_session};
use super::finish::{finish, sign_in_failed};
use super::pages::{self, MIN, index_page, render};
use super::sessions::{self, Handle, Moment, PendingSignIn};
use crate::accounts::flows::FlowError;
use crate::accounts::store::StoreError;

/// The routes of this file.
pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/sign-in", post(sign_in))
        .route("/password", get(password_form).post(password_save))
}

#[derive(Deserialize)]
pub(super) struct AddressForm {
    #[serde(default)]
    address: String,
}

/// The address form: from a session (its CSRF token) or before one (the
/// form cookie's token). Each client may start [`SIGN_INS_PER_MINUTE`]
/// sign-ins a minute; no password is checked here, so password backoff
/// plays no part. The session is made now, when a sign-in starts.
async fn sign_in(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<WithCsrf<AddressForm>>,
) -> Result<Response, PortalError> {
    let session = form_session(&app, &headers, &form.csrf);
    if session.is_none() && !app.sessions.form_token_ok(&headers, &form.csrf) {
        return Err(PortalError::Csrf);
    }
    let page = |status, address: &str, error: String| {
        index_page(&form.csrf, None, status, address, Some(error))
    };
    let address = one_line(form.rest.address.trim(), 320);
    let Some(user) = crate::accounts::account_name(&address).filter(|u| u.contains('@')) else {
        return Ok(page(
            StatusCode::BAD_REQUEST,
            &address,
            "Enter your whole e-mail address, e.g. name@example.com.".into(),
        ));
    };
    if !app.sign_ins.take(peer.ip()) {
        info!(client = %peer.ip(), "portal: too many sign-ins started by this client");
        return Ok(page(
            StatusCode::TOO_MANY_REQUESTS,
            &address,
            "Too many sign-ins were started from here. Wait a minute, then try again.".into(),
        ));
    }
    let config = app.ctx.config();
    let Some(provider) = config
        .find_account(&user)
        .and_then(|a| config.provider(&a.provider))
        .cloned()
    else {
        info!(user = %user, "portal: an address that no account matches");
        return Ok(page(
            StatusCode::NOT_FOUND,
            &address,
            format!(
                "{user} is not served by this gateway. Check the address, or ask your administrator."
            ),
        ));
    };
    let h = match session {
        Some(h) => h,
        None => match app.sessions.create() {
            Some(h) => h,
            None => {
                warn!("portal: every session is under way; no new one now");
                return Err(PortalError::page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Busy",
                    "The gateway has too many sign-ins under way. Try again in a few minutes.",
                ));
            }
        },
    };
    start_sign_in(&app, &h, user, provider, false).await
}

/// Sends the browser to the provider's sign-in for `user` (or, for a
/// device-code provider, to the page with the code to enter there).
pub(super) async fn start_sign_in(
    app: &App,
    h: &Handle,
    user: String,
    provider: Arc<Provider>,
    again: bool,
) -> Result<Response, PortalError> {
    match provider.flow {
        Flow::AuthorizationCode => {}
        Flow::DeviceCode => return start_device(app, h, user, provider, again).await,
        Flow::ClientCredentials | Flow::ServiceAccount => {
            return Err(PortalError::page(
                StatusCode::BAD_REQUEST,
                "No sign-in needed",
                format!(
                    "{user} is served with the organisation's own credentials: your administrator gives you its password."
                ),
            ));
        }
    }
    let Some(redirect) = effective_redirect(&app.config, app.bound, &provider) else {
        warn!(
            provider = %provider.name,
            redirect_uri = %provider.redirect_uri,
            portal = %app.base,
            "portal: the provider's redirect_uri does not point at the portal"
        );
        return Err(PortalError::advice(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not set up for the portal",
            format!("This gateway cannot sign in {user} here yet."),
            format!(
                "The administrator must register {} as a redirect URI of the app and set redirect_uri to it in provider {}.",
                app.base, provider.name
            ),
        ));
    };
    let request = match app
        .ctx
        .accounts
        .authorization_request(&provider, &redirect, &user)
    {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "portal: cannot build the sign-in request");
            return Err(PortalError::page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in unavailable",
                e.to_string(),
            ));
        }
    };
    let to = request.url.to_string();
    let stored = app.sessions.with(h, |s| {
        s.pending = Some(PendingSignIn {
            request,
            user: user.clone(),
            provider: provider.name.clone(),
            again,
            started: Moment::now(),
        })
    });
    if stored.is_none() {
        return Err(PortalError::NotSignedIn);
    }
    info!(user = %user, again, "portal: sign-in sent to the provider");
    Ok(with_cookie(app, h, see_other(&to)))
}

/// The provider's redirect: the session's own sign-in (its `state`, once),
/// else nothing.
pub(super) async fn callback(
    app: &App,
    headers: &HeaderMap,
    q: HashMap<String, String>,
) -> Result<Response, PortalError> {
    let state = q.get("state").map(String::as_str).unwrap_or("");
    let h = app.sessions.find(headers);
    let pending = h
        .as_ref()
        .and_then(|h| {
            app.sessions.with(h, |s| {
                let mine = s.pending.as_ref().is_some_and(|p| {
                    bool::from(
                        p.request
                            .state
                            .expose_secret()
                            .as_bytes()
                            .ct_eq(state.as_bytes()),
                    )
                });
                if mine { s.pending.take() } else { None }
            })
        })
        .flatten();
    let (Some(h), Some(pending)) = (h, pending) else {
        app.ctx.metrics.portal_sign_in("unknown_state");
        info!("portal: a redirect for no sign-in of this browser was ignored");
        return Err(PortalError::page(
            StatusCode::BAD_REQUEST,
            "Sign-in not recognised",
            "This sign-in was started in another browser, has expired, or was already used. Start again from the first page.",
        ));
    };
    if pending.started.elapsed() > sessions::SIGN_IN {
        app.ctx.metrics.portal_sign_in("unknown_state");
        return Err(PortalError::page(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "The sign-in took too long. Start again from the first page.",
        ));
    }
    let csrf = csrf_of(app, &h);
    let user = pending.user.clone();
    if let Some(error) = q.get("error") {
        let error = one_line(error, 100);
        let description = one_line(q.get("error_description").map_or("", String::as_str), 300);
        app.ctx.metrics.portal_sign_in("provider_error");
        info!(user = %user, error = %error, "portal: the provider refused the sign-in");
        return Ok(render(
            StatusCode::BAD_REQUEST,
            &pages::ProviderError {
                csrf: &csrf,
                address: &user,
                advice: pages::provider_advice(&error, &description),
                error: &error,
                description: &description,
            },
        ));
    }
    let Some(code) = q.get("code") else {
        app.ctx.metrics.portal_sign_in("failed");
        return Err(PortalError::page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The provider sent no authorisation. Start again from the first page.",
        ));
    };
    let provider = app.provider(&pending.provider).inspect_err(|_| {
        app.ctx.metrics.portal_sign_in("failed");
    })?;
    let grant = match app
        .ctx
        .accounts
        .exchange_code(
            &provider,
            &pending.request,
            &SecretString::from(code.clone()),
        )
        .await
    {
        Ok(g) => g,
        Err(e) => {
            app.ctx.metrics.portal_sign_in("failed");
            warn!(user = %user, error = %e, "portal: the authorization code exchange failed");
            return Err(sign_in_failed(&e));
        }
    };
    finish(
        app,
        &h,
        &user,
        provider,
        grant,
        Some(&pending.request.nonce),
        pending.again,
    )
    .await
}

/// Whether the session holds tokens that wait for a password.
fn has_unsealed(app: &App, h: &Handle) -> bool {
    app.sessions
        .with(h, |s| {
            s.signed_in
                .as_ref()
                .and_then(|si| si.unsealed.as_ref())
                .is_some_and(|u| u.at.elapsed() < sessions::UNSEALED)
        })
        .unwrap_or(false)
}

async fn password_form(State(app): State<Arc<App>>, signed: SignedIn) -> Response {
    if !has_unsealed(&app, &signed.session) {
        return see_other("/account");
    }
    password_page(&signed, StatusCode::OK, None)
}

fn password_page(signed: &SignedIn, status: StatusCode, error: Option<String>) -> Response {
    let provider_name = match signed.provider.preset {
        mailgate_config::Preset::Gmail => "Google",
        mailgate_config::Preset::Office365 | mailgate_config::Preset::Outlook => "Microsoft",
        _ => "mail provider",
    };
    render(
        status,
        &pages::Password {
            csrf: &signed.csrf,
            user: &signed.user,
            provider_name,
            error,
            min: MIN,
        },
    )
}

#[derive(Deserialize)]
pub(super) struct PasswordForm {
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

/// Checks a new password typed twice.
pub(super) fn new_password(first: &str, second: &str) -> Result<SecretString, String> {
    if first != second {
        return Err("The two passwords differ. Type the same password twice.".into());
    }
    if first.chars().count() < MIN {
        return Err(format!("The password must have at least {MIN} characters."));
    }
    Ok(SecretString::from(first.to_owned()))
}

async fn password_save(
    State(app): State<Arc<App>>,
    SignedInPost { signed, form }: SignedInPost<PasswordForm>,
) -> Result<Response, PortalError> {
    let (h, user) = (&signed.session, &signed.user);
    if !has_unsealed(&app, h) {
        return Err(PortalError::page(
            StatusCode::BAD_REQUEST,
            "Sign in again",
            "This sign-in is no longer waiting for a password. Start again from the first page.",
        ));
    }
    let password = match new_password(&form.password, &form.confirm) {
        Ok(p) => p,
        Err(e) => return Ok(password_page(&signed, StatusCode::BAD_REQUEST, Some(e))),
    };
    // Taken out, so that the same tokens are never sealed twice.
    let Some(Some(unsealed)) = app.sessions.with(h, |s| {
        s.signed_in.as_mut().and_then(|si| si.unsealed.take())
    }) else {
        return Err(PortalError::NotSignedIn);
    };
    let sealed = app
        .ctx
        .accounts
        .seal_held(unsealed.ticket.expose_secret(), user, &password)
        .await;
    match sealed {
        Ok(true) => {
            info!(user = %user, "portal: tokens stored, sealed with the password the owner chose");
            Ok(see_other("/settings?saved=1"))
        }
        Ok(false) => Err(PortalError::page(
            StatusCode::BAD_REQUEST,
            "Sign in again",
            "This sign-in is no longer waiting for a password. Start again from the first page.",
        )),
        Err(FlowError::Store(StoreError::Changed { .. })) => Err(PortalError::page(
            StatusCode::CONFLICT,
            "Changed meanwhile",
            "This account was changed meanwhile (from another browser or on the gateway); nothing was stored. Start again from the first page.",
        )),
        Err(e) => {
            warn!(user = %user, error = %e, "portal: the tokens could not be stored");
            // The cause (a store, a path) is for the administrator's log.
            Err(PortalError::page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Not stored",
                "The gateway could not store the access now; nothing was stored. Start again in a moment; if it keeps failing, tell your administrator (the error is in the gateway's log).",
            ))
        }
    }
}
