//! Accounts, local passwords and tokens at run time (SPEC §4, §5). Shared by
//! every protocol.
//!
//! Each account (lower-cased login name) has one async mutex around its
//! state. Everything that may change the state — checking a password against
//! the sealed file, refreshing the access token, re-sealing rotated refresh
//! tokens — happens under it, so concurrent logins for one account cause one
//! key derivation and one refresh (single flight), and later logins with the
//! same password cost a hash comparison.
//!
//! The store is the truth (SPEC §4): every login reads the account's file
//! (a small read) and uses its cached key and tokens only while the file is
//! still the one they came from; every write is a compare-and-swap against
//! that file, so `mailgate forget`, `login` and `passwd` take effect for the
//! next login and are never undone by a running gateway.
//!
//! Password checks that need Argon2 are bounded (see [`crate::accounts::argon`] and
//! [`crate::accounts::backoff`]): refused at once while the user or the address is in
//! backoff, capped per user and per address, and names without a file cost
//! a derivation too, so that they answer like a wrong password.

pub mod argon;
pub mod backoff;
pub mod flows;
pub mod identity;
pub mod inband;
pub mod oauth;
pub mod redirect;
pub mod redis;
pub mod shared;
pub mod store;

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

use crate::accounts::backoff::Backoff;
use crate::accounts::oauth::{OAuth, OAuthError};
use crate::accounts::store::{Expect, SealingKey, Store, StoreError, TokenFile, Tokens, now};

/// Why a login could not be completed: what failed. What the user is told
/// to do about it is written where the failure reaches them (the session's
/// login policy, for a mail client).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    /// Unknown user or wrong local password: the protocol's plain
    /// authentication failure (the two are not told apart).
    #[error("invalid credentials")]
    BadCredentials,
    /// The account has no token file at all: nothing can check the
    /// password. In-band authorisation may start a flow; otherwise the
    /// client is told what a wrong password is told.
    #[error("no token is stored for the account")]
    NoToken,
    /// The account has no usable token. `file` is the file that the
    /// password opened (a dead refresh token), which an in-band flow may
    /// replace.
    #[error("{why}")]
    NeedsAuthorization {
        why: Unusable,
        file: Option<Box<TokenFile>>,
    },
    /// The provider, its token endpoint or the gateway cannot serve the
    /// login now.
    #[error("{0}")]
    Unavailable(Unavailable),
    /// Refused without a check: too many wrong passwords for this account
    /// or from this address, for this long still.
    #[error("too many failed logins; try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
}

/// Why an account's stored token cannot serve a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("the stored token is damaged")]
    Damaged,
    #[error("the stored token cannot be opened")]
    Unopenable,
    /// The provider answered `invalid_grant` just now.
    #[error("the authorisation has expired or was revoked")]
    Expired,
    /// The account is marked as needing a new sign-in, or holds no refresh
    /// token.
    #[error("the account must be authorised again")]
    Marked,
}

/// What cannot serve a login now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("provider {0} is not configured")]
    NoProvider(String),
    #[error("the gateway cannot read its token store")]
    Store,
    #[error("too many login attempts at once for this account or from this address")]
    TooManyAtOnce,
    #[error("the gateway's password checks are all busy")]
    Busy,
    #[error("the token endpoint of {0} cannot be used now")]
    TokenEndpoint(String),
    #[error("the provider rejected the gateway's client credentials")]
    ClientRejected,
    #[error("the token endpoint of {0} refused or failed the app-only token request")]
    AppToken(String),
    #[error("the service account of {0} has no domain-wide delegation for this mailbox")]
    NotDelegated(String),
    /// The outbound proxy refused or failed a token request (its words
    /// are in the log, not here: they name the proxy and its user).
    #[error("the gateway's outbound proxy refused or failed the request to the token endpoint")]
    Proxy,
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
    /// The file as last read from or written to the store: the key and the
    /// tokens stand only while the store holds exactly this file.
    disk: Option<TokenFile>,
    /// The tokens in memory are newer than `disk` (a write failed); they
    /// are written at the next login.
    unsaved: bool,
}

/// The longest login name accepted (an e-mail address is at most 254
/// octets; this leaves room for `upstream_user` style names).
pub const MAX_USER: usize = 320;

/// The lower-cased account name of a login name, or `None` when it cannot
/// be one: empty, longer than [`MAX_USER`], or with control characters
/// (they would reach the XOAUTH2 `user=` field, file names and logs).
///
/// This name, never the login as typed, is what the tokens, the backoff
/// and the provider see. Full Unicode lower-casing can turn a character
/// into another one (the Kelvin sign `K` into `k`): a login whose folding
/// changes a non-ASCII character is accepted only when its compatibility
/// form (NFKC) folds to the same name, so that two spellings never name
/// two accounts nor one account under two names.
pub fn account_name(login: &str) -> Option<String> {
    use unicode_normalization::UnicodeNormalization as _;
    let user = login.trim();
    if user.is_empty() || user.len() > MAX_USER || user.chars().any(char::is_control) {
        return None;
    }
    let folded = user.to_lowercase();
    let changes_non_ascii = user
        .chars()
        .any(|c| !c.is_ascii() && c.to_lowercase().ne(std::iter::once(c)));
    if changes_non_ascii && user.nfkc().collect::<String>().to_lowercase() != folded {
        info!("a login name whose lower-casing is not its compatibility form's was refused");
        return None;
    }
    Some(folded)
}

/// The token service.
pub struct Accounts {
    config: std::sync::RwLock<Arc<Config>>,
    store: Store,
    oauth: OAuth,
    backoff: Backoff,
    states: Mutex<HashMap<String, Arc<tokio::sync::Mutex<AccountState>>>>,
    /// Per provider: the app-only token and its expiry (client credentials).
    metrics: Arc<crate::observe::metrics::Metrics>,
    app_tokens: Mutex<HashMap<String, AppTokenSlot>>,
    /// Per (user, password_hash): the check of a password that matched it.
    hash_checks: Mutex<HashMap<(String, String), [u8; 32]>>,
    salt: [u8; 32],
    argon: crate::accounts::argon::Limiter,
}

/// An app-only token as the fleet shares it (sealed, see [`app_sealer`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct AppToken {
    #[serde(with = "shared::secret")]
    token: SecretString,
    expires_at: u64,
}

/// The sealer of a provider's shared app-only token (for `subject`, the
/// mailbox of a service account): keyed by its client secret, its client
/// certificate's key or its service account's private key, which every
/// instance has and Redis does not (`None` without any: nothing is shared).
fn app_sealer(provider: &Provider, subject: Option<&str>) -> Option<shared::Sealer> {
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
        secret.expose_secret(),
    ] {
        material.extend_from_slice(&(part.len() as u64).to_be_bytes());
        material.extend_from_slice(part.as_bytes());
    }
    let material = zeroize::Zeroizing::new(material);
    Some(shared::Sealer::new("app-token", &material))
}

type AppTokenSlot = Arc<tokio::sync::Mutex<Option<(SecretString, u64)>>>;

/// The mailbox a service account's token is for (`None`: the provider's
/// one client-credentials token serves every mailbox).
fn app_subject<'a>(provider: &Provider, upstream_user: &'a str) -> Option<&'a str> {
    (provider.flow == Flow::ServiceAccount).then_some(upstream_user)
}

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
        store: Store,
        oauth: OAuth,
        metrics: Arc<crate::observe::metrics::Metrics>,
    ) -> Accounts {
        let mut salt = [0u8; 32];
        OsRng.fill_bytes(&mut salt);
        Accounts {
            store,
            config: std::sync::RwLock::new(config),
            oauth,
            backoff: Backoff::default(),
            states: Mutex::new(HashMap::new()),
            app_tokens: Mutex::new(HashMap::new()),
            hash_checks: Mutex::new(HashMap::new()),
            salt,
            metrics,
            argon: crate::accounts::argon::Limiter::default(),
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

    /// The SASL identity upstream of a login name: its account's
    /// `upstream_user`, else the name itself.
    pub fn upstream_user_of(&self, login: &str) -> String {
        self.config()
            .find_account(login)
            .and_then(|a| a.upstream_user.clone())
            .or_else(|| account_name(login))
            .unwrap_or_default()
    }

    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The OAuth client.
    pub fn oauth(&self) -> &OAuth {
        &self.oauth
    }

    /// The token store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Changes `user`'s local password (the portal's form, in a session
    /// signed in at the provider as the account: its owner): refused
    /// without a check while the owner's own failures hold it back, run
    /// within the gateway's bound on Argon2 work, and a wrong old password
    /// counts as the owner's failed login.
    pub async fn change_password(
        &self,
        user: &str,
        old: &SecretString,
        new: &SecretString,
        peer: IpAddr,
    ) -> Result<(), crate::accounts::flows::PasswordError> {
        use crate::accounts::flows::{PasswordError, file_to_rekey, rekey};
        let file = file_to_rekey(&self.store, user, new).await?;
        let (f, o, n, at) = (
            file.clone(),
            old.clone(),
            new.clone(),
            self.store.location(user),
        );
        let next = self
            .gated(user, peer, true, "checked", move || rekey(&f, &o, &n, &at))
            .await
            .map_err(PasswordError::Refused)?;
        match &next {
            Ok(_) => self.success(user, peer, true, true),
            Err(PasswordError::WrongPassword) => self.failure(user, peer, true, true),
            Err(_) => {}
        }
        self.store
            .save(&next?, Expect::Same(&file))
            .await
            .map_err(PasswordError::Store)?;
        Ok(())
    }

    /// Seals what a sign-in granted with `password` (the portal's form),
    /// within the gateway's bound on Argon2 work; see
    /// [`crate::accounts::flows::store_grant`].
    pub async fn seal_grant(
        &self,
        user: &str,
        provider: &str,
        grant: crate::accounts::oauth::Grant,
        password: &SecretString,
        replaces: Option<TokenFile>,
    ) -> Result<(), crate::accounts::flows::FlowError> {
        let (u, p, pw) = (user.to_owned(), provider.to_owned(), password.clone());
        let file = self
            .argon
            .run(move || crate::accounts::flows::seal_grant(&u, &p, &grant, &pw))
            .await
            .map_err(|_| {
                self.metrics.password_check("refused_busy");
                crate::accounts::flows::FlowError::Input(
                    "the gateway is busy; try again in a moment".into(),
                )
            })??;
        let expect = match &replaces {
            Some(f) => Expect::Same(f),
            None => Expect::Absent,
        };
        self.store.save(&file, expect).await?;
        Ok(())
    }

    /// A keyed hash of a password (memory only), to compare passwords in
    /// constant time without keeping them.
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

    /// Records a wrong password here and, with a shared store, for the
    /// whole fleet (spreading attempts over instances gains nothing).
    /// Only wrong passwords (and unknown names, which answer like one)
    /// count: an account without tokens counts against no one.
    pub fn failure(&self, user: &str, peer: IpAddr, known: bool, familiar: bool) {
        self.backoff.failure(user, peer, known, familiar);
        if let Store::Redis(r) = &self.store {
            let (r, user) = (r.clone(), user.to_owned());
            tokio::spawn(async move {
                if let Err(e) = r.backoff_failure(&user, peer, familiar).await {
                    warn!(error = %e, "cannot record a failed attempt in the shared store");
                }
            });
        }
    }

    /// Records a success. The fleet's counters are cleared only after a
    /// password check (`checked`): a login whose key is cached costs Redis
    /// nothing, and is not slowed by the fleet's backoff either.
    fn success(&self, user: &str, peer: IpAddr, checked: bool, familiar: bool) {
        self.backoff.success(user, peer, familiar);
        if !checked {
            return;
        }
        if let Store::Redis(r) = &self.store {
            let (r, user) = (r.clone(), user.to_owned());
            tokio::spawn(async move {
                let _ = r.backoff_success(&user, peer, familiar).await;
            });
        }
    }

    /// How much longer an attempt of `user` from `peer` (an address the
    /// account knows, or not) is held back, here or, with a shared store,
    /// anywhere in the fleet (when Redis cannot say, what this instance
    /// knows decides).
    pub async fn locked(&self, user: &str, peer: IpAddr, familiar: bool) -> Duration {
        let here = self.backoff.locked(user, peer, familiar);
        match &self.store {
            Store::Redis(r) if here.is_zero() => r
                .backoff_locked(user, peer, familiar)
                .await
                .unwrap_or_else(|e| {
                    warn!(error = %e, "cannot read the fleet's backoff");
                    Duration::ZERO
                }),
            _ => here,
        }
    }

    /// Runs Argon2 work for an attempt by `user` from `peer` that no cache
    /// answered: refused at once while either is in backoff (no work done,
    /// nothing recorded), or when too many attempts of either are being
    /// checked, or when the gateway's limiter is full.
    /// `kind` names the work in `mailgate_password_checks_total`
    /// (`checked` or `dummy`).
    async fn gated<T, F>(
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
        let done = self.argon.run(f).await.map_err(|_| {
            self.metrics.password_check("refused_busy");
            warn!("refused: the gateway's password checks are all busy");
            LoginError::Unavailable(Unavailable::Busy)
        })?;
        self.metrics.password_check(kind);
        Ok(done)
    }

    /// A wrong-password answer for a name that has nothing to check the
    /// password against: it costs a derivation, like a real check.
    async fn refuse_after_dummy(
        &self,
        user: &str,
        password: &SecretString,
        peer: IpAddr,
        known: bool,
    ) -> LoginError {
        let (pw, kdf) = (password.clone(), self.argon.dummy_kdf().clone());
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

    /// Checks the local password of `login` and returns an access token that
    /// lives at least the provider's `min_token_life`.
    pub async fn authenticate(
        &self,
        login: &str,
        password: &SecretString,
        peer: IpAddr,
    ) -> Result<Authorized, LoginError> {
        let Some(user) = account_name(login) else {
            info!("login with a name that cannot be an account");
            return Err(LoginError::BadCredentials);
        };
        let config = self.config();
        let Some(account) = config.find_account(&user) else {
            info!("login for an unknown user");
            return Err(self.refuse_after_dummy(&user, password, peer, false).await);
        };
        let Some(provider) = config.provider(&account.provider).cloned() else {
            return Err(LoginError::Unavailable(Unavailable::NoProvider(
                account.provider.clone(),
            )));
        };
        if let Some(hash) = &account.password_hash
            && !self.check_hash(&user, hash, password, peer).await?
        {
            info!("wrong local password (password_hash)");
            self.failure(&user, peer, true, false);
            return Err(LoginError::BadCredentials);
        }
        // The configured name, else the folded one: never the login as
        // typed (the string authorised is the string sent).
        let upstream_user = account
            .upstream_user
            .clone()
            .unwrap_or_else(|| user.clone());
        if provider.is_app_only() {
            // App-only access: the password_hash (required by the
            // configuration) was the password check. Client credentials:
            // one token serves every mailbox of the provider; a service
            // account: one token per mailbox.
            self.success(&user, peer, false, false);
            let access_token = self
                .app_token(&provider, app_subject(&provider, &upstream_user), None)
                .await?;
            return Ok(Authorized {
                user,
                upstream_user,
                provider,
                access_token,
            });
        }

        let state = self.state(&user);
        let mut st = state.lock().await;
        if let Err(e) = self.unlock(&user, &provider, password, peer, &mut st).await {
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
        if auth.provider.is_app_only() {
            let subject = app_subject(&auth.provider, &auth.upstream_user);
            return self
                .app_token(&auth.provider, subject, Some(&auth.access_token))
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

    /// Checks a `password_hash`, remembering a match (for that hash) so
    /// that later logins with the same password skip Argon2.
    async fn check_hash(
        &self,
        user: &str,
        hash: &str,
        password: &SecretString,
        peer: IpAddr,
    ) -> Result<bool, LoginError> {
        let check = self.check_of(password);
        let slot = (user.to_owned(), hash.to_owned());
        let cached = {
            let map = self.hash_checks.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&slot).is_some_and(|c| bool::from(c.ct_eq(&check)))
        };
        if cached {
            return Ok(true);
        }
        let (h, pw) = (hash.to_owned(), password.clone());
        let ok = self
            .gated(user, peer, false, "checked", move || verify_hash(&h, &pw))
            .await?;
        if ok {
            let mut map = self.hash_checks.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(slot, check);
        }
        Ok(ok)
    }

    /// The provider's app-only token (client credentials grant), or a
    /// service account's token for the mailbox `subject` (JWT bearer
    /// grant), cached and renewed once it has less than `min_token_life`
    /// left; one request at a time per provider (per mailbox), in the whole
    /// fleet with the Redis store. `rejected` is never returned again.
    async fn app_token(
        &self,
        provider: &Provider,
        subject: Option<&str>,
        rejected: Option<&SecretString>,
    ) -> Result<SecretString, LoginError> {
        let slot = {
            let mut map = self.app_tokens.lock().unwrap_or_else(|e| e.into_inner());
            let key = format!("{}\0{}", provider.name, subject.unwrap_or(""));
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
        let shared = self.store.shared().zip(app_sealer(provider, subject));
        let mut lease = None;
        if let Some((redis, sealer)) = &shared {
            // One token for the fleet: another instance's, else ours,
            // obtained under the fleet's lease.
            match self
                .shared_app_token(redis, sealer, rejected, min_life)
                .await
            {
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
            None => self.oauth.client_credentials(provider).await,
        };
        if let (Ok(grant), Some((redis, sealer))) = (&result, &shared) {
            let life = grant.expires_in.unwrap_or(Duration::from_secs(3600));
            let shared_token = AppToken {
                token: grant.access_token.clone(),
                expires_at: now().saturating_add(life.as_secs()),
            };
            if let Err(e) = shared::put(redis, sealer, &shared_token, life, false).await {
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
    async fn shared_app_token(
        &self,
        redis: &crate::accounts::redis::RedisStore,
        sealer: &shared::Sealer,
        rejected: Option<&SecretString>,
        min_life: u64,
    ) -> Result<(Option<AppToken>, Option<crate::accounts::redis::RedisLease>), StoreError> {
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
            let token: Option<AppToken> = shared::get(redis, sealer, false).await?;
            if let Some(t) = token.filter(usable) {
                return Ok((Some(t), None));
            }
            if let Some(l) = redis.try_shared_lease(sealer.name(), ttl).await? {
                return Ok((None, Some(l)));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok((None, None));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens the account's tokens with `password`: from the key cache when
    /// the password matches it and the store still holds the file the cache
    /// came from, else from the sealed file (one bounded derivation).
    async fn unlock(
        &self,
        user: &str,
        provider: &Provider,
        password: &SecretString,
        peer: IpAddr,
        st: &mut AccountState,
    ) -> Result<(), LoginError> {
        let check = self.check_of(password);
        let loaded = self.store.load(user).await;
        match &loaded {
            Ok(Some(file))
                if st.disk.as_ref() != Some(file) && self.adopt(user, st, file.clone()) =>
            {
                // Re-sealed under the same key: another instance refreshed.
                debug!("newer tokens from the store, opened with the cached key");
            }
            Ok(file) if file.as_ref() != st.disk.as_ref() => {
                if st.key.is_some() {
                    info!(
                        "the token file changed or was removed behind the gateway; the cached key and tokens are dropped"
                    );
                }
                *st = AccountState::default();
            }
            Ok(_) => {}
            Err(StoreError::Io { .. } | StoreError::Unavailable { .. }) => {
                // Unreadable now: what is cached (if anything) keeps serving.
            }
            Err(_) => *st = AccountState::default(),
        }
        let here = crate::accounts::backoff::familiar_id(user, peer);
        let familiar = matches!(&loaded, Ok(Some(f)) if f.familiar.contains(&here));
        let cached_ok = st
            .key
            .as_ref()
            .is_some_and(|k| bool::from(k.check.ct_eq(&check)))
            && st.tokens.is_some();
        if cached_ok {
            self.success(user, peer, false, familiar);
            if st.unsaved {
                self.persist(user, provider, st, None).await;
            }
            if !familiar {
                self.remember_address(st, here).await;
            }
            return self.check_usable(st);
        }
        let file = match loaded {
            Ok(Some(f)) => f,
            Ok(None) => {
                info!("no token stored for this account");
                return match self.refuse_after_dummy(user, password, peer, true).await {
                    LoginError::BadCredentials => Err(LoginError::NoToken),
                    other => Err(other),
                };
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                warn!(error = %e, "token file is damaged");
                return Err(LoginError::NeedsAuthorization {
                    why: Unusable::Damaged,
                    file: None,
                });
            }
            Err(e) => {
                warn!(error = %e, "cannot read the token store");
                return Err(LoginError::Unavailable(Unavailable::Store));
            }
        };
        let pw = password.clone();
        let sealed = file.clone();
        let path = self.store.location(user);
        let opened = self
            .gated(user, peer, familiar, "checked", move || {
                let key = SealingKey::derive(&pw, &sealed.kdf)?;
                let tokens = sealed.open(&key, &path)?;
                Ok::<_, StoreError>((key, tokens))
            })
            .await?;
        match opened {
            Ok((key, tokens)) => {
                self.success(user, peer, true, familiar);
                st.key = Some(CachedKey { key, check });
                st.tokens = Some(tokens);
                st.disk = Some(file);
                st.unsaved = false;
                if !familiar {
                    self.remember_address(st, here).await;
                }
                self.check_usable(st)
            }
            Err(StoreError::WrongPassword) => {
                info!(familiar, "wrong local password");
                self.failure(user, peer, true, familiar);
                Err(LoginError::BadCredentials)
            }
            Err(e) => {
                warn!(error = %e, "cannot open the token file");
                Err(LoginError::NeedsAuthorization {
                    why: Unusable::Unopenable,
                    file: None,
                })
            }
        }
    }

    /// Remembers, with the account's tokens, that its owner logged in from
    /// the address named `id` ([`crate::accounts::backoff::familiar_id`]):
    /// the newest first, at most [`crate::accounts::backoff::MAX_FAMILIAR`].
    /// A compare-and-swap on the file the login opened: when another write
    /// came first, the next login from here tries again.
    async fn remember_address(&self, st: &mut AccountState, id: String) {
        let Some(disk) = st.disk.clone() else {
            return;
        };
        let mut next = disk.clone();
        next.familiar.retain(|f| *f != id);
        next.familiar.insert(0, id);
        next.familiar
            .truncate(crate::accounts::backoff::MAX_FAMILIAR);
        match self.store.save(&next, Expect::Same(&disk)).await {
            Ok(saved) => {
                info!("the owner's address is remembered as familiar");
                st.disk = Some(saved);
            }
            Err(e) => debug!(error = %e, "the familiar address was not recorded this time"),
        }
    }

    fn check_usable(&self, st: &AccountState) -> Result<(), LoginError> {
        match &st.disk {
            Some(f) if f.needs_authorization => Err(LoginError::NeedsAuthorization {
                why: Unusable::Marked,
                file: Some(Box::new(f.clone())),
            }),
            _ => Ok(()),
        }
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
        let min_life = provider.min_token_life.as_secs();
        if let Some(t) = usable_token(st, rejected, min_life)? {
            return Ok(t);
        }
        // A refresh is due: one per account in the whole fleet.
        let lease = match self.lease(user, st, rejected, min_life).await? {
            Leased::Fresh(t) => return Ok(t),
            Leased::Held(l) => l,
        };
        let out = self.refresh_now(user, provider, st, min_life).await;
        lease.release().await;
        out
    }

    /// Waits for `user`'s refresh lease; meanwhile, and once it is held,
    /// the tokens another instance wrote may already be fresh.
    async fn lease(
        &self,
        user: &str,
        st: &mut AccountState,
        rejected: Option<&SecretString>,
        min_life: u64,
    ) -> Result<Leased, LoginError> {
        let ttl = Duration::from_secs(5).max(self.config().gateway.upstream_timeout * 2);
        let deadline = tokio::time::Instant::now() + ttl * 2;
        loop {
            let held = self.store.try_lease(user, ttl).await.map_err(|e| {
                warn!(error = %e, "cannot take the refresh lease");
                LoginError::Unavailable(Unavailable::Store)
            })?;
            if self.adopt_newer(user, st).await
                && let Some(t) = usable_token(st, rejected, min_life)?
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
    async fn adopt_newer(&self, user: &str, st: &mut AccountState) -> bool {
        let Ok(Some(file)) = self.store.load(user).await else {
            return false;
        };
        if st.disk.as_ref() == Some(&file) {
            return false;
        }
        self.adopt(user, st, file)
    }

    /// Opens `file` with the cached key, when it was sealed under it.
    fn adopt(&self, user: &str, st: &mut AccountState, file: TokenFile) -> bool {
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

    /// Refreshes with the cached refresh token (the lease is held).
    async fn refresh_now(
        &self,
        user: &str,
        provider: &Provider,
        st: &mut AccountState,
        min_life: u64,
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
                self.persist(user, provider, st, None).await;
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
                self.persist(user, provider, st, Some((e.to_string(), mark_dead)))
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

    /// Writes the account's file: re-sealed tokens after a refresh, or the
    /// error metadata after a failed one, as a compare-and-swap against the
    /// file the cache came from. A file replaced or removed behind the
    /// gateway is left alone and the cache is dropped; a failure to write is
    /// logged, and the in-memory tokens keep serving logins (and are written
    /// at the next one).
    async fn persist(
        &self,
        user: &str,
        provider: &Provider,
        st: &mut AccountState,
        error: Option<(String, bool)>,
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
        match error {
            None => {
                file.last_refresh = Some(now());
                file.last_error = None;
                file.needs_authorization = false;
            }
            Some((message, dead)) => {
                file.last_error = Some(message);
                file.needs_authorization |= dead;
            }
        }
        let expect = match &st.disk {
            Some(d) => Expect::Same(d),
            None => Expect::Absent,
        };
        match self.store.save(&file, expect).await {
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

/// How waiting for the refresh lease ended.
enum Leased {
    /// Another instance's new tokens are fresh.
    Fresh(SecretString),
    /// The lease is ours: refresh.
    Held(crate::accounts::store::Lease),
}

/// The cached access token when it lives at least `min_life` seconds more
/// and is not the one the upstream `rejected` (which is dropped).
fn usable_token(
    st: &mut AccountState,
    rejected: Option<&SecretString>,
    min_life: u64,
) -> Result<Option<SecretString>, LoginError> {
    let Some(tokens) = st.tokens.as_mut() else {
        return Err(LoginError::NeedsAuthorization {
            why: Unusable::Marked,
            file: st.disk.clone().map(Box::new),
        });
    };
    if let (Some(bad), Some(cur)) = (rejected, tokens.access_token.as_deref())
        && bool::from(bad.expose_secret().as_bytes().ct_eq(cur.as_bytes()))
    {
        debug!("dropping the access token the upstream rejected");
        tokens.access_token = None;
        tokens.expires_at = None;
    }
    if let (Some(at), Some(exp)) = (&tokens.access_token, tokens.expires_at)
        && exp >= now().saturating_add(min_life)
    {
        return Ok(Some(SecretString::from(at.clone())));
    }
    Ok(None)
}

/// Checks a `password_hash` PHC string (blocking: Argon2).
fn verify_hash(hash: &str, password: &SecretString) -> bool {
    use argon2::PasswordVerifier;
    argon2::PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_fold_to_one_spelling() {
        let cases = [
            ("  Alice@Example.TEST ", Some("alice@example.test")),
            // The Kelvin sign folds to an ASCII k, as its NFKC form does.
            ("\u{212A}im@example.test", Some("kim@example.test")),
            (
                "M\u{00DC}ller@example.test",
                Some("m\u{00FC}ller@example.test"),
            ),
            // A titlecase digraph folds to one character, its NFKC form to
            // two: two spellings, refused.
            ("\u{01C5}ana@example.test", None),
            ("", None),
            ("a\rb@example.test", None),
        ];
        for (login, name) in cases {
            assert_eq!(account_name(login).as_deref(), name, "{login:?}");
        }
    }

    fn hash_of(pw: &str) -> String {
        use argon2::PasswordHasher;
        let salt = argon2::password_hash::SaltString::generate(&mut OsRng);
        argon2::Argon2::default()
            .hash_password(pw.as_bytes(), &salt)
            .expect("hash")
            .to_string()
    }

    /// A match remembered for one `password_hash` says nothing about
    /// another (a reload that changed the hash while a check was under way
    /// cannot let the old password in).
    #[tokio::test]
    async fn password_hash_matches_are_remembered_per_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:0\"\n[provider.p]\npreset = \"office365\"\nclient_id = \"x\"\n[[account]]\nuser = \"a@x.test\"\nprovider = \"p\"\n",
        )
        .expect("write");
        let config = mailgate_config::load_with_env(&file, Vec::new()).expect("config");
        let oauth = OAuth::new(Duration::from_secs(1)).expect("oauth");
        let store = Store::files(&config.gateway.state_dir);
        let accounts = Accounts::new(
            Arc::new(config),
            store,
            oauth,
            Arc::new(crate::observe::metrics::Metrics::new()),
        );
        let (old, new) = (hash_of("old-password"), hash_of("new-password"));
        let pw = SecretString::from("old-password");
        let peer: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(
            accounts
                .check_hash("a@x.test", &old, &pw, peer)
                .await
                .expect("check")
        );
        assert!(
            !accounts
                .check_hash("a@x.test", &new, &pw, peer)
                .await
                .expect("check"),
            "the old password's match is not taken for the new hash"
        );
    }

    #[test]
    fn names_that_cannot_be_accounts() {
        assert_eq!(
            account_name(" Alice@X.test ").as_deref(),
            Some("alice@x.test")
        );
        assert_eq!(account_name(""), None);
        assert_eq!(account_name("   "), None);
        assert_eq!(
            account_name("al\u{1}ice@x.test"),
            None,
            "the XOAUTH2 separator"
        );
        assert_eq!(account_name("al\nice@x.test"), None);
        assert_eq!(account_name(&"a".repeat(321)), None);
        assert!(account_name(&"a".repeat(320)).is_some());
    }
}
