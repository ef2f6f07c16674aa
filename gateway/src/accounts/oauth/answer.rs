//! What a token endpoint answers, made into a [`Grant`] or an
//! [`OAuthError`] that says what to do.

use std::time::Duration;

use oauth2::basic::{BasicErrorResponseType, BasicTokenType};
use oauth2::{
    ExtraTokenFields, RequestTokenError, StandardErrorResponse, StandardTokenResponse,
    TokenResponse,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// What a token endpoint granted.
#[derive(Debug)]
pub struct Grant {
    pub access_token: SecretString,
    /// A refresh token: new, or rotated (Microsoft rotates on every refresh).
    pub refresh_token: Option<SecretString>,
    pub expires_in: Option<Duration>,
    /// The OpenID Connect ID token, when the provider sent one (it names
    /// who signed in; see [`crate::accounts::identity`]).
    pub id_token: Option<SecretString>,
}

/// The token response's field beyond OAuth 2.0: OpenID Connect's
/// `id_token`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

pub(super) type TokenResponseWithId = StandardTokenResponse<IdTokenField, BasicTokenType>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// `invalid_grant`: the refresh token or code is dead (revoked, expired,
    /// password changed, wrong PKCE verifier). The user must authorise again.
    #[error("the provider rejected the grant (invalid_grant{})", detail(.0))]
    InvalidGrant(String),
    /// `invalid_client`: the client ID or secret is wrong or expired.
    #[error("the provider rejected mailgate's client credentials (invalid_client{}); check the provider's client_id and its client secret or certificate", detail(.0))]
    InvalidClient(String),
    /// The user declined (`access_denied`).
    #[error("the authorisation was declined (access_denied{})", detail(.0))]
    Declined(String),
    /// The device code expired before the user approved.
    #[error("the device code expired before the sign-in was completed; run the login again")]
    Expired,
    /// Any other OAuth error code.
    #[error("the provider answered {code}{}", detail(.description))]
    Other { code: String, description: String },
    /// `unauthorized_client` to a service account's assertion: the
    /// account has no domain-wide delegation for the scopes.
    #[error("the service account {email} may not act for the mailbox (unauthorized_client{}): in the Google Admin console (admin.google.com → Security → Access and data control → API controls → Manage domain-wide delegation) add client ID {client_id} with the scopes {scopes}", detail(.description))]
    NotDelegated {
        email: String,
        client_id: String,
        scopes: String,
        description: String,
    },
    /// A service account's key cannot sign.
    #[error("{0}")]
    BadKey(String),
    /// The endpoint could not be reached or timed out.
    #[error("the token endpoint cannot be reached: {0}")]
    Unreachable(String),
    /// The outbound proxy refused the request, or could not be reached.
    #[error("{0}")]
    Proxy(String),
    /// The endpoint answered something that is not an OAuth response.
    #[error("the token endpoint gave an invalid answer: {0}")]
    BadResponse(String),
    /// The provider lacks an endpoint this flow needs.
    #[error("provider {provider} has no {endpoint} configured")]
    NotConfigured {
        provider: String,
        endpoint: &'static str,
    },
}

pub(super) fn detail(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// The most of a token endpoint's answer that is read. Real answers (an
/// access token, a refresh token and an ID token) are a few KiB; a
/// larger one is refused as not an OAuth answer.
pub const MAX_ANSWER: usize = 256 * 1024;

/// Why an HTTP exchange with a token endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{}", chain(.0))]
    Request(#[from] reqwest::Error),
    #[error("the answer is larger than {} KiB", MAX_ANSWER / 1024)]
    TooLarge,
    #[error("{0}")]
    Http(#[from] oauth2::http::Error),
}

impl From<HttpError> for OAuthError {
    fn from(e: HttpError) -> OAuthError {
        match e {
            HttpError::TooLarge => OAuthError::BadResponse(e.to_string()),
            e => OAuthError::Unreachable(e.to_string()),
        }
    }
}

/// A token endpoint's JSON answer: the grant, or its OAuth error. The
/// body is never logged: a malformed success could still hold a token.
pub(super) fn token_answer(status: reqwest::StatusCode, body: &[u8]) -> Result<Grant, OAuthError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: Option<String>,
        refresh_token: Option<String>,
        id_token: Option<String>,
        expires_in: Option<serde_json::Value>,
        error: Option<String>,
        error_description: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|_| {
        OAuthError::BadResponse(format!("HTTP {status}, not an OAuth JSON response"))
    })?;
    match (answer.access_token, answer.error) {
        (Some(token), None) if status.is_success() => Ok(Grant {
            access_token: SecretString::from(token),
            refresh_token: answer.refresh_token.map(SecretString::from),
            // A number, or (Microsoft's v1 endpoints) a string of one.
            expires_in: answer
                .expires_in
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
                .map(Duration::from_secs),
            id_token: answer.id_token.map(SecretString::from),
        }),
        (_, Some(code)) => Err(convert_code(
            &code,
            answer.error_description.unwrap_or_default(),
        )),
        _ => Err(OAuthError::BadResponse(format!(
            "HTTP {status} without an access token"
        ))),
    }
}

pub(super) fn grant(response: &TokenResponseWithId) -> Grant {
    Grant {
        access_token: SecretString::from(response.access_token().secret().to_owned()),
        refresh_token: response
            .refresh_token()
            .map(|r| SecretString::from(r.secret().to_owned())),
        expires_in: response.expires_in(),
        id_token: response
            .extra_fields()
            .id_token
            .clone()
            .map(SecretString::from),
    }
}

pub(super) fn convert_code(code: &str, description: String) -> OAuthError {
    match code {
        "invalid_grant" => OAuthError::InvalidGrant(description),
        "invalid_client" => OAuthError::InvalidClient(description),
        "access_denied" | "authorization_declined" => OAuthError::Declined(description),
        "expired_token" => OAuthError::Expired,
        other => OAuthError::Other {
            code: other.to_owned(),
            description,
        },
    }
}

pub(super) fn convert_transport<T>(err: RequestTokenError<HttpError, T>) -> OAuthError
where
    T: oauth2::ErrorResponse,
{
    match err {
        RequestTokenError::Request(e) => e.into(),
        // The body is not logged: a malformed success could still hold a token.
        RequestTokenError::Parse(e, _body) => {
            OAuthError::BadResponse(format!("not an OAuth JSON response (at {})", e.path()))
        }
        RequestTokenError::Other(s) => OAuthError::BadResponse(s),
        RequestTokenError::ServerResponse(_) => OAuthError::BadResponse("unexpected error".into()),
    }
}

pub(super) fn convert(
    err: RequestTokenError<HttpError, StandardErrorResponse<BasicErrorResponseType>>,
) -> OAuthError {
    match err {
        RequestTokenError::ServerResponse(r) => convert_code(
            r.error().as_ref(),
            r.error_description().cloned().unwrap_or_default(),
        ),
        other => convert_transport(other),
    }
}

/// An error with its sources, on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
