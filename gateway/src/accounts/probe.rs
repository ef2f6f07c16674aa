//! Probes of a provider's token endpoint for `mailgate doctor`: they use
//! the same client (credentials, proxy, assertion) as every refresh, and
//! store nothing.

use mailgate_config::Provider;
use secrecy::SecretString;

use super::oauth::OAuthError;
use super::service::Accounts;
use super::store::Audience;

impl Accounts {
    /// Refreshes with `refresh_token`, one that cannot be valid: the answer
    /// must be `invalid_grant` (`Ok(None)`); a token is `Ok(Some(why that
    /// is odd))`; anything else (the client refused, the endpoint
    /// unreachable) is the error's text.
    pub async fn probe_refresh(
        &self,
        provider: &Provider,
        refresh_token: &SecretString,
    ) -> Result<Option<String>, String> {
        match self
            .oauth
            .refresh(provider, refresh_token, Audience::Mail)
            .await
        {
            Err(OAuthError::InvalidGrant(_)) => Ok(None),
            Ok(_) => Ok(Some(
                "the token endpoint accepted a made-up refresh token: is token_url the provider's?"
                    .into(),
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Gets an app-only token for `audience` (not cached).
    pub async fn probe_app_token(
        &self,
        provider: &Provider,
        audience: Audience,
    ) -> Result<(), String> {
        self.oauth
            .client_credentials(provider, audience)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
