//! Keeping an account's tokens fresh: single flight per account (fleet-wide
//! with a lease on Redis), the refresh itself, newer tokens from the store
//! adopted, and every change persisted with a compare-and-swap.

use std::time::Duration;

use mailgate_config::Provider;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};

use crate::accounts::changes::AccountEvent;
use crate::accounts::errors::{LoginError, Unavailable, Unusable};
use crate::accounts::fleet::Lease;
use crate::accounts::oauth::OAuthError;
use crate::accounts::service::Accounts;
use crate::accounts::state::AccountState;
use crate::accounts::store::{Access, Audience, Expect, StoreError, TokenFile, now};

/// How waiting for the refresh lease ended.
pub(super) enum Leased {
    /// Another instance's new tokens are fresh.
    Fresh(SecretString),
    /// The lease is ours: refresh.
    Held(Lease),
}

/// The cached access token for `audience` when it lives at least
/// `min_life` seconds more and is not the one the upstream `rejected`
/// (which is dropped).
pub(super) fn usable_token(
    st: &mut AccountState,
    rejected: Option<&SecretString>,
    min_life: u64,
    audience: Audience,
) -> Result<Option<SecretString>, LoginError> {
    let Some(tokens) = st.tokens.as_mut() else {
        return Err(LoginError::NeedsAuthorization {
            why: Unusable::Marked,
            file: st.disk.clone().map(Box::new),
        });
    };
    if let (Some(bad), Some(cur)) = (rejected, tokens.access(audience))
        && bool::from(
            bad.expose_secret()
                .as_bytes()
                .ct_eq(cur.token.expose_secret().as_bytes()),
        )
    {
        debug!("dropping the access token the upstream rejected");
        tokens.access.remove(&audience);
    }
    Ok(tokens
        .access(audience)
        .filter(|a| a.expires_at >= now().saturating_add(min_life))
        .map(|a| a.token.clone()))
}

impl Accounts {
    /// Returns an access token for `audience` living at least
    /// `min_token_life`, refreshing when needed. `rejected` is a token the
    /// upstream refused: it is never returned again.
    pub(super) async fn fresh_token(
        &self,
        user: &str,
        provider: &Provider,
        st: &mut AccountState,
        rejected: Option<&SecretString>,
        audience: Audience,
    ) -> Result<SecretString, LoginError> {
        let min_life = provider.min_token_life.as_secs();
        if let Some(t) = usable_token(st, rejected, min_life, audience)? {
            return Ok(t);
        }
        // A refresh is due: one per account in the whole fleet, whatever
        // the audience.
        let lease = match self.lease(user, st, rejected, min_life, audience).await? {
            Leased::Fresh(t) => return Ok(t),
            Leased::Held(l) => l,
        };
        let out = self
            .refresh_now(user, provider, st, min_life, audience)
            .await;
        lease.release().await;
        out
    }

    /// Waits for `user`'s refresh lease; meanwhile, and once it is held,
    /// the tokens another instance wrote may already be fresh.
    pub(super) async fn lease(
        &self,
        user: &str,
        st: &mut AccountState,
        rejected: Option<&SecretString>,
        min_life: u64,
        audience: Audience,
    ) -> Result<Leased, LoginError> {
        let ttl = Duration::from_secs(5).max(self.config().gateway.upstream_timeout * 2);
        let deadline = tokio::time::Instant::now() + ttl * 2;
        loop {
            let held = self.fleet.try_lease(user, ttl).await.map_err(|e| {
                warn!(error = %e, "cannot take the refresh lease");
                LoginError::Unavailable(Unavailable::Store)
            })?;
            if self.adopt_newer(user, st).await
                && let Some(t) = usable_token(st, rejected, min_life, audience)?
            {
                if let Some(l) = held {
                    l.release().await;
                }
                debug!("another instance refreshed the tokens; using them");
                return Ok(Leased::Fresh(t));
            }
            if let Some(l) = held {
                return Ok(Leased::Held(l));
            }
            if tokio::time::Instant::now() >= deadline {
                warn!("another instance holds the refresh lease and wrote no new tokens in time");
                return Err(LoginError::Unavailable(Unavailable::Store));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes the store's file when it is newer than the cache's and opens
    /// with the cached key (the same password: another instance refreshed
    /// and re-sealed it). Whether the cache changed.
    pub(super) async fn adopt_newer(&self, user: &str, st: &mut AccountState) -> bool {
        let Ok(Some(file)) = self.store.load_fresh(user).await else {
            return false;
        };
        if st.disk.as_ref() == Some(&file) {
            return false;
        }
        self.adopt(user, st, file)
    }

    /// Opens `file` with the cached key, when it was sealed under it.
    pub(super) fn adopt(&self, user: &str, st: &mut AccountState, file: TokenFile) -> bool {
        let Some(key) = st.key.as_ref() else {
            return false;
        };
        if *key.key.kdf() != file.kdf {
            return false;
        }
        match file.open(&key.key, &self.store.location(user)) {
            Ok(tokens) => {
                st.tokens = Some(tokens);
                st.disk = Some(file);
                st.unsaved = false;
                true
            }
            Err(_) => false,
        }
    }

    /// Refreshes with the cached refresh token for a token of `audience`
    /// (the lease is held).
    pub(super) async fn refresh_now(
        &self,
        user: &str,
        provider: &Provider,
        st: &mut AccountState,
        min_life: u64,
        audience: Audience,
    ) -> Result<SecretString, LoginError> {
        let Some(tokens) = st.tokens.as_mut() else {
            return Err(LoginError::NeedsAuthorization {
                why: Unusable::Marked,
                file: st.disk.clone().map(Box::new),
            });
        };
        let Some(rt) = tokens.refresh_token.clone() else {
            return Err(LoginError::NeedsAuthorization {
                why: Unusable::Marked,
                file: st.disk.clone().map(Box::new),
            });
        };
        debug!(provider = %provider.name, audience = audience.name(), "refreshing the access token");
        let result = self.oauth.refresh(provider, &rt, audience).await;
        match result {
            Ok(grant) => {
                let lifetime = grant
                    .expires_in
                    .unwrap_or(Duration::from_secs(3600))
                    .as_secs();
                if lifetime < min_life {
                    warn!(
                        lifetime_s = lifetime,
                        min_token_life_s = min_life,
                        "the provider grants tokens shorter than min_token_life"
                    );
                }
                let rotated = grant.refresh_token.is_some();
                tokens.access.insert(
                    audience,
                    Access {
                        token: grant.access_token.clone(),
                        expires_at: now().saturating_add(lifetime),
                    },
                );
                if let Some(new_rt) = &grant.refresh_token {
                    tokens.refresh_token = Some(new_rt.clone());
                }
                info!(
                    rotated,
                    lifetime_s = lifetime,
                    audience = audience.name(),
                    "access token refreshed"
                );
                self.metrics.refresh("ok");
                self.persist(user, provider, st, Persist::Refreshed(audience))
                    .await;
                Ok(grant.access_token)
            }
            // A Graph token refused: the sign-in did not allow sending
            // through Graph (or no longer does). The mail tokens are not
            // touched: the account still reads mail.
            Err(OAuthError::InvalidGrant(detail)) if audience == Audience::Graph => {
                self.metrics.refresh("invalid_grant");
                warn!(provider = %provider.name, %detail, "no Graph token: the sign-in does not allow sending through Graph");
                if !st.disk.as_ref().is_some_and(|d| d.graph_refused) {
                    self.persist(user, provider, st, Persist::GraphRefused(detail))
                        .await;
                }
                Err(LoginError::NeedsAuthorization {
                    why: Unusable::NoGraph,
                    file: st.disk.clone().map(Box::new),
                })
            }
            Err(e) => {
                let mark_dead = matches!(e, OAuthError::InvalidGrant(_));
                self.metrics.refresh(match e {
                    OAuthError::InvalidGrant(_) => "invalid_grant",
                    OAuthError::InvalidClient(_) => "invalid_client",
                    _ => "error",
                });
                match &e {
                    OAuthError::InvalidClient(_) => {
                        warn!(error = %e, provider = %provider.name, "token refresh failed: invalid_client")
                    }
                    _ => warn!(error = %e, provider = %provider.name, "token refresh failed"),
                }
                self.persist(
                    user,
                    provider,
                    st,
                    Persist::Failed {
                        error: e.to_string(),
                        dead: mark_dead,
                    },
                )
                .await;
                if mark_dead {
                    Err(LoginError::NeedsAuthorization {
                        why: Unusable::Expired,
                        file: st.disk.clone().map(Box::new),
                    })
                } else if matches!(e, OAuthError::InvalidClient(_)) {
                    Err(LoginError::Unavailable(Unavailable::ClientRejected))
                } else if let OAuthError::Proxy(_) = e {
                    Err(LoginError::Unavailable(Unavailable::Proxy))
                } else {
                    Err(LoginError::Unavailable(Unavailable::TokenEndpoint(
                        provider.name.clone(),
                    )))
                }
            }
        }
    }

    /// Writes the account's file (with what `outcome` says): re-sealed tokens after a refresh, or the
    /// error metadata after a failed one, as a compare-and-swap against the
    /// file the cache came from. A file replaced or removed behind the
    /// gateway is left alone and the cache is dropped; a failure to write is
    /// logged, and the in-memory tokens keep serving logins (and are written
    /// at the next one).
    pub(super) async fn persist(
        &self,
        user: &str,
        provider: &Provider,
        st: &mut AccountState,
        outcome: Persist,
    ) {
        let (Some(key), Some(tokens)) = (st.key.as_ref(), st.tokens.as_ref()) else {
            return;
        };
        let sealed = match &st.disk {
            Some(disk) => {
                let mut f = disk.clone();
                f.reseal(&key.key, tokens).map(|()| f)
            }
            None => TokenFile::seal(user, &provider.name, &key.key, tokens),
        };
        let mut file = match sealed {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "cannot seal the tokens; they stay in memory");
                st.unsaved = true;
                return;
            }
        };
        match outcome {
            Persist::Refreshed(audience) => {
                file.last_refresh = Some(now());
                file.last_error = None;
                file.needs_authorization = false;
                if audience == Audience::Graph {
                    file.graph_refused = false;
                }
            }
            Persist::Failed { error, dead } => {
                file.last_error = Some(error);
                file.needs_authorization |= dead;
            }
            Persist::GraphRefused(detail) => {
                file.last_error = Some(format!(
                    "no Microsoft Graph token (the sign-in does not allow sending through Graph; authorise again): {detail}"
                ));
                file.graph_refused = true;
            }
        }
        let expect = match &st.disk {
            Some(d) => Expect::Same(d),
            None => Expect::Absent,
        };
        let user = user.to_owned();
        let event = match &file.last_error {
            // Mail flows, but sending through Graph waits for a sign-in:
            // one reason, whatever refresh wrote the file.
            _ if file.graph_refused && !file.needs_authorization => AccountEvent::NeedsSignIn {
                user,
                reason: GRAPH_NOT_ALLOWED.to_owned(),
            },
            None => AccountEvent::Refreshed { user },
            Some(reason) if file.needs_authorization => AccountEvent::NeedsSignIn {
                user,
                reason: reason.clone(),
            },
            Some(reason) => AccountEvent::RefreshFailed {
                user,
                reason: reason.clone(),
            },
        };
        match self.changes.save(&file, expect, Some(event)).await {
            Ok(written) => {
                st.disk = Some(written);
                st.unsaved = false;
            }
            Err(e @ StoreError::Changed { .. }) => {
                warn!(error = %e, "not writing over a token file that changed behind the gateway");
                *st = AccountState::default();
            }
            Err(e) => {
                warn!(error = %e, "cannot write the token file; the tokens stay in memory");
                st.unsaved = true;
            }
        }
    }
}

/// Why an account whose sign-in does not allow sending through Graph
/// needs a new one.
pub const GRAPH_NOT_ALLOWED: &str =
    "the sign-in does not allow sending through Microsoft Graph (Mail.Send)";

/// What a write of an account's file records.
#[derive(Debug)]
pub(super) enum Persist {
    /// A token of this audience was refreshed (the error is cleared).
    Refreshed(Audience),
    /// The refresh failed; `dead` when the refresh token is.
    Failed { error: String, dead: bool },
    /// The token endpoint refused a Graph token (its detail).
    GraphRefused(String),
}
