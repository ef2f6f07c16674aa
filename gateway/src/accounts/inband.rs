//! In-band authorisation (SPEC §4): a login for an account without a usable
//! token starts the provider's flow in the background and fails with what
//! the user must do (the URL to open, or the device URL and user code), in
//! the client's own protocol. When the flow completes, and its identity is
//! the account's ([`crate::accounts::identity`]), the tokens are sealed with the
//! password of the attempt that started it; the user logs in again.
//!
//! A pending flow belongs to the password that started it: one flow per
//! account at a time, and only an attempt with that same password (compared
//! as a keyed hash, in constant time) is shown its URL or code again;
//! another password is told that an authorisation is pending from another
//! client, and nothing else. A password shorter than [`MIN_PASSWORD`] never
//! starts a flow. Pending flows are capped per client address and overall.
//! A flow that fails or expires is forgotten, so the next attempt starts
//! afresh.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mailgate_config::{Flow, Provider};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tracing::{Instrument, info, warn};

use crate::accounts::flows::{self, FlowError};
use crate::accounts::oauth::OAuth;
use crate::accounts::redirect::RedirectServer;
use crate::accounts::redis::RedisStore;
use crate::accounts::shared::Sealer;
use crate::accounts::store::{Expect, Kdf, SealingKey, Store, StoreError, TokenFile};

/// How long a browser sign-in started in band may take.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub use crate::accounts::flows::MIN_PASSWORD;
/// Flows pending at once that one client address may have started.
pub const MAX_PER_ADDRESS: usize = 3;
/// Flows pending at once in the whole gateway.
pub const MAX_PENDING: usize = 100;

#[derive(Debug)]
struct Pending {
    /// Keyed hash of the password that started it.
    owner: [u8; 32],
    peer: IpAddr,
    /// Its instructions.
    text: String,
}

#[derive(Debug, Default)]
struct Registry {
    /// user → its pending flow
    pending: HashMap<String, Pending>,
    /// user → how its last flow failed, for the attempt that owned it
    failed: HashMap<String, Pending>,
    /// redirect URI → the listener receiving it
    servers: HashMap<String, Arc<RedirectServer>>,
}

/// What an attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A flow was started; its instructions.
    Started(String),
    /// The attempt's own flow is pending; its instructions again.
    Shown(String),
    /// A flow started with another password is pending.
    OtherClient,
    /// The attempt's own last flow failed (e.g. the sign-in was for another
    /// identity); the text says how. The next attempt starts afresh.
    Failed(String),
    /// No flow can start; the text says why.
    Refused(String),
}

/// One attempt that may start a flow.
#[derive(Debug)]
pub struct Request<'a> {
    /// The lower-cased account name.
    pub user: &'a str,
    /// The SASL identity upstream.
    pub upstream_user: &'a str,
    pub provider: Arc<Provider>,
    pub password: &'a SecretString,
    /// The keyed hash of `password`.
    pub check: [u8; 32],
    pub peer: IpAddr,
    /// The file the new tokens replace (a dead refresh token); `None` when
    /// the account has no file.
    pub replaces: Option<TokenFile>,
    pub prover: crate::accounts::identity::Prover,
}

/// A flow pending in the fleet (Redis store), under
/// `shared:inband:<hash of the user>`: its instructions sealed under a key
/// derived (Argon2id) from the starting attempt's password, so that only
/// that password sees them again through another instance. `sealed` is
/// `None` while the flow is starting.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedPending {
    kdf: Option<Kdf>,
    sealed: Option<Vec<u8>>,
}

/// How long a pending flow's entry lives in the fleet without its
/// instance renewing it (an instance that dies lets it go).
const SHARED_TTL: Duration = Duration::from_secs(30);
/// How often the instance running a flow renews its entry.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// The gateway's in-band flows.
#[derive(Debug)]
pub struct InBand {
    oauth: OAuth,
    store: Store,
    registry: Arc<tokio::sync::Mutex<Registry>>,
    /// The derivations that check a password against a flow pending on
    /// another instance.
    argon: crate::accounts::argon::Limiter,
}

impl InBand {
    pub fn new(oauth: OAuth, store: Store) -> InBand {
        InBand {
            oauth,
            store,
            registry: Arc::new(tokio::sync::Mutex::new(Registry::default())),
            argon: crate::accounts::argon::Limiter::new(1, 16),
        }
    }

    /// Receives the redirects of `configured` (a provider's `redirect_uri`)
    /// through `server` (mounted in the web portal, which holds that
    /// address) instead of binding a listener of its own.
    pub async fn adopt(&self, configured: &url::Url, server: Arc<RedirectServer>) {
        let mut reg = self.registry.lock().await;
        reg.servers.insert(configured.to_string(), server);
    }

    /// Starts the flow of `req.user`, or tells where its pending flow
    /// stands for this attempt.
    pub async fn authorize(&self, req: Request<'_>) -> Outcome {
        let user = req.user;
        let mut reg = self.registry.lock().await;
        if let Some(p) = reg.pending.get(user) {
            return if bool::from(p.owner.ct_eq(&req.check)) {
                Outcome::Shown(p.text.clone())
            } else {
                info!("in-band authorisation pending from another client; not shown");
                Outcome::OtherClient
            };
        }
        if let Some(f) = reg.failed.remove(user)
            && bool::from(f.owner.ct_eq(&req.check))
        {
            return Outcome::Failed(f.text);
        }
        if req.password.expose_secret().chars().count() < MIN_PASSWORD {
            info!("in-band authorisation not started: the password is too short");
            return Outcome::Refused(format!(
                "To authorise {user} from this mail client, log in with a local password of at least {MIN_PASSWORD} characters: it will protect the account's tokens"
            ));
        }
        let from_peer = reg.pending.values().filter(|p| p.peer == req.peer).count();
        if from_peer >= MAX_PER_ADDRESS || reg.pending.len() >= MAX_PENDING {
            warn!(
                pending = reg.pending.len(),
                from_this_address = from_peer,
                "in-band authorisation not started: too many are pending"
            );
            return Outcome::Refused(
                "Too many authorisations are pending on the gateway; try again later".into(),
            );
        }
        let shared = self.store.shared().cloned();
        let shared_name = crate::accounts::shared::name_of("inband", user);
        if let Some(redis) = &shared {
            match self.pending_elsewhere(redis, &shared_name, &req).await {
                Ok(Some(outcome)) => return outcome,
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "in-band authorisation not started: the shared store cannot be reached");
                    return Outcome::Refused(
                        "The gateway cannot reach its shared store now; try again in a moment"
                            .into(),
                    );
                }
            }
        }
        let provider = req.provider.clone();
        let started = self.start(&mut reg, &req).await;
        let shared_entry = match (&shared, &started) {
            (Some(redis), Ok((text, _))) => {
                match share(redis, &shared_name, user, req.password, text).await {
                    Ok(bytes) => Some((redis.clone(), shared_name.clone(), bytes)),
                    Err(e) => {
                        let _ = redis.forget(&shared_name).await;
                        warn!(error = %e, "in-band authorisation not started: it cannot be shared with the other instances");
                        return Outcome::Refused(
                            "The gateway cannot reach its shared store now; try again in a moment"
                                .into(),
                        );
                    }
                }
            }
            (Some(redis), Err(_)) => {
                let _ = redis.forget(&shared_name).await;
                None
            }
            _ => None,
        };
        match started {
            Ok((text, flow)) => {
                reg.pending.insert(
                    user.to_owned(),
                    Pending {
                        owner: req.check,
                        peer: req.peer,
                        text: text.clone(),
                    },
                );
                info!("in-band authorisation started");
                self.finish_in_background(&req, provider, flow, shared_entry);
                Outcome::Started(text)
            }
            Err(e) => {
                warn!(error = %e, "in-band authorisation could not start");
                Outcome::Refused(e)
            }
        }
    }

    /// Where a flow of `req.user` pending on another instance stands for
    /// this attempt (`None`: there is none, and this instance now holds
    /// the fleet's reservation to start one).
    async fn pending_elsewhere(
        &self,
        redis: &RedisStore,
        name: &str,
        req: &Request<'_>,
    ) -> Result<Option<Outcome>, StoreError> {
        let starting = serde_json::to_vec(&SharedPending {
            kdf: None,
            sealed: None,
        })
        .unwrap_or_default();
        if redis.put(name, &starting, SHARED_TTL, true).await? {
            return Ok(None);
        }
        let entry: Option<SharedPending> = redis
            .get(name)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (Some(kdf), Some(sealed)) = entry.map_or((None, None), |e| (e.kdf, e.sealed)) else {
            info!("in-band authorisation pending (or starting) on another instance");
            return Ok(Some(Outcome::OtherClient));
        };
        let password = req.password.clone();
        let user = req.user.to_owned();
        let opened = self
            .argon
            .run(move || {
                let key = SealingKey::derive(&password, &kdf).ok()?;
                Sealer::named("inband", &user, key.bytes()).open(&sealed)
            })
            .await
            .ok()
            .flatten();
        Ok(Some(
            match opened.and_then(|t| String::from_utf8(t.to_vec()).ok()) {
                Some(text) => Outcome::Shown(text),
                None => {
                    info!(
                        "in-band authorisation pending from another client on another instance; not shown"
                    );
                    Outcome::OtherClient
                }
            },
        ))
    }

    /// Starts the provider's flow: its instructions and what completes it
    /// (the grant and, for a browser flow, the nonce its ID token must
    /// carry).
    async fn start(
        &self,
        reg: &mut Registry,
        req: &Request<'_>,
    ) -> Result<(String, FlowFuture), String> {
        let (user, provider) = (req.user, &req.provider);
        let started: (String, FlowFuture) = match provider.flow {
            Flow::AuthorizationCode => {
                let server = match reg.servers.get(provider.redirect_uri.as_str()) {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(
                            RedirectServer::bind(&provider.redirect_uri)
                                .await
                                .map_err(|e| e.to_string())?,
                        );
                        reg.servers
                            .insert(provider.redirect_uri.to_string(), s.clone());
                        s
                    }
                };
                let sign_in = flows::browser_request(&self.oauth, provider, &server, user)
                    .map_err(|e| e.to_string())?;
                let text = format!(
                    "To authorise {user}, open {} in a browser and sign in, then log in again",
                    sign_in.request.url
                );
                let (oauth, provider) = (self.oauth.clone(), provider.clone());
                let nonce = sign_in.request.nonce.clone();
                let fut = async move {
                    let grant =
                        flows::browser_finish(&oauth, &provider, &server, sign_in, BROWSER_TIMEOUT)
                            .await?;
                    Ok((grant, Some(nonce)))
                };
                (text, Box::pin(fut))
            }
            Flow::DeviceCode => {
                let d = self
                    .oauth
                    .start_device(provider)
                    .await
                    .map_err(|e| e.to_string())?;
                let text = format!(
                    "To authorise {user}, open {} and enter the code {}, then log in again",
                    d.verification_uri().as_str(),
                    d.user_code().secret()
                );
                let (oauth, provider) = (self.oauth.clone(), provider.clone());
                let fut = async move { Ok((oauth.poll_device(&provider, &d).await?, None)) };
                (text, Box::pin(fut))
            }
            f @ (Flow::ClientCredentials | Flow::ServiceAccount) => {
                return Err(format!("{f} accounts need no authorisation"));
            }
        };
        Ok(started)
    }

    /// Waits for the flow, checks the identity it signed in as, seals the
    /// tokens with the starting attempt's password, and forgets the flow.
    fn finish_in_background(
        &self,
        req: &Request<'_>,
        provider: Arc<Provider>,
        flow: FlowFuture,
        shared: Option<(RedisStore, String, Vec<u8>)>,
    ) {
        let store = self.store.clone();
        let registry = self.registry.clone();
        let user = req.user.to_owned();
        let upstream_user = req.upstream_user.to_owned();
        let password = req.password.clone();
        let (owner, peer) = (req.check, req.peer);
        let replaces = req.replaces.clone();
        let prover = req.prover.clone();
        let span = tracing::info_span!("in_band", user = %user);
        tokio::spawn(
            async move {
                let flow = async {
                    match &shared {
                        // The fleet's entry lives while this instance does.
                        Some((redis, name, entry)) => {
                            let beat = async {
                                loop {
                                    tokio::time::sleep(HEARTBEAT).await;
                                    if let Err(e) = redis.put(name, entry, SHARED_TTL, false).await {
                                        warn!(error = %e, "the pending authorisation could not be renewed in the shared store");
                                    }
                                }
                            };
                            tokio::select! {
                                r = flow => r,
                                () = beat => unreachable!("the heartbeat never ends"),
                            }
                        }
                        None => flow.await,
                    }
                };
                let result = async {
                    let (grant, nonce) = flow.await?;
                    let identity = crate::accounts::identity::confirm(
                        &provider,
                        &grant,
                        crate::accounts::identity::Expected {
                            user: &user,
                            upstream_user: &upstream_user,
                            nonce: nonce.as_ref(),
                        },
                        &prover,
                    )
                    .await?;
                    let (u, name) = (user.clone(), provider.name.clone());
                    let file = tokio::task::spawn_blocking(move || {
                        flows::seal_grant(&u, &name, &grant, &password)
                    })
                    .await
                    .map_err(|e| FlowError::Input(e.to_string()))??;
                    let expect = match &replaces {
                        Some(f) => Expect::Same(f),
                        None => Expect::Absent,
                    };
                    store.save(&file, expect).await?;
                    Ok::<_, FlowError>(identity)
                }
                .await;
                if let Some((redis, name, _)) = &shared {
                    let _ = redis.forget(name).await;
                }
                let mut reg = registry.lock().await;
                reg.pending.remove(&user);
                match result {
                    Ok(identity) => {
                        info!(%identity, "in-band authorisation complete; tokens stored")
                    }
                    Err(e) => {
                        warn!(error = %e, "in-band authorisation failed; nothing stored");
                        if reg.failed.len() >= MAX_PENDING {
                            reg.failed.clear();
                        }
                        let text = format!("The authorisation of {user} failed: {e}. Log in again to start a new one");
                        reg.failed.insert(user, Pending { owner, peer, text });
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Shares a started flow with the fleet: its instructions sealed under a
/// key derived from `password` (see [`SharedPending`]); the entry written.
async fn share(
    redis: &RedisStore,
    name: &str,
    user: &str,
    password: &SecretString,
    text: &str,
) -> Result<Vec<u8>, StoreError> {
    let (password, user, text) = (password.clone(), user.to_owned(), text.to_owned());
    let entry = tokio::task::spawn_blocking(move || {
        let kdf = Kdf::generate();
        let key = SealingKey::derive(&password, &kdf)?;
        let sealed = Sealer::named("inband", &user, key.bytes()).seal(text.as_bytes())?;
        serde_json::to_vec(&SharedPending {
            kdf: Some(kdf),
            sealed: Some(sealed),
        })
        .map_err(|e| StoreError::Encode {
            what: "the pending authorisation",
            reason: e.to_string(),
        })
    })
    .await
    .map_err(|e| StoreError::Encode {
        what: "the pending authorisation",
        reason: e.to_string(),
    })??;
    redis.put(name, &entry, SHARED_TTL, false).await?;
    Ok(entry)
}

/// What completes a started flow.
type FlowFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<(crate::accounts::oauth::Grant, Option<SecretString>), FlowError>,
            > + Send,
    >,
>;
