//! What a portal handler answers when it cannot go on: a page that says
//! why, or the way back to the first page. Handlers return
//! `Result<Response, PortalError>` and use `?`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::info;

use super::pages::{advice, message};

#[derive(Debug)]
pub(super) enum PortalError {
    /// No live session, or one that has not signed in (or whose provider
    /// is no longer configured): back to the first page.
    NotSignedIn,
    /// A form without this session's CSRF token.
    Csrf,
    /// A page that says what happened.
    Page {
        status: StatusCode,
        title: &'static str,
        text: String,
    },
    /// A page that says what happened and what the administrator must do.
    Advice {
        status: StatusCode,
        title: &'static str,
        text: String,
        advice: String,
    },
}

impl PortalError {
    pub(super) fn page(status: StatusCode, title: &'static str, text: impl Into<String>) -> Self {
        PortalError::Page {
            status,
            title,
            text: text.into(),
        }
    }
}

impl PortalError {
    pub(super) fn advice(
        status: StatusCode,
        title: &'static str,
        text: impl Into<String>,
        advice: impl Into<String>,
    ) -> Self {
        PortalError::Advice {
            status,
            title,
            text: text.into(),
            advice: advice.into(),
        }
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        match self {
            PortalError::NotSignedIn => super::pages::see_other("/"),
            PortalError::Csrf => {
                info!("portal: a form without this session's CSRF token was refused");
                message(
                    StatusCode::FORBIDDEN,
                    "Form expired",
                    "This form has expired or was not sent from this site. Go back, reload the page and try again.",
                )
            }
            PortalError::Page {
                status,
                title,
                text,
            } => message(status, title, text),
            PortalError::Advice {
                status,
                title,
                text,
                advice: what,
            } => advice(status, title, text, what),
        }
    }
}
