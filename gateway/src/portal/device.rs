//! A device sign-in (RFC 8628) from the portal: the page shows the code to
//! enter at the provider and asks the provider, no more often than it
//! allows, whether the person did.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use mailgate_config::Provider;
use tracing::{info, warn};

use super::app::{App, see_other, with_cookie};
use super::error::PortalError;
use super::extract::Session;
use super::finish::{finish, sign_in_failed};
use super::pages::{self, render};
use super::sessions::{Handle, Moment, PendingDevice};

/// The routes of this file.
pub(super) fn routes() -> Router<Arc<App>> {
    Router::new().route("/device", get(device))
}

/// Starts a device sign-in for `user` and sends the browser to its page.
pub(super) async fn start_device(
    app: &App,
    h: &Handle,
    user: String,
    provider: Arc<Provider>,
    again: bool,
) -> Result<Response, PortalError> {
    let details = match app.ctx.accounts.start_device(&provider).await {
        Ok(d) => d,
        Err(e) => {
            warn!(user = %user, error = %e, "portal: cannot start the device sign-in");
            return Err(PortalError::advice(
                StatusCode::BAD_GATEWAY,
                "Sign-in unavailable",
                format!("The provider did not start a sign-in for {user}."),
                "Try again in a moment; if it keeps failing, tell your administrator (the error is in the gateway's log).",
            ));
        }
    };
    let interval = details.interval().max(Duration::from_secs(1));
    let now = Moment::now();
    let stored = app.sessions.with(h, |s| {
        s.pending = None;
        s.device = Some(PendingDevice {
            details,
            user: user.clone(),
            provider: provider.name.clone(),
            again,
            started: now,
            next_poll: now.after(interval),
            interval: interval.as_secs(),
        })
    });
    if stored.is_none() {
        return Err(PortalError::NotSignedIn);
    }
    info!(user = %user, again, "portal: device sign-in started");
    Ok(with_cookie(app, h, see_other("/device")))
}

/// The device sign-in's page: the code to enter at the provider. Each
/// view asks the provider once (no more often than it allows) whether the
/// person entered it; the page reloads itself until then.
async fn device(State(app): State<Arc<App>>, Session(h): Session) -> Result<Response, PortalError> {
    let now = Moment::now();
    let due = app
        .sessions
        .with(&h, |s| {
            s.device.as_ref().map(|d| {
                (
                    d.next_poll <= now,
                    d.started.elapsed() >= d.details.expires_in(),
                    d.user.clone(),
                    d.provider.clone(),
                    d.again,
                )
            })
        })
        .flatten();
    let Some((due, expired, user, provider, again)) = due else {
        return Err(PortalError::NotSignedIn);
    };
    let provider = app.provider(&provider)?;
    if expired {
        app.sessions.with(&h, |s| s.device = None);
        app.ctx.metrics.portal_sign_in("failed");
        return Err(PortalError::page(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "The code expired before it was entered. Start again from the first page.",
        ));
    }
    if due {
        let Some(details) = app
            .sessions
            .with(&h, |s| s.device.as_ref().map(|d| d.details.clone()))
            .flatten()
        else {
            return Err(PortalError::NotSignedIn);
        };
        let polled = app.ctx.accounts.poll_device_once(&provider, &details).await;
        let slow_down = matches!(polled, Ok(crate::accounts::oauth::Poll::SlowDown));
        match polled {
            Ok(crate::accounts::oauth::Poll::Granted(grant)) => {
                app.sessions.with(&h, |s| s.device = None);
                return finish(&app, &h, &user, provider, grant, None, again).await;
            }
            Ok(_) => {
                app.sessions.with(&h, |s| {
                    if let Some(d) = s.device.as_mut() {
                        if slow_down {
                            d.interval += 5;
                        }
                        d.next_poll = Moment::now().after(Duration::from_secs(d.interval));
                    }
                });
            }
            Err(e) => {
                app.sessions.with(&h, |s| s.device = None);
                app.ctx.metrics.portal_sign_in("provider_error");
                warn!(user = %user, error = %e, "portal: the device sign-in failed");
                return Err(sign_in_failed(&e));
            }
        }
    }
    let Some((uri, code, wait)) = app
        .sessions
        .with(&h, |s| {
            s.device.as_ref().map(|d| {
                (
                    d.details.verification_uri().to_string(),
                    d.details.user_code().secret().clone(),
                    d.next_poll.until(),
                )
            })
        })
        .flatten()
    else {
        return Err(PortalError::NotSignedIn);
    };
    Ok(render(
        StatusCode::OK,
        &pages::Device {
            user: &user,
            verification_uri: &uri,
            code: &code,
            refresh: wait.as_secs().max(1),
        },
    ))
}
