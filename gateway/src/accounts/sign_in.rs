//! The portal's sign-ins, as account service methods: the authorisation
//! request (PKCE, `state`, `nonce`), the code exchange, and a device
//! sign-in's start and polls. What comes back is a grant, which only the
//! identity check can turn into something that may be sealed.

use mailgate_config::Provider;
use secrecy::SecretString;

use super::oauth::{AuthorizationRequest, DeviceAuthorization, Grant, OAuthError, Poll};
use super::service::Accounts;

impl Accounts {
    /// A sign-in request for `login_hint` at `provider`, redirected to
    /// `redirect_uri`.
    pub fn authorization_request(
        &self,
        provider: &Provider,
        redirect_uri: &url::Url,
        login_hint: &str,
    ) -> Result<AuthorizationRequest, OAuthError> {
        self.oauth()
            .authorization_request(provider, redirect_uri, login_hint)
    }

    /// The grant of a redirect's `code` for `request`.
    pub async fn exchange_code(
        &self,
        provider: &Provider,
        request: &AuthorizationRequest,
        code: &SecretString,
    ) -> Result<Grant, OAuthError> {
        self.oauth().exchange_code(provider, request, code).await
    }

    /// Starts a device sign-in at `provider`.
    pub async fn start_device(
        &self,
        provider: &Provider,
    ) -> Result<DeviceAuthorization, OAuthError> {
        self.oauth().start_device(provider).await
    }

    /// Asks `provider` once whether the device sign-in was approved.
    pub async fn poll_device_once(
        &self,
        provider: &Provider,
        details: &DeviceAuthorization,
    ) -> Result<Poll, OAuthError> {
        self.oauth().poll_device_once(provider, details).await
    }
}
