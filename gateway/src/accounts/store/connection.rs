//! The connection to the store's Redis: to the server at `url`, or to the
//! primary that `sentinels` name (SPEC §9). With sentinels it follows a
//! failover: a command that fails for want of the primary (refused, dropped,
//! timed out, `READONLY` from a demoted one) asks the sentinels again
//! (the crate's `SentinelClient`, which also checks that the server it
//! names says `ROLE` master) and is sent once more to the new primary; a
//! watch asks the primary its `ROLE` every second, so that a quiet gateway
//! follows too, also from a primary demoted while alive. Each primary gets its own record cache ([`super::tracking`]): a
//! failover drops the old one whole. Writes of account records go through
//! a connection of their own, so that their `WAIT` for a replica holds up
//! nothing else.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::RedisError;
use redis::aio::ConnectionManager;

pub use super::counts::Counts;
use super::error::StoreError;
use super::primary::{Primary, Target, connect, describe, lost_primary, says_primary};
pub use super::primary::{ask_sentinels, unavailable};

/// A connection to the store's server and the prefix of every key: what
/// the store's accounts and the fleet's shared state
/// ([`crate::accounts::fleet`]) both use. Clones share everything.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

/// A [`Connection`] that does not keep it open.
#[derive(Clone)]
pub struct WeakConnection(Weak<Inner>);

impl std::fmt::Debug for WeakConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakConnection").finish_non_exhaustive()
    }
}

impl WeakConnection {
    /// The connection, while it is open.
    pub fn upgrade(&self) -> Option<Connection> {
        self.0.upgrade().map(|inner| Connection { inner })
    }
}

struct Inner {
    prefix: String,
    timeout: Duration,
    target: Target,
    current: RwLock<Arc<Primary>>,
    /// One failover followed at a time.
    following: tokio::sync::Mutex<()>,
    /// The last time following failed (the epoch it started from, when,
    /// and the error): the tasks that waited for it fail at once instead
    /// of each waiting out another timeout.
    given_up: std::sync::Mutex<Option<(u64, tokio::time::Instant, String)>>,
    counts: Arc<Counts>,
    /// Told the new epoch after each change of primary.
    switched: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.shown())
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects (within `timeout`) to the server or to the primary the
    /// sentinels name, and checks that it answers and never evicts keys.
    pub async fn open(
        config: &mailgate_config::Redis,
        timeout: Duration,
    ) -> Result<Connection, StoreError> {
        // rediss:// uses rustls with the system's roots, like the upstream
        // connections; ring is the process's provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let target = Target::new(config)?;
        let counts = Arc::new(Counts::default());
        let first = tokio::time::timeout(timeout, connect(&target, 0, timeout, &counts))
            .await
            .map_err(|_| StoreError::Unavailable {
                action: "connect to",
                store: describe(&target, None),
                reason: format!("no answer within {}", humantime::format_duration(timeout)),
            })??;
        let inner = Arc::new(Inner {
            prefix: config.prefix.clone(),
            timeout,
            target,
            current: RwLock::new(Arc::new(first)),
            following: tokio::sync::Mutex::new(()),
            given_up: std::sync::Mutex::new(None),
            counts,
            switched: tokio::sync::watch::channel(0).0,
        });
        tokio::spawn(watch(Arc::downgrade(&inner)));
        Ok(Connection { inner })
    }

    /// A handle that does not keep the connection open (for tasks that
    /// end with it).
    pub fn downgrade(&self) -> WeakConnection {
        WeakConnection(Arc::downgrade(&self.inner))
    }

    /// The key `rest` below the prefix.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.inner.prefix)
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The server (or the primary and the sentinels that name it), for
    /// messages.
    pub fn shown(&self) -> String {
        describe(&self.inner.target, Some(&self.primary().address))
    }

    /// The primary in use now.
    pub fn primary(&self) -> Arc<Primary> {
        self.inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn counts(&self) -> &Arc<Counts> {
        &self.inner.counts
    }

    /// Told the new epoch whenever the primary changes.
    pub fn switches(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.switched.subscribe()
    }

    /// Runs `f` on the primary's shared connection; with sentinels, once
    /// more on the new primary when the first one was lost.
    pub async fn run<T, F, Fut>(&self, action: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_on(action, |p| f(p.conn.clone())).await
    }

    /// As [`Connection::run`], on the connection that writes account
    /// records.
    pub async fn run_writer<T, F, Fut>(&self, action: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_on(action, |p| f(p.writer.clone())).await
    }

    async fn run_on<T, F, Fut>(&self, action: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Fn(&Primary) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let p = self.primary();
        let e = match f(&p).await {
            Ok(v) => {
                self.inner
                    .counts
                    .unreachable
                    .store(false, Ordering::Relaxed);
                return Ok(v);
            }
            Err(e) => e,
        };
        if self.inner.target.follows()
            && lost_primary(&e)
            && let Ok(next) = self.follow(p.epoch).await
        {
            return match f(&next).await {
                Ok(v) => {
                    self.inner
                        .counts
                        .unreachable
                        .store(false, Ordering::Relaxed);
                    Ok(v)
                }
                Err(e) => Err(self.failed(action, &e)),
            };
        }
        Err(self.failed(action, &e))
    }

    fn failed(&self, action: &'static str, e: &RedisError) -> StoreError {
        if lost_primary(e) {
            self.inner.counts.unreachable.store(true, Ordering::Relaxed);
        }
        unavailable(&self.shown(), action, e)
    }

    /// Runs a command; a failure says what could not be done.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        action: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.run(action, |mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Runs a script; a failure says what could not be done.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        action: &'static str,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.run(
            action,
            |mut c| async move { script.invoke_async(&mut c).await },
        )
        .await
    }

    /// Asks the sentinels for the primary again, unless another task has
    /// already done so since epoch `seen`; keeps asking within the
    /// timeout while a failover is under way.
    async fn follow(&self, seen: u64) -> Result<Arc<Primary>, StoreError> {
        let _one = self.inner.following.lock().await;
        let current = self.primary();
        if current.epoch != seen {
            return Ok(current);
        }
        if let Some((epoch, at, e)) = self
            .inner
            .given_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            && *epoch == seen
            && at.elapsed() < Duration::from_secs(1)
        {
            return Err(StoreError::Unavailable {
                action: "find",
                store: describe(&self.inner.target, None),
                reason: e.clone(),
            });
        }
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        let next = loop {
            match connect(
                &self.inner.target,
                seen + 1,
                self.inner.timeout,
                &self.inner.counts,
            )
            .await
            {
                Ok(p) => break p,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    self.inner.counts.unreachable.store(true, Ordering::Relaxed);
                    *self
                        .inner
                        .given_up
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((
                        seen,
                        tokio::time::Instant::now(),
                        match &e {
                            StoreError::Unavailable { reason, .. } => reason.clone(),
                            other => other.to_string(),
                        },
                    ));
                    return Err(e);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no primary to follow yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        if next.address != current.address {
            self.inner.counts.failovers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                from = %current.address,
                to = %next.address,
                "the store's primary changed; following it (its record cache starts empty)"
            );
        }
        let next = Arc::new(next);
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next.clone();
        self.inner
            .counts
            .unreachable
            .store(false, Ordering::Relaxed);
        self.inner.switched.send_replace(next.epoch);
        Ok(next)
    }
}

/// Every second: a PING to the server (so that `/healthz` notices a lost
/// one), or with sentinels a `ROLE` (so that a quiet gateway notices a lost
/// primary, or one demoted to a replica while alive, and follows); and
/// the cache's pending invalidations applied. Ends with the connection.
async fn watch(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let conn = Connection { inner };
        let primary = conn.primary();
        primary.records.settle();
        if conn.inner.target.follows() {
            let role: Result<Vec<redis::Value>, _> =
                conn.query("talk to", &redis::cmd("ROLE")).await;
            if role.is_ok_and(|r| !says_primary(&r)) {
                let _ = conn.follow(primary.epoch).await;
            }
        } else {
            let ping = redis::cmd("PING");
            let _: Result<String, _> = conn.query("talk to", &ping).await;
        }
    }
}
