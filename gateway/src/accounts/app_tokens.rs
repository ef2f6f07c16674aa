//! App-only access: the provider's client-credentials token, or a
//! service account's token per mailbox, cached, renewed before
//! `min_token_life`, and shared by the fleet (sealed) with the Redis store.

use std::time::Duration;

use mailgate_config::{Flow, Provider};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};

use crate::accounts::errors::{LoginError, Unavailable};
use crate::accounts::fleet::Lease;
use crate::accounts::fleet::sealed::{self as shared, Sealer};
use crate::accounts::oauth::OAuthError;
use crate::accounts::service::Accounts;
use crate::accounts::store::{Audience, StoreError, now};

/// An app-only token as the fleet shares it (sealed, see [`app_sealer`]).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct AppToken {
    #[serde(with = "crate::accounts::store::serde_secret")]
    token: SecretString,
    expires_at: u64,
}

/// The sealer of a provider's shared app-only token (for `subject`, the
/// mailbox of a service account): keyed by its client secret, its client
/// certificate's key or its service account's private key, which every
/// instance has and Redis does not (`None` without any: nothing is shared).
pub(super) fn app_sealer(
    provider: &Provider,
    subject: Option<&str>,
    audience: Audience,
) -> Option<Sealer> {
    let secret = match (&provider.service_account, &provider.client_certificate) {
        (Some(sa), _) => &sa.private_key,
        (None, Some(cert)) => &cert.private_key,
        (None, None) => provider.client_secret.as_ref()?,
    };
    let mut material = Vec::new();
    for part in [
        provider.name.as_str(),
        provider.client_id.as_str(),
        provider.token_url.as_str(),
        subject.unwrap_or(""),
        audience.name(),
        secret.expose_secret(),
    ] {
        material.extend_from_slice(&(part.len() as u64).to_be_bytes());
        material.extend_from_slice(part.as_bytes());
    }
    let material = zeroize::Zeroizing::new(material);
    Some(Sealer::new("app-token", &material))
}

/// The mailbox a service account's token is for (`None`: the provider's
/// one client-credentials token serves every mailbox).
pub fn app_subject<'a>(provider: &Provider, upstream_user: &'a str) -> Option<&'a str> {
    (provider.flow == Flow::ServiceAccount).then_some(upstream_user)
}

impl Accounts {
    /// The provider's app-only token (client credentials grant), or a
    /// service account's token for the mailbox `subject` (JWT bearer
    /// grant), cached and renewed once it has less than `min_token_life`
    /// left; one request at a time per provider (per mailbox), in the whole
    /// fleet with the Redis store. `rejected` is never returned again.
    pub(super) async fn app_token(
        &self,
        provider: &Provider,
        subject: Option<&str>,
        rejected: Option<&SecretString>,
        audience: Audience,
    ) -> Result<SecretString, LoginError> {
        let slot = {
            let mut map = self.app_tokens.lock().unwrap_or_else(|e| e.into_inner());
            let key = format!(
                "{}\0{}\0{}",
                provider.name,
                subject.unwrap_or(""),
                audience.name()
            );
            map.entry(key).or_default().clone()
        };
        let mut cur = slot.lock().await;
        if let (Some(bad), Some((tok, _))) = (rejected, cur.as_ref())
            && bool::from(
                bad.expose_secret()
                    .as_bytes()
                    .ct_eq(tok.expose_secret().as_bytes()),
            )
        {
            *cur = None;
        }
        if let Some((tok, exp)) = cur.as_ref()
            && *exp >= now().saturating_add(provider.min_token_life.as_secs())
        {
            return Ok(tok.clone());
        }
        let min_life = provider.min_token_life.as_secs();
        let shared = app_sealer(provider, subject, audience).filter(|_| self.fleet.shared());
        let mut lease = None;
        if let Some(sealer) = &shared {
            // One token for the fleet: another instance's, else ours,
            // obtained under the fleet's lease.
            match self.shared_app_token(sealer, rejected, min_life).await {
                Ok((Some(t), _)) => {
                    debug!(provider = %provider.name, "app-only token from the shared store");
                    *cur = Some((t.token.clone(), t.expires_at));
                    return Ok(t.token);
                }
                Ok((None, held)) => lease = held,
                Err(e) => {
                    warn!(error = %e, "the shared store has no app-only token for us now; asking the provider")
                }
            }
        }
        let result = match subject {
            Some(mailbox) => self.oauth.jwt_bearer(provider, mailbox).await,
            None => self.oauth.client_credentials(provider, audience).await,
        };
        if let (Ok(grant), Some(sealer)) = (&result, &shared) {
            let life = grant.expires_in.unwrap_or(Duration::from_secs(3600));
            let shared_token = AppToken {
                token: grant.access_token.clone(),
                expires_at: now().saturating_add(life.as_secs()),
            };
            if let Err(e) = shared::put(&self.fleet, sealer, &shared_token, life, false).await {
                warn!(error = %e, "the app-only token could not be shared with the other instances");
            }
        }
        if let Some(l) = lease {
            l.release().await;
        }
        match result {
            Ok(grant) => {
                let life = grant
                    .expires_in
                    .unwrap_or(Duration::from_secs(3600))
                    .as_secs();
                info!(provider = %provider.name, mailbox = subject, lifetime_s = life, "app-only token obtained");
                self.metrics.refresh("ok");
                *cur = Some((grant.access_token.clone(), now().saturating_add(life)));
                Ok(grant.access_token)
            }
            Err(e) => {
                warn!(error = %e, provider = %provider.name, mailbox = subject, "{} grant failed", provider.flow);
                self.metrics.refresh(match e {
                    OAuthError::InvalidClient(_) => "invalid_client",
                    OAuthError::NotDelegated { .. } => "unauthorized_client",
                    _ => "error",
                });
                Err(LoginError::Unavailable(match e {
                    OAuthError::NotDelegated { .. } => {
                        Unavailable::NotDelegated(provider.name.clone())
                    }
                    OAuthError::Proxy(_) => Unavailable::Proxy,
                    _ => Unavailable::AppToken(provider.name.clone()),
                }))
            }
        }
    }

    /// The fleet's app-only token when it is usable (not `rejected`, and
    /// living at least `min_life`); else the fleet's lease to get a new one
    /// (`None` when another instance held it past a wait for its token).
    pub(super) async fn shared_app_token(
        &self,
        sealer: &Sealer,
        rejected: Option<&SecretString>,
        min_life: u64,
    ) -> Result<(Option<AppToken>, Option<Lease>), StoreError> {
        let usable = |t: &AppToken| {
            t.expires_at >= now().saturating_add(min_life)
                && !rejected.is_some_and(|r| {
                    bool::from(
                        r.expose_secret()
                            .as_bytes()
                            .ct_eq(t.token.expose_secret().as_bytes()),
                    )
                })
        };
        let ttl = Duration::from_secs(5).max(self.config().gateway.upstream_timeout * 2);
        let deadline = tokio::time::Instant::now() + ttl;
        loop {
            let token: Option<AppToken> = shared::get(&self.fleet, sealer, false).await?;
            if let Some(t) = token.filter(usable) {
                return Ok((Some(t), None));
            }
            if let Some(l) = self.fleet.try_lease(sealer.name(), ttl).await? {
                return Ok((None, Some(l)));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok((None, None));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
