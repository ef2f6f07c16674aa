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

mod app_tokens;
pub mod argon;
pub mod backoff;
mod errors;
pub mod flows;
pub mod identity;
pub mod inband;
pub mod oauth;
pub mod redirect;
pub mod redis;
mod refresh;
pub mod shared;
pub mod store;
mod throttle;

use app_tokens::{AppTokenSlot, app_subject};
pub use errors::{LoginError, Unavailable, Unusable};

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
