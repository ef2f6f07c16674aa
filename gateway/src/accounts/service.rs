//! The accounts service: its state and the operations the portal, the CLI
//! and the sessions call. The operations of one concept each live in a
//! file of their own (`login`, `refresh`, `app_tokens`, `throttle`,
//! `grants`), all on [`Accounts`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mailgate_config::{Config, Provider};
use rand_core::{OsRng, RngCore};
use secrecy::{ExposeSecret, SecretString};

use crate::accounts::changes::Changes;
use sha2::{Digest, Sha256};

use crate::accounts::backoff::Backoff;
use crate::accounts::fleet::Fleet;
use crate::accounts::names::account_name;
use crate::accounts::oauth::OAuth;
use crate::accounts::state::{AccountState, AppTokenSlot};
use crate::accounts::store::Store;

/// A successful local authentication with a fresh access token.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// Lower-cased login name: the key of the account's state.
    pub user: String,
    /// The SASL identity to use upstream.
    pub upstream_user: String,
    pub provider: Arc<Provider>,
    /// For the audience it was asked for.
    pub access_token: SecretString,
    pub audience: crate::accounts::store::Audience,
    /// The shared mailbox opened with the account's own token (a
    /// `DELEGATE\\SHARED` login), lower-cased.
    pub shared: Option<String>,
}

impl Authorized {
    /// The mailbox the session opens upstream: the shared one, else the
    /// account's own (`upstream_user`).
    pub fn mailbox(&self) -> &str {
        self.shared.as_deref().unwrap_or(&self.upstream_user)
    }
}

/// The token service.
pub struct Accounts {
    pub(super) config: std::sync::RwLock<Arc<Config>>,
    pub(super) store: Store,
    pub(super) oauth: OAuth,
    pub(super) backoff: Backoff,
    pub(super) fleet: Fleet,
    pub(super) changes: Changes,
    pub(super) states: Mutex<HashMap<String, Arc<tokio::sync::Mutex<AccountState>>>>,
    /// Per provider: the app-only token and its expiry (client credentials).
    pub(super) metrics: Arc<crate::observe::metrics::Metrics>,
    pub(super) app_tokens: Mutex<HashMap<String, AppTokenSlot>>,
    /// Per (user, password_hash): the check of a password that matched it.
    pub(super) hash_checks: Mutex<HashMap<(String, String), [u8; 32]>>,
    pub(super) salt: [u8; 32],
    /// Sending through Graph: the accounts `smtp = "auto"` switched, and
    /// the accounts Graph asked to wait (until when).
    pub(super) graph: crate::accounts::graph_state::GraphState,
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
        (store, fleet): (Store, Fleet),
        oauth: OAuth,
        metrics: Arc<crate::observe::metrics::Metrics>,
    ) -> Accounts {
        let mut salt = [0u8; 32];
        OsRng.fill_bytes(&mut salt);
        Accounts {
            changes: Changes::new(store.clone()),
            store,
            fleet,
            config: std::sync::RwLock::new(config),
            oauth,
            backoff: Backoff::default(),
            states: Mutex::new(HashMap::new()),
            app_tokens: Mutex::new(HashMap::new()),
            hash_checks: Mutex::new(HashMap::new()),
            salt,
            metrics,
            graph: Default::default(),
        }
    }

    pub(super) fn config(&self) -> Arc<Config> {
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

    /// The backoff's state when it changed since the last call (for the
    /// snapshot that survives a restart).
    pub fn backoff_snapshot(&self) -> Option<crate::accounts::backoff::Snapshot> {
        self.backoff.snapshot_if_changed()
    }

    /// The account events from now on (see [`crate::accounts::changes`]).
    pub fn subscribe(
        &self,
    ) -> tokio::sync::broadcast::Receiver<crate::accounts::changes::AccountEvent> {
        self.changes.subscribe()
    }

    /// The fleet's shared state (the portal keeps its sessions there when
    /// it is shared: other gateways share this one's state).
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The provider's OAuth endpoints.
    pub(super) fn oauth(&self) -> &OAuth {
        &self.oauth
    }

    /// A keyed hash of a password (memory only), to compare passwords in
    /// constant time without keeping them.
    pub(super) fn check_of(&self, password: &SecretString) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(password.expose_secret().as_bytes());
        h.finalize().into()
    }

    /// Removes `user`'s state when nobody else holds it.
    pub(super) fn forget_if_idle(&self, user: &str, state: &Arc<tokio::sync::Mutex<AccountState>>) {
        let mut map = self.states.lock().unwrap_or_else(|e| e.into_inner());
        // The map's own reference and ours: no other login is using it.
        if Arc::strong_count(state) == 2 && map.get(user).is_some_and(|s| Arc::ptr_eq(s, state)) {
            map.remove(user);
        }
    }

    pub(super) fn state(&self, user: &str) -> Arc<tokio::sync::Mutex<AccountState>> {
        let mut map = self.states.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(user.to_owned()).or_default().clone()
    }
}
