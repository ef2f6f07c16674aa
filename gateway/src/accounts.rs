//! Accounts, local passwords and tokens at run time (SPEC §4, §5). Shared by
//! every protocol.
//!
//! Each account (lower-cased login name) has one async mutex around its
//! state. Everything that may change the state — checking a password against
//! the sealed file, refreshing the access token, re-sealing rotated refresh
//! tokens — happens under it, so concurrent logins for one account cause one
//! key derivation and one refresh (single flight), and later logins with the
//! same password cost a hash comparison.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailgate_config::{Config, Flow, Provider};
use rand_core::{OsRng, RngCore};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::oauth::{OAuth, OAuthError};
use crate::store::{SealingKey, Store, StoreError, TokenFile, Tokens, now};

/// Why a login could not be completed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    /// Unknown user or wrong local password: the protocol's plain
    /// authentication failure (the two are not told apart).
    #[error("invalid credentials")]
    BadCredentials,
    /// The account has no usable token; the text says what to do.
    #[error("{0}")]
    NeedsAuthorization(String),
    /// The provider, its token endpoint or the store cannot serve the login
    /// now; the text says why.
    #[error("{0}")]
    Unavailable(String),
}

/// A successful local authentication with a fresh access token.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// Lower-cased login name: the key of the account's state.
    pub user: String,
    /// The SASL identity to use upstream.
    pub upstream_user: String,
    pub provider: Arc<Provider>,
    pub access_token: SecretString,
}

/// A derived key and a fast check of the password it came from.
struct CachedKey {
    key: SealingKey,
    /// SHA-256(process salt || password); memory only.
    check: [u8; 32],
}

#[derive(Default)]
struct AccountState {
    key: Option<CachedKey>,
    tokens: Option<Tokens>,
    /// The file as last read or written.
    file: Option<TokenFile>,
}

/// The token service.
pub struct Accounts {
    config: std::sync::RwLock<Arc<Config>>,
    store: Store,
    oauth: OAuth,
    backoff: Backoff,
    states: Mutex<HashMap<String, Arc<tokio::sync::Mutex<AccountState>>>>,
    /// Per provider: the app-only token and its expiry (client credentials).
    metrics: Arc<crate::metrics::Metrics>,
    app_tokens: Mutex<HashMap<String, AppTokenSlot>>,
    /// Per user: the check of a password that matched its password_hash.
    hash_checks: Mutex<HashMap<String, [u8; 32]>>,
    salt: [u8; 32],
}

type AppTokenSlot = Arc<tokio::sync::Mutex<Option<(SecretString, u64)>>>;

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Accounts {
    pub fn new(
        config: Arc<Config>,
        oauth: OAuth,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Accounts {
        let mut salt = [0u8; 32];
        OsRng.fill_bytes(&mut salt);
        Accounts {
            store: Store::new(&config.gateway.state_dir),
            config: std::sync::RwLock::new(config),
            oauth,
            backoff: Backoff::default(),
            states: Mutex::new(HashMap::new()),
            app_tokens: Mutex::new(HashMap::new()),
            hash_checks: Mutex::new(HashMap::new()),
            salt,
            metrics,
        }
    }

    fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes a reloaded configuration: accounts and providers change for
    /// the next logins; cached password-hash checks and app tokens are
    /// dropped (hashes and client secrets may have changed). Sealed tokens
    /// and derived keys stay valid.
    pub fn set_config(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        self.hash_checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.app_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The provider of a login name's account.
    pub fn provider_of(&self, login: &str) -> Option<Arc<Provider>> {
        let config = self.config();
        let account = config.find_account(login)?;
        config.provider(&account.provider).cloned()
    }

    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    fn check_of(&self, password: &SecretString) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(password.expose_secret().as_bytes());
        h.finalize().into()
    }

    /// Removes `user`'s state when nobody else holds it.
    fn forget_if_idle(&self, user: &str, state: &Arc<tokio::sync::Mutex<AccountState>>) {
        let mut map = self.states.lock().unwrap_or_else(|e| e.into_inner());
        // The map's own reference and ours: no other login is using it.
        if Arc::strong_count(state) == 2 && map.get(user).is_some_and(|s| Arc::ptr_eq(s, state)) {
            map.remove(user);
        }
    }

    fn state(&self, user: &str) -> Arc<tokio::sync::Mutex<AccountState>> {
        let mut map = self.states.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(user.to_owned()).or_default().clone()
    }

    /// Checks the local password of `login` and returns an access token that
    /// lives at least the provider's `min_token_life`.
    pub async fn login(
        &self,
        login: &str,
        password: &SecretString,
        peer: IpAddr,
    ) -> Result<Authorized, LoginError> {
        let user = login.trim().to_lowercase();
        let delay = self.backoff.delay(&user, peer);
        if !delay.is_zero() {
            debug!(
                delay_ms = delay.as_millis() as u64,
                "slowing down after failed logins"
            );
            tokio::time::sleep(delay).await;
        }
        let config = self.config();
        let Some(account) = config.find_account(&user) else {
            info!("login for an unknown user");
            self.backoff.failure(&user, peer);
            return Err(LoginError::BadCredentials);
        };
        let Some(provider) = config.provider(&account.provider).cloned() else {
            return Err(LoginError::Unavailable(format!(
                "provider {} is not configured",
                account.provider
            )));
        };
        if let Some(hash) = &account.password_hash
            && !self.check_hash(&user, hash, password).await
        {
            info!("wrong local password (password_hash)");
            self.backoff.failure(&user, peer);
            return Err(LoginError::BadCredentials);
        }
        let upstream_user = account
            .upstream_user
            .clone()
            .unwrap_or_else(|| login.trim().to_owned());
        if provider.flow == Flow::ClientCredentials {
            // App-only access: the password_hash (required by the
            // configuration) was the password check; one token serves every
            // mailbox of the provider.
            self.backoff.success(&user, peer);
            let access_token = self.app_token(&provider, None).await?;
            return Ok(Authorized {
                user,
                upstream_user,
                provider,
                access_token,
            });
        }

        let state = self.state(&user);
        let mut st = state.lock().await;
        if let Err(e) = self.unlock(&user, password, peer, &mut st).await {
            // Nothing learnt about this name (no token, wrong password):
            // forget its state, so names tried against a `*@domain`
            // account do not pile up.
            if st.key.is_none() && st.tokens.is_none() {
                drop(st);
                self.forget_if_idle(&user, &state);
            }
            return Err(e);
        }
        let access_token = self.fresh_token(&user, &provider, &mut st, None).await?;
        Ok(Authorized {
            user,
            upstream_user,
            provider,
            access_token,
        })
    }

    /// The upstream rejected `auth.access_token`: drop it and refresh, once.
    /// When another login already replaced it, that newer token is returned.
    pub async fn token_rejected(&self, auth: &Authorized) -> Result<SecretString, LoginError> {
        if auth.provider.flow == Flow::ClientCredentials {
            return self
                .app_token(&auth.provider, Some(&auth.access_token))
                .await;
        }
        let state = self.state(&auth.user);
        let mut st = state.lock().await;
        self.fresh_token(
            &auth.user,
            &auth.provider,
            &mut st,
            Some(&auth.access_token),
        )
        .await
    }

    /// Checks a `password_hash`, remembering a match so that later logins
    /// with the same password skip Argon2.
    async fn check_hash(&self, user: &str, hash: &str, password: &SecretString) -> bool {
        let check = self.check_of(password);
        let cached = {
            let map = self.hash_checks.lock().unwrap_or_else(|e| e.into_inner());
            map.get(user).is_some_and(|c| bool::from(c.ct_eq(&check)))
        };
        if cached {
            return true;
        }
        let ok = verify_hash(hash, password).await;
        if ok {
            let mut map = self.hash_checks.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(user.to_owned(), check);
        }
        ok
    }

    /// The provider's app-only token (client credentials grant), cached and
    /// renewed once it has less than `min_token_life` left; one request at a
    /// time per provider. `rejected` is never returned again.
    async fn app_token(
        &self,
        provider: &Provider,
        rejected: Option<&SecretString>,
    ) -> Result<SecretString, LoginError> {
        let slot = {
            let mut map = self.app_tokens.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(provider.name.clone()).or_default().clone()
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
        match self.oauth.client_credentials(provider).await {
            Ok(grant) => {
                let life = grant
                    .expires_in
                    .unwrap_or(Duration::from_secs(3600))
                    .as_secs();
                info!(provider = %provider.name, lifetime_s = life, "app-only token obtained");
                self.metrics.refresh("ok");
                *cur = Some((grant.access_token.clone(), now().saturating_add(life)));
                Ok(grant.access_token)
            }
            Err(e) => {
                warn!(error = %e, provider = %provider.name, "client credentials grant failed");
                self.metrics.refresh(match e {
                    OAuthError::InvalidClient(_) => "invalid_client",
                    _ => "error",
                });
                Err(LoginError::Unavailable(format!(
                    "the token endpoint of {} refused or failed the app-only token request; see the gateway's log",
                    provider.name
                )))
            }
        }
    }

    /// Opens the account's tokens with `password`, from the key cache when the
    /// password matches it, else from the sealed file.
    async fn unlock(
        &self,
        user: &str,
        password: &SecretString,
        peer: IpAddr,
        st: &mut AccountState,
    ) -> Result<(), LoginError> {
        let check = self.check_of(password);
        let cached_ok = st
            .key
            .as_ref()
            .is_some_and(|k| bool::from(k.check.ct_eq(&check)));
        // With a cached key, the file is read again only when the in-memory
        // tokens cannot be used (so a `mailgate token import` done while the
        // gateway runs is picked up).
        let usable =
            st.tokens.is_some() && st.file.as_ref().is_some_and(|f| !f.needs_authorization);
        if cached_ok && usable {
            self.backoff.success(user, peer);
            return Ok(());
        }
        let file = match self.store.load(user) {
            Ok(Some(f)) => f,
            Ok(None) => {
                info!("no token stored for this account");
                return Err(LoginError::NeedsAuthorization(format!(
                    "No OAuth token is stored for {user}; on the gateway run `mailgate login {user}` (or `mailgate token import {user}`), then log in again"
                )));
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                warn!(error = %e, "token file is damaged");
                return Err(LoginError::NeedsAuthorization(format!(
                    "The stored token of {user} is damaged; on the gateway run `mailgate login {user}`"
                )));
            }
            Err(e) => {
                warn!(error = %e, "cannot read the token store");
                return Err(LoginError::Unavailable(
                    "the gateway cannot read its token store; see its log".into(),
                ));
            }
        };
        let same_file = st.file.as_ref() == Some(&file);
        if cached_ok && same_file {
            // Nothing new on disk: the cached state stands.
            self.backoff.success(user, peer);
            return self.check_usable(user, &file);
        }
        let pw = password.clone();
        let sealed = file.clone();
        let path = self.store.path(user);
        let opened = tokio::task::spawn_blocking(move || {
            let key = SealingKey::derive(&pw, &sealed.kdf)?;
            let tokens = sealed.open(&key, &path)?;
            Ok::<_, StoreError>((key, tokens))
        })
        .await
        .map_err(|e| LoginError::Unavailable(format!("internal error: {e}")))?;
        match opened {
            Ok((key, tokens)) => {
                self.backoff.success(user, peer);
                st.key = Some(CachedKey { key, check });
                st.tokens = Some(tokens);
                st.file = Some(file.clone());
                self.check_usable(user, &file)
            }
            Err(StoreError::WrongPassword) => {
                info!("wrong local password");
                self.backoff.failure(user, peer);
                Err(LoginError::BadCredentials)
            }
            Err(e) => {
                warn!(error = %e, "cannot open the token file");
                Err(LoginError::NeedsAuthorization(format!(
                    "The stored token of {user} cannot be used; on the gateway run `mailgate login {user}`"
                )))
            }
        }
    }

    fn check_usable(&self, user: &str, file: &TokenFile) -> Result<(), LoginError> {
        if file.needs_authorization {
            return Err(LoginError::NeedsAuthorization(needs_login_text(user)));
        }
        Ok(())
    }

    /// Returns an access token living at least `min_token_life`, refreshing
    /// when needed. `rejected` is a token the upstream refused: it is never
    /// returned again.
    async fn fresh_token(
        &self,
        user: &str,
        provider: &Provider,
        st: &mut AccountState,
        rejected: Option<&SecretString>,
    ) -> Result<SecretString, LoginError> {
        let Some(tokens) = st.tokens.as_mut() else {
            return Err(LoginError::NeedsAuthorization(needs_login_text(user)));
        };
        if let (Some(bad), Some(cur)) = (rejected, tokens.access_token.as_deref())
            && bool::from(bad.expose_secret().as_bytes().ct_eq(cur.as_bytes()))
        {
            debug!("dropping the access token the upstream rejected");
            tokens.access_token = None;
            tokens.expires_at = None;
        }
        let min_life = provider.min_token_life.as_secs();
        if let (Some(at), Some(exp)) = (&tokens.access_token, tokens.expires_at)
            && exp >= now().saturating_add(min_life)
        {
            return Ok(SecretString::from(at.clone()));
        }
        let Some(rt) = tokens.refresh_token.clone() else {
            return Err(LoginError::NeedsAuthorization(needs_login_text(user)));
        };
        let rt = SecretString::from(rt);
        debug!(provider = %provider.name, "refreshing the access token");
        let result = self.oauth.refresh(provider, &rt).await;
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
                tokens.access_token = Some(grant.access_token.expose_secret().to_owned());
                tokens.expires_at = Some(now().saturating_add(lifetime));
                if let Some(new_rt) = &grant.refresh_token {
                    tokens.refresh_token = Some(new_rt.expose_secret().to_owned());
                }
                info!(rotated, lifetime_s = lifetime, "access token refreshed");
                self.metrics.refresh("ok");
                self.persist(user, provider, st, None);
                Ok(grant.access_token)
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
                self.persist(user, provider, st, Some((e.to_string(), mark_dead)));
                if mark_dead {
                    Err(LoginError::NeedsAuthorization(format!(
                        "The authorisation of {user} has expired or was revoked; on the gateway run `mailgate login {user}`"
                    )))
                } else if matches!(e, OAuthError::InvalidClient(_)) {
                    Err(LoginError::Unavailable(
                        "the provider rejected the gateway's client credentials; the administrator must check the provider's client_id and client_secret".into(),
                    ))
                } else {
                    Err(LoginError::Unavailable(format!(
                        "the token endpoint of {} cannot be used now; try again later",
                        provider.name
                    )))
                }
            }
        }
    }

    /// Writes the account's file: re-sealed tokens after a refresh, or the
    /// error metadata after a failed one. A failure to write is logged; the
    /// in-memory tokens keep serving logins.
    fn persist(
        &self,
        user: &str,
        provider: &Provider,
        st: &mut AccountState,
        error: Option<(String, bool)>,
    ) {
        let (Some(key), Some(tokens)) = (st.key.as_ref(), st.tokens.as_ref()) else {
            return;
        };
        let mut file = st
            .file
            .clone()
            .unwrap_or_else(|| TokenFile::seal(user, &provider.name, &key.key, tokens));
        match error {
            None => {
                file.reseal(&key.key, tokens);
                file.last_refresh = Some(now());
                file.last_error = None;
                file.needs_authorization = false;
            }
            Some((message, dead)) => {
                file.last_error = Some(message);
                file.needs_authorization |= dead;
            }
        }
        if let Err(e) = self.store.save(&file) {
            warn!(error = %e, "cannot write the token file; the tokens stay in memory");
        }
        st.file = Some(file);
    }
}

fn needs_login_text(user: &str) -> String {
    format!("{user} must be authorised again; on the gateway run `mailgate login {user}`")
}

/// Checks a `password_hash` PHC string off the async threads.
async fn verify_hash(hash: &str, password: &SecretString) -> bool {
    use argon2::PasswordVerifier;
    let hash = hash.to_owned();
    let pw = password.clone();
    tokio::task::spawn_blocking(move || {
        argon2::PasswordHash::new(&hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(pw.expose_secret().as_bytes(), &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}
