//! What handlers take from a request instead of looking it up themselves:
//! the browser's session ([`CurrentSession`], [`Session`]), the account it
//! signed in as ([`SignedIn`]), and a form that carries the session's CSRF
//! token ([`Posted`]).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Form, FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use mailgate_config::Provider;
use serde::Deserialize;

use super::app::App;
use super::error::PortalError;
use super::sessions::Handle;

/// The browser's live session, if it has one.
pub(super) struct CurrentSession(pub Option<Handle>);

impl FromRequestParts<Arc<App>> for CurrentSession {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Infallible> {
        Ok(CurrentSession(app.sessions.find(&parts.headers)))
    }
}

/// The browser's live session; without one, the first page.
pub(super) struct Session(pub Handle);

impl FromRequestParts<Arc<App>> for Session {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, PortalError> {
        app.sessions
            .find(&parts.headers)
            .map(Session)
            .ok_or(PortalError::NotSignedIn)
    }
}

/// The account the browser's session signed in as, with its provider as
/// configured now and the session's CSRF token; without one, the first
/// page.
pub(super) struct SignedIn {
    pub session: Handle,
    pub user: String,
    pub provider: Arc<Provider>,
    pub csrf: String,
}

impl SignedIn {
    /// The signed-in account of session `h`.
    pub(super) fn of(app: &App, h: &Handle) -> Result<SignedIn, PortalError> {
        let (user, provider, csrf) = app
            .sessions
            .with(h, |s| {
                s.signed_in
                    .as_ref()
                    .map(|si| (si.user.clone(), si.provider.clone(), s.csrf.clone()))
            })
            .flatten()
            .ok_or(PortalError::NotSignedIn)?;
        let provider = app.provider(&provider)?;
        Ok(SignedIn {
            session: h.clone(),
            user,
            provider,
            csrf,
        })
    }
}

impl FromRequestParts<Arc<App>> for SignedIn {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, PortalError> {
        let Session(h) = Session::from_request_parts(parts, app).await?;
        SignedIn::of(app, &h)
    }
}

/// A form post from a session whose CSRF token it carries: the session
/// and the form's other fields. Anything else is refused with a page.
pub(super) struct Posted<T> {
    pub session: Handle,
    pub form: T,
}

#[derive(Deserialize)]
pub(super) struct WithCsrf<T> {
    #[serde(default)]
    pub csrf: String,
    #[serde(flatten)]
    pub rest: T,
}

/// The session of a form post whose CSRF token is the session's (the
/// address form may come before any session: then `None`, and its token is
/// the form cookie's).
pub(super) fn form_session(
    app: &App,
    headers: &axum::http::HeaderMap,
    csrf: &str,
) -> Option<Handle> {
    let h = app.sessions.find(headers)?;
    app.sessions
        .with(&h, |s| s.csrf_ok(csrf))
        .unwrap_or(false)
        .then_some(h)
}

impl<T: serde::de::DeserializeOwned + Send> FromRequest<Arc<App>> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, app: &Arc<App>) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let Form(f) = Form::<WithCsrf<T>>::from_request(req, app)
            .await
            .map_err(IntoResponse::into_response)?;
        match form_session(app, &headers, &f.csrf) {
            Some(session) => Ok(Posted {
                session,
                form: f.rest,
            }),
            None => Err(PortalError::Csrf.into_response()),
        }
    }
}

/// A form post of a signed-in session: the CSRF token is checked first
/// (a forged form is refused as such), then the account.
pub(super) struct SignedInPost<T> {
    pub signed: SignedIn,
    pub form: T,
}

impl<T: serde::de::DeserializeOwned + Send> FromRequest<Arc<App>> for SignedInPost<T> {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, app: &Arc<App>) -> Result<Self, Response> {
        let Posted { session, form } = Posted::<T>::from_request(req, app).await?;
        let signed = SignedIn::of(app, &session).map_err(IntoResponse::into_response)?;
        Ok(SignedInPost { signed, form })
    }
}
