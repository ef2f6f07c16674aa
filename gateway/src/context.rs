//! What every session shares: the configuration in force, the metrics, the
//! accounts, where the web portal is, and the upstream TLS settings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use mailgate_config::Config;

use crate::accounts::Accounts;
use crate::accounts::oauth::OAuth;

/// What every session shares.
pub struct Context {
    config: std::sync::RwLock<Arc<Config>>,
    pub metrics: Arc<crate::observe::metrics::Metrics>,
    pub accounts: Accounts,
    /// How browsers reach the web portal, once it listens (the in-band
    /// message names it).
    portal: std::sync::OnceLock<url::Url>,
    /// The upstream proof login of the identity check (made by the layer
    /// that knows the protocols).
    pub prove: crate::accounts::identity::Prove,
    tls: Mutex<HashMap<String, Arc<rustls::ClientConfig>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        config: Arc<Config>,
        stores: (crate::accounts::store::Store, crate::accounts::fleet::Fleet),
        prove: crate::accounts::identity::Prove,
    ) -> anyhow::Result<Context> {
        let oauth =
            OAuth::new(config.gateway.upstream_timeout).context("building the HTTP client")?;
        let metrics = Arc::new(crate::observe::metrics::Metrics::new());
        metrics.store.watch(stores.0.clone());
        Ok(Context {
            config: std::sync::RwLock::new(config.clone()),
            metrics: metrics.clone(),
            portal: std::sync::OnceLock::new(),
            accounts: Accounts::new(config, stores, oauth, metrics),
            prove,
            tls: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration in force (a session keeps the one it started with).
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The web portal's address as browsers use it, when it runs.
    pub fn portal_url(&self) -> Option<&url::Url> {
        self.portal.get()
    }

    /// Records where the portal listens (once, when it starts).
    pub fn set_portal_url(&self, url: url::Url) {
        let _ = self.portal.set(url);
    }

    /// Switches to a reloaded configuration for new sessions and logins.
    pub fn set_config(&self, config: Arc<Config>) {
        self.accounts.set_config(config.clone());
        self.tls.lock().unwrap_or_else(|e| e.into_inner()).clear();
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// The upstream TLS client configuration of a provider (built once).
    pub fn upstream_tls(
        &self,
        provider: &str,
    ) -> Result<Arc<rustls::ClientConfig>, mailgate_certs::CertError> {
        let mut map = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(provider) {
            return Ok(c.clone());
        }
        let ca = self
            .config()
            .provider(provider)
            .and_then(|p| p.ca_file.clone());
        let c = mailgate_certs::upstream_client_config(ca.as_deref())?;
        map.insert(provider.to_owned(), c.clone());
        Ok(c)
    }
}
