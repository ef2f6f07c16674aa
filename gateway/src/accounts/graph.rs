//! The accounts' side of sending through Microsoft Graph: which accounts
//! send through it (`smtp = "graph"`, or `"auto"` once their tenant
//! refused SMTP AUTH), a Graph token next to the mail token (one refresh
//! token, the same single flight), and the wait Graph asked of an account
//! (`Retry-After`), which holds back its next messages.

use std::time::{Duration, Instant};

use mailgate_config::Sending;
use tracing::warn;

use super::app_tokens::app_subject;
use super::errors::LoginError;
use super::names::account_name;
use super::service::{Accounts, Authorized};
use super::store::Audience;

impl Accounts {
    /// Whether `login`'s SMTP sessions send through Graph.
    pub fn sends_by_graph(&self, login: &str) -> bool {
        // A delegate's session sends as its own account does.
        let login = super::shared::split(login).map_or(login, |(delegate, _)| delegate);
        let Some(provider) = self.provider_of(login) else {
            return false;
        };
        match provider.sending {
            Sending::Smtp => false,
            Sending::Graph => true,
            Sending::Auto => account_name(login).is_some_and(|u| {
                self.graph
                    .switched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&u)
            }),
        }
    }

    /// `smtp = "auto"`: `user`'s tenant refused SMTP AUTH (`detail`, the
    /// server's words); its SMTP sessions send through Graph from now on.
    /// Said once in the log.
    pub fn send_by_graph(&self, user: &str, detail: &str) {
        let fresh = self
            .graph
            .switched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.to_owned());
        if fresh {
            warn!(%detail, "the tenant refuses SMTP AUTH: this account sends through Microsoft Graph from now on");
        }
    }

    /// A token of `audience` for the account `auth` logged in (its key is
    /// cached by that login).
    pub async fn token_for(
        &self,
        auth: &Authorized,
        audience: Audience,
    ) -> Result<Authorized, LoginError> {
        let provider = &auth.provider;
        let access_token = if provider.is_app_only() {
            let subject = app_subject(provider, &auth.upstream_user);
            self.app_token(provider, subject, None, audience).await?
        } else {
            let state = self.state(&auth.user);
            let mut st = state.lock().await;
            self.fresh_token(&auth.user, provider, &mut st, None, audience)
                .await?
        };
        Ok(Authorized {
            access_token,
            audience,
            ..auth.clone()
        })
    }

    /// A token of `audience` for `user` without its password: an app-only
    /// account's, or one whose key is in memory (someone logged in with it
    /// since the gateway started); for the gateway's own mail (`[notify]
    /// mail_from`).
    pub async fn token_of(&self, user: &str, audience: Audience) -> Result<Authorized, LoginError> {
        let user = user.trim().to_lowercase();
        let provider = self.provider_of(&user).ok_or_else(|| {
            LoginError::Unavailable(super::errors::Unavailable::NoProvider(user.clone()))
        })?;
        let auth = Authorized {
            upstream_user: self.upstream_user_of(&user),
            user,
            provider,
            access_token: secrecy::SecretString::from(String::new()),
            audience,
            shared: None,
        };
        self.token_for(&auth, audience).await
    }

    /// The HTTP client for `provider`'s Graph requests (through its proxy
    /// when it has one; no redirects).
    pub fn http_for(
        &self,
        provider: &mailgate_config::Provider,
    ) -> Result<reqwest::Client, LoginError> {
        self.oauth
            .http(provider)
            .map_err(|_| LoginError::Unavailable(super::errors::Unavailable::Proxy))
    }

    /// How much longer Graph asked `user` to wait, if it did.
    pub fn graph_hold(&self, user: &str) -> Option<Duration> {
        let mut holds = self.graph.holds.lock().unwrap_or_else(|e| e.into_inner());
        let until = *holds.get(user)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            holds.remove(user);
            return None;
        }
        Some(left)
    }

    /// Graph asked `user` to wait `wait` (`Retry-After`).
    pub fn hold_graph(&self, user: &str, wait: Duration) {
        {
            let mut holds = self.graph.holds.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: a map of waits that pass.
            holds.retain(|_, t| *t > Instant::now());
            holds.insert(
                user.to_owned(),
                Instant::now() + wait.min(Duration::from_secs(3600)),
            );
        }
        self.changes
            .tell(crate::accounts::changes::AccountEvent::Throttled {
                user: user.to_owned(),
                reason: format!(
                    "Microsoft Graph asked this mailbox to wait {} s before it sends again",
                    wait.as_secs()
                ),
            });
    }

    /// How many accounts Graph holds back now.
    pub fn graph_holds(&self) -> usize {
        let holds = self.graph.holds.lock().unwrap_or_else(|e| e.into_inner());
        holds.values().filter(|t| **t > Instant::now()).count()
    }

    /// Tells `event` once in the whole fleet for `ttl` (the instance that
    /// takes the lease named `key` tells it; the lease lapses by itself).
    pub async fn announce_once(
        &self,
        key: &str,
        ttl: Duration,
        event: crate::accounts::changes::AccountEvent,
    ) {
        if let Ok(Some(lease)) = self.fleet.try_lease(key, ttl).await {
            // Not released: it keeps the other instances quiet until `ttl`.
            drop(lease);
            self.changes.tell(event);
        }
    }
}
