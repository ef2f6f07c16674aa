//! What stands between a password and an Argon2 check: the backoff (here
//! and in the fleet), the attempts under way, the process's one limiter.

use std::net::IpAddr;
use std::time::Duration;

use secrecy::SecretString;
use tracing::{info, warn};

use crate::accounts::errors::{LoginError, Unavailable};
use crate::accounts::service::Accounts;
use crate::accounts::store::SealingKey;

impl Accounts {
    /// Records a wrong password here and, with a shared store, for the
    /// whole fleet (spreading attempts over instances gains nothing).
    /// Only wrong passwords (and unknown names, which answer like one)
    /// count: an account without tokens counts against no one.
    pub fn failure(&self, user: &str, peer: IpAddr, known: bool, familiar: bool) {
        self.backoff.failure(user, peer, known, familiar);
        if self.fleet.shared() {
            let (fleet, user) = (self.fleet.clone(), user.to_owned());
            tokio::spawn(async move {
                if let Err(e) = fleet.failure(&user, peer, familiar).await {
                    warn!(error = %e, "cannot record a failed attempt in the shared store");
                }
            });
        }
    }

    /// Records a success. The fleet's counters are cleared only after a
    /// password check (`checked`): a login whose key is cached costs Redis
    /// nothing, and is not slowed by the fleet's backoff either.
    pub(super) fn success(&self, user: &str, peer: IpAddr, checked: bool, familiar: bool) {
        self.backoff.success(user, peer, familiar);
        if !checked {
            return;
        }
        if self.fleet.shared() {
            let (fleet, user) = (self.fleet.clone(), user.to_owned());
            tokio::spawn(async move {
                let _ = fleet.success(&user, peer, familiar).await;
            });
        }
    }

    /// How much longer an attempt of `user` from `peer` (an address the
    /// account knows, or not) is held back, here or, with a shared store,
    /// anywhere in the fleet (when Redis cannot say, what this instance
    /// knows decides).
    pub async fn locked(&self, user: &str, peer: IpAddr, familiar: bool) -> Duration {
        let here = self.backoff.locked(user, peer, familiar);
        if !here.is_zero() || !self.fleet.shared() {
            return here;
        }
        self.fleet
            .locked(user, peer, familiar)
            .await
            .unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the fleet's backoff");
                Duration::ZERO
            })
    }

    /// Runs Argon2 work for an attempt by `user` from `peer` that no cache
    /// answered: refused at once while either is in backoff (no work done,
    /// nothing recorded), or when too many attempts of either are being
    /// checked, or when the gateway's limiter is full.
    /// `kind` names the work in `mailgate_password_checks_total`
    /// (`checked` or `dummy`).
    pub(super) async fn gated<T, F>(
        &self,
        user: &str,
        peer: IpAddr,
        familiar: bool,
        kind: &'static str,
        f: F,
    ) -> Result<T, LoginError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let locked = self.locked(user, peer, familiar).await;
        if !locked.is_zero() {
            self.metrics.password_check("refused_backoff");
            info!(
                locked_ms = locked.as_millis() as u64,
                familiar,
                "refused without a check: this user or address is in backoff after failed logins"
            );
            return Err(LoginError::Throttled(locked));
        }
        let Some(_pending) = self.backoff.begin(user, peer, familiar) else {
            self.metrics.password_check("refused_busy");
            warn!("refused: too many logins for this user or from this address are being checked");
            return Err(LoginError::Unavailable(Unavailable::TooManyAtOnce));
        };
        let done = crate::accounts::argon::limiter()
            .run(f)
            .await
            .map_err(|_| {
                self.metrics.password_check("refused_busy");
                warn!("refused: the gateway's password checks are all busy");
                LoginError::Unavailable(Unavailable::Busy)
            })?;
        self.metrics.password_check(kind);
        Ok(done)
    }

    /// A wrong-password answer for a name that has nothing to check the
    /// password against: it costs a derivation, like a real check.
    pub(super) async fn refuse_after_dummy(
        &self,
        user: &str,
        password: &SecretString,
        peer: IpAddr,
        known: bool,
    ) -> LoginError {
        let (pw, kdf) = (
            password.clone(),
            crate::accounts::argon::limiter().dummy_kdf().clone(),
        );
        let dummy = self
            .gated(user, peer, false, "dummy", move || {
                drop(SealingKey::derive(&pw, &kdf))
            })
            .await;
        match dummy {
            Ok(_) => {
                if !known {
                    self.failure(user, peer, false, false);
                }
                LoginError::BadCredentials
            }
            Err(e) => e,
        }
    }
}
