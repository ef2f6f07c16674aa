//! The first page (the address form, also where a redirect URI of `/`
//! lands), the stylesheet, the help page, and every other path (a
//! provider's redirect, or "not found").

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::app::{App, csrf_of, one_line};
use super::error::PortalError;
use super::extract::CurrentSession;
use super::pages::{self, index_page};
use super::{sessions, signin};

/// The routes of this file.
pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(index))
        .route("/style.css", get(stylesheet))
        .route("/help", get(|| async { pages::help() }))
        .fallback(fallback)
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../assets/portal.css"),
    )
        .into_response()
}

async fn index(
    State(app): State<Arc<App>>,
    CurrentSession(session): CurrentSession,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, PortalError> {
    let redirect = ["state", "code", "error"]
        .iter()
        .any(|k| q.contains_key(*k));
    if redirect && app.redirect_path("/") {
        return signin::callback(&app, &headers, q).await;
    }
    // A link from a mail client's in-band message fills the form in; the
    // person still sends it. A visit makes no session: the form's token is
    // a cookie of its own until a sign-in starts.
    let address = one_line(q.get("address").map_or("", |a| a.trim()), 320);
    if let Some(h) = session {
        return Ok(index_page(
            &csrf_of(&app, &h),
            None,
            StatusCode::OK,
            &address,
            None,
        ));
    }
    let token = sessions::random_token();
    let cookie = app.sessions.set_form_cookie(&token);
    Ok(index_page(
        &token,
        Some(cookie),
        StatusCode::OK,
        &address,
        None,
    ))
}

async fn fallback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, PortalError> {
    if app.redirect_path(uri.path()) {
        return signin::callback(&app, &headers, q).await;
    }
    Err(PortalError::page(
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is no such page here.",
    ))
}
