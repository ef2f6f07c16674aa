//! The end of every sign-in, whichever way its grant came back (a
//! redirect's code, or an approved device code): the identity check, then
//! the password page or the account page.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use mailgate_config::Provider;
use secrecy::SecretString;
use tracing::{info, warn};

use super::app::{App, csrf_of, see_other, with_cookie};
use super::error::PortalError;
use super::pages::{self, render};
use super::sessions::{self, Handle, Moment, Unsealed};
use crate::accounts::identity::{self, IdentityError};

/// A sign-in's grant, back from the provider (a redirect's code, or an
/// approved device code): checks that it is the account's identity, then
/// either asks for the password that will seal it or, when the account's
/// stored tokens are still good and nobody asked to authorise again, goes
/// to the account page.
pub(super) async fn finish(
    app: &App,
    h: &Handle,
    user: &str,
    provider: Arc<Provider>,
    grant: crate::accounts::oauth::Grant,
    nonce: Option<&SecretString>,
    again: bool,
) -> Result<Response, PortalError> {
    let user = user.to_owned();
    let csrf = csrf_of(app, h);
    let (replaces, usable) = match app.ctx.accounts.record(&user).await {
        Ok(Some(f)) => {
            let usable = !f.needs_authorization;
            (Some(f), usable)
        }
        Ok(None) => (None, false),
        Err(e) => {
            app.ctx.metrics.portal_sign_in("failed");
            warn!(user = %user, error = %e, "portal: cannot read the account's tokens");
            return Err(PortalError::page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Account unavailable",
                "The gateway cannot read this account's stored access now. Tell your administrator (the error is in the gateway's log).",
            ));
        }
    };
    let upstream_user = app.ctx.accounts.upstream_user_of(&user);
    let checked = identity::confirm(
        &provider,
        grant,
        identity::Expected {
            user: &user,
            upstream_user: &upstream_user,
            nonce,
            tenant: replaces.as_ref().and_then(|f| f.tenant.as_deref()),
        },
        &app.prover(),
    )
    .await;
    let confirmed = match checked {
        Ok(c) => c,
        Err(IdentityError::Mismatch {
            signed_in,
            expected,
        }) => {
            app.ctx.metrics.portal_sign_in("wrong_identity");
            info!(user = %user, signed_in = %signed_in, "portal: the sign-in was for another identity; nothing stored");
            return Ok(render(
                StatusCode::FORBIDDEN,
                &pages::WrongIdentity {
                    csrf: &csrf,
                    signed_in: &signed_in,
                    expected: &expected,
                },
            ));
        }
        Err(e) => {
            app.ctx.metrics.portal_sign_in("wrong_identity");
            warn!(user = %user, error = %e, "portal: the sign-in's identity is not the account's; nothing stored");
            return Err(PortalError::page(
                StatusCode::FORBIDDEN,
                "Sign-in not accepted",
                e.to_string(),
            ));
        }
    };
    if again {
        let same = app
            .sessions
            .with(h, |s| {
                s.signed_in.as_ref().is_some_and(|si| si.user == user)
            })
            .unwrap_or(false);
        if !same {
            app.ctx.metrics.portal_sign_in("failed");
            return Err(PortalError::NotSignedIn);
        }
    }
    let wants_password = again || !usable;
    // The confirmed tokens wait with the accounts (sealed in the fleet's
    // shared state); this session holds only their ticket.
    let ticket = if wants_password {
        match app.ctx.accounts.hold(&confirmed, replaces.as_ref()).await {
            Ok(t) => Some(SecretString::from(t)),
            Err(e) => {
                app.ctx.metrics.portal_sign_in("failed");
                warn!(user = %user, error = %e, "portal: the sign-in cannot wait for its password");
                return Err(PortalError::page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again",
                    "The gateway cannot keep this sign-in now. Try again in a moment.",
                ));
            }
        }
    } else {
        None
    };
    let Some(h) = app.sessions.renew(h) else {
        return Err(PortalError::NotSignedIn);
    };
    app.sessions.with(&h, |s| {
        s.signed_in = Some(sessions::SignedIn {
            user: user.clone(),
            provider: provider.name.clone(),
            unsealed: ticket.map(|ticket| Unsealed {
                ticket,
                at: Moment::now(),
            }),
        })
    });
    app.ctx.metrics.portal_sign_in("ok");
    info!(user = %user, identity = %confirmed.identity(), "portal: signed in as the account's identity");
    Ok(with_cookie(
        app,
        &h,
        see_other(if wants_password {
            "/password"
        } else {
            "/account"
        }),
    ))
}

/// The page of a sign-in the token endpoint refused: what it said, and
/// what to do about it.
pub(super) fn sign_in_failed(e: &crate::accounts::oauth::OAuthError) -> PortalError {
    use crate::accounts::oauth::OAuthError as E;
    let (code, detail) = match e {
        E::InvalidGrant(d) => ("invalid_grant", d.as_str()),
        E::Declined(d) => ("access_denied", d.as_str()),
        E::Expired => ("expired_token", ""),
        E::Other { code, description } => (code.as_str(), description.as_str()),
        _ => ("", ""),
    };
    PortalError::advice(
        StatusCode::BAD_GATEWAY,
        "Sign-in failed",
        e.to_string(),
        pages::provider_advice(code, detail),
    )
}
