//! Talking to token endpoints with the `oauth2` crate. One HTTP client for
//! the process, with redirects disabled (a token endpoint that redirects is
//! misconfigured, and following it could hand a refresh token elsewhere).

use std::time::Duration;

use mailgate_config::Provider;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, ClientId, ClientSecret, RefreshToken, RequestTokenError, Scope, TokenResponse,
    TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};

/// What a token endpoint granted.
#[derive(Debug)]
pub struct Grant {
    pub access_token: SecretString,
    /// A new refresh token, when the provider rotates them (Microsoft does).
    pub refresh_token: Option<SecretString>,
    pub expires_in: Option<Duration>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// `invalid_grant`: the refresh token is dead (revoked, expired, password
    /// changed). The user must authorise again.
    #[error("the provider rejected the refresh token (invalid_grant{})", detail(.0))]
    InvalidGrant(String),
    /// `invalid_client`: the client ID or secret is wrong or expired.
    #[error("the provider rejected mailgate's client credentials (invalid_client{}); check client_id and client_secret of the provider", detail(.0))]
    InvalidClient(String),
    /// Any other OAuth error code.
    #[error("the token endpoint answered {code}{}", detail(.description))]
    Other { code: String, description: String },
    /// The endpoint could not be reached or timed out.
    #[error("the token endpoint cannot be reached: {0}")]
    Unreachable(String),
    /// The endpoint answered something that is not an OAuth response.
    #[error("the token endpoint gave an invalid answer: {0}")]
    BadResponse(String),
}

fn detail(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl OAuthError {
    /// Whether the failure is temporary (worth trying again later).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            OAuthError::Unreachable(_) | OAuthError::BadResponse(_)
        )
    }
}

/// The process's OAuth client.
#[derive(Debug, Clone)]
pub struct OAuth {
    http: reqwest::Client,
}

impl OAuth {
    pub fn new(timeout: Duration) -> Result<OAuth, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("mailgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(OAuth { http })
    }

    /// The refresh-token grant (RFC 6749 §6).
    pub async fn refresh(
        &self,
        provider: &Provider,
        refresh_token: &SecretString,
    ) -> Result<Grant, OAuthError> {
        let mut client = BasicClient::new(ClientId::new(provider.client_id.clone()))
            .set_token_uri(TokenUrl::from_url(provider.token_url.clone()))
            .set_auth_type(AuthType::RequestBody);
        if let Some(secret) = &provider.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        let rt = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let response = client
            .exchange_refresh_token(&rt)
            .add_scopes(provider.scopes.iter().cloned().map(Scope::new))
            .request_async(&self.http)
            .await
            .map_err(convert)?;
        Ok(Grant {
            access_token: SecretString::from(response.access_token().secret().to_owned()),
            refresh_token: response
                .refresh_token()
                .map(|r| SecretString::from(r.secret().to_owned())),
            expires_in: response.expires_in(),
        })
    }
}

fn convert<RE: std::error::Error + 'static>(
    err: RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
) -> OAuthError {
    match err {
        RequestTokenError::ServerResponse(r) => {
            let description = r.error_description().cloned().unwrap_or_default();
            match r.error() {
                BasicErrorResponseType::InvalidGrant => OAuthError::InvalidGrant(description),
                BasicErrorResponseType::InvalidClient => OAuthError::InvalidClient(description),
                other => OAuthError::Other {
                    code: other.as_ref().to_owned(),
                    description,
                },
            }
        }
        RequestTokenError::Request(e) => OAuthError::Unreachable(chain(&e)),
        // The body is not logged: a malformed success could still hold a token.
        RequestTokenError::Parse(e, _body) => {
            OAuthError::BadResponse(format!("not an OAuth JSON response (at {})", e.path()))
        }
        RequestTokenError::Other(s) => OAuthError::BadResponse(s),
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
