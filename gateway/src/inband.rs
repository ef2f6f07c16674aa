//! In-band authorisation (SPEC §4): a login for an account without a usable
//! token starts the provider's flow in the background and fails with what
//! the user must do (the URL to open, or the device URL and user code), in
//! the client's own protocol. When the flow completes, the tokens are sealed
//! with the password of the attempt that started it; the user logs in again.
//!
//! One flow per account at a time: further attempts while it is pending get
//! the same instructions, never a second flow. A flow that fails or expires
//! is forgotten, so the next attempt starts afresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mailgate_config::{Flow, Provider};
use secrecy::SecretString;
use tracing::{Instrument, info, warn};

use crate::flows::{self, FlowError};
use crate::oauth::OAuth;
use crate::redirect::RedirectServer;
use crate::store::Store;

/// How long a browser sign-in started in band may take.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Default)]
struct Registry {
    /// user → the instructions of its pending flow
    pending: HashMap<String, String>,
    /// redirect URI → the listener receiving it
    servers: HashMap<String, Arc<RedirectServer>>,
}

/// The gateway's in-band flows.
#[derive(Debug)]
pub struct InBand {
    oauth: OAuth,
    store: Store,
    registry: Arc<tokio::sync::Mutex<Registry>>,
}

impl InBand {
    pub fn new(oauth: OAuth, store: Store) -> InBand {
        InBand {
            oauth,
            store,
            registry: Arc::new(tokio::sync::Mutex::new(Registry::default())),
        }
    }

    /// Starts (or finds) the flow for `user` and returns the instructions to
    /// show in the mail client. `Err` when no flow can run; its text says why.
    pub async fn authorize(
        &self,
        user: &str,
        provider: Arc<Provider>,
        password: &SecretString,
    ) -> Result<String, String> {
        let mut reg = self.registry.lock().await;
        if let Some(text) = reg.pending.get(user) {
            return Ok(text.clone());
        }
        let (text, flow): (
            String,
            std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>,
        ) = match provider.flow {
            Flow::AuthorizationCode => {
                let server = match reg.servers.get(provider.redirect_uri.as_str()) {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(
                            RedirectServer::bind(&provider.redirect_uri, false)
                                .await
                                .map_err(|e| e.to_string())?,
                        );
                        reg.servers
                            .insert(provider.redirect_uri.to_string(), s.clone());
                        s
                    }
                };
                let sign_in = flows::browser_request(&self.oauth, &provider, &server, user)
                    .map_err(|e| e.to_string())?;
                let text = format!(
                    "To authorise {user}, open {} in a browser and sign in, then log in again",
                    sign_in.request.url
                );
                let (oauth, provider) = (self.oauth.clone(), provider.clone());
                let fut = async move {
                    flows::browser_finish(&oauth, &provider, &server, sign_in, BROWSER_TIMEOUT)
                        .await
                };
                (text, Box::pin(fut))
            }
            Flow::DeviceCode => {
                let d = self
                    .oauth
                    .start_device(&provider)
                    .await
                    .map_err(|e| e.to_string())?;
                let text = format!(
                    "To authorise {user}, open {} and enter the code {}, then log in again",
                    d.verification_uri().as_str(),
                    d.user_code().secret()
                );
                let (oauth, provider) = (self.oauth.clone(), provider.clone());
                let fut =
                    async move { Ok::<_, FlowError>(oauth.poll_device(&provider, &d).await?) };
                (text, Box::pin(fut))
            }
            Flow::ClientCredentials => {
                return Err("client_credentials accounts need no authorisation".into());
            }
        };
        reg.pending.insert(user.to_owned(), text.clone());
        info!("in-band authorisation started");
        let (store, registry, user, password, provider_name) = (
            self.store.clone(),
            self.registry.clone(),
            user.to_owned(),
            password.clone(),
            provider.name.clone(),
        );
        let span = tracing::info_span!("in_band", user = %user);
        tokio::spawn(
            async move {
                let result = match flow.await {
                    Ok(grant) => {
                        let u = user.clone();
                        tokio::task::spawn_blocking(move || {
                            flows::store_grant(&store, &u, &provider_name, &grant, &password)
                        })
                        .await
                        .unwrap_or_else(|e| Err(FlowError::Input(e.to_string())))
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => info!("in-band authorisation complete; tokens stored"),
                    Err(e) => warn!(error = %e, "in-band authorisation failed"),
                }
                registry.lock().await.pending.remove(&user);
            }
            .instrument(span),
        );
        Ok(text)
    }
}
