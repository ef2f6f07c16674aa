//! The Redis (or Valkey) backend of the token store (SPEC §9), shared by
//! several gateways. Each account is one hash, `{prefix}account:{user}`:
//! `file`, the same sealed token file as on disk (Redis never sees a
//! plaintext token or key), and `gen`, its generation. Writes are
//! compare-and-swap on the generation in one Lua script; removing an
//! account deletes its `file` and keeps `gen`, so that generations never
//! repeat and a cache can never mistake a new file for the one it read.
//!
//! No token lost in a failover (replication is asynchronous):
//! - a write waits (`WAIT`, `wait_replicas` within `wait_timeout`) until a
//!   replica has it, before the login that refreshed goes on; a write no
//!   replica acknowledged in time is logged and counted, and the login
//!   goes on with the tokens it holds;
//! - the instance keeps the newest record it wrote of each account. A
//!   store whose generation is below it (the primary that had it died
//!   before a replica got it) is repaired from memory, never trusted over
//!   it: at once when the primary changes, and at any read that sees it.
//!   The repair writes the record back with its own generation.
//!
//! Reads go through a cache kept true by Redis ([`super::tracking`]): a
//! change by another process counts once Redis's invalidation has arrived
//! (it leaves Redis with the change's own reply; the next login after
//! that, give or take the network's delay, sees it). The reads a refresh
//! decides on ([`Backend::load_fresh`]) never come from the cache.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands as _;

pub use super::connection::{Connection, ask_sentinels, unavailable};
use super::contract::{Backend, Figures, Pending, Want};
use super::error::StoreError;
use super::record::{TokenFile, decode};
use super::tracking::Raw;

/// The compare-and-swap write. KEYS[1]: the account; ARGV: the mode
/// (`absent`, `same`, `any`), the expected generation, the new file, the
/// lowest generation to give it (a repair restores its own; else 0).
/// Returns the new generation, or -1 when the account is not as expected.
const SAVE: &str = r"
local exists = redis.call('HEXISTS', KEYS[1], 'file') == 1
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0') or 0
if ARGV[1] == 'absent' and exists then return -1 end
if ARGV[1] == 'same' and ((not exists) or tostring(gen) ~= ARGV[2]) then return -1 end
gen = math.max(gen + 1, tonumber(ARGV[4]) or 0)
redis.call('HSET', KEYS[1], 'file', ARGV[3], 'gen', gen)
return gen
";

/// Deletes an account's file, keeping its generation. Returns 1 when there
/// was one.
const REMOVE: &str = r"
return redis.call('HDEL', KEYS[1], 'file')
";

/// The accounts in Redis.
#[derive(Debug, Clone)]
pub struct RedisStore {
    conn: Connection,
    /// The newest record this instance wrote of each account: what a store
    /// that lost it in a failover is repaired with.
    written: Arc<Mutex<HashMap<String, TokenFile>>>,
    /// Replicas a write waits for, and for how long at most.
    wait: (u32, Duration),
}

fn hmget(key: &str) -> redis::Cmd {
    let mut c = redis::cmd("HMGET");
    c.arg(key).arg("file").arg("gen");
    c
}

impl RedisStore {
    /// The store on `conn`; each write waits for `wait_replicas` replicas
    /// at most `wait_timeout`.
    pub fn new(conn: Connection, wait_replicas: u32, wait_timeout: Duration) -> RedisStore {
        let store = RedisStore {
            conn,
            written: Arc::default(),
            wait: (wait_replicas, wait_timeout),
        };
        tokio::spawn(repair_on_failover(store.clone()));
        store
    }

    fn key(&self, user: &str) -> String {
        self.conn.key(&format!("account:{user}"))
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, HashMap<String, TokenFile>> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where an account lives, for messages.
    fn location(&self, user: &str) -> PathBuf {
        PathBuf::from(format!("Redis key {}", self.key(user)))
    }

    async fn load(&self, user: &str) -> Result<Option<TokenFile>, StoreError> {
        let key = self.key(user);
        let primary = self.conn.primary();
        let raw = match primary.records.get(&key) {
            Some(raw) => raw,
            None => match primary.records.begin(&key).await {
                Some(mut reading) => {
                    match hmget(&key).query_async::<Raw>(&mut reading.conn).await {
                        Ok(raw) => {
                            primary.records.keep(&key, reading, &raw);
                            raw
                        }
                        Err(_) => {
                            primary.records.failed(reading);
                            self.conn.query("read from", &hmget(&key)).await?
                        }
                    }
                }
                None => self.conn.query("read from", &hmget(&key)).await?,
            },
        };
        self.checked(user, raw).await
    }

    /// The record in `raw`, unless this instance wrote a newer one: then
    /// the store is repaired with it.
    async fn checked(&self, user: &str, raw: Raw) -> Result<Option<TokenFile>, StoreError> {
        let (file, generation) = raw;
        let stored = generation
            .as_deref()
            .and_then(|g| g.parse::<u64>().ok())
            .unwrap_or(0);
        let mine = self.mine().get(user).cloned();
        if let Some(mine) = mine {
            if stored < mine.generation {
                return self.repair(user, mine, file.is_some(), stored).await;
            }
            if stored > mine.generation {
                // Another writer's newer record: nothing of ours to keep.
                self.mine().remove(user);
            }
        }
        self.plain(user, (file, generation))
    }

    /// The record in `raw`, as it is.
    fn plain(&self, user: &str, raw: Raw) -> Result<Option<TokenFile>, StoreError> {
        match raw {
            (None, _) => Ok(None),
            (Some(bytes), generation) => self.decode(user, &bytes, generation.as_deref()).map(Some),
        }
    }

    /// Writes back the newest record this instance wrote, over a store that
    /// went back to generation `stored`.
    async fn repair(
        &self,
        user: &str,
        mine: TokenFile,
        exists: bool,
        stored: u64,
    ) -> Result<Option<TokenFile>, StoreError> {
        let want = if exists {
            Want::Generation(stored)
        } else {
            Want::Absent
        };
        let floor = mine.generation;
        match self.write(mine, want, floor).await {
            Ok(file) => {
                self.conn.counts().repairs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    user,
                    store_generation = stored,
                    written = file.generation,
                    "the store had lost the newest record of this account (a failover before a replica had it); written back from this instance's memory"
                );
                self.wait_for_replicas(user).await;
                Ok(Some(file))
            }
            Err(StoreError::Changed { .. }) => {
                // Someone wrote in between: read what is there now.
                let raw = self
                    .conn
                    .query("read from", &hmget(&self.key(user)))
                    .await?;
                self.plain(user, raw)
            }
            Err(e) => Err(e),
        }
    }

    fn decode(
        &self,
        user: &str,
        bytes: &[u8],
        generation: Option<&str>,
    ) -> Result<TokenFile, StoreError> {
        let at = self.location(user);
        let mut file = decode(bytes, &at)?;
        file.generation =
            generation
                .and_then(|g| g.parse().ok())
                .ok_or_else(|| StoreError::Corrupt {
                    path: at.clone(),
                    reason: "its generation is missing".into(),
                })?;
        if file.user != user {
            return Err(StoreError::Corrupt {
                path: at,
                reason: "it is another account's".into(),
            });
        }
        Ok(file)
    }

    async fn save(&self, file: TokenFile, want: Want) -> Result<TokenFile, StoreError> {
        let user = file.user.clone();
        let written = self.write(file, want, 0).await?;
        self.mine().insert(user.clone(), written.clone());
        self.wait_for_replicas(&user).await;
        Ok(written)
    }

    /// The compare-and-swap write, on the connection that writes records.
    async fn write(
        &self,
        file: TokenFile,
        want: Want,
        floor: u64,
    ) -> Result<TokenFile, StoreError> {
        let (mode, expected_generation) = match want {
            Want::Absent => ("absent", 0),
            Want::Generation(g) => ("same", g),
            Want::Any => ("any", 0),
        };
        let body = serde_json::to_vec(&file).map_err(|e| StoreError::Encode {
            what: "the token file",
            reason: e.to_string(),
        })?;
        let key = self.key(&file.user);
        self.conn.primary().records.forget(&key);
        let script = redis::Script::new(SAVE);
        let mut invocation = script.key(&key);
        invocation
            .arg(mode)
            .arg(expected_generation.to_string())
            .arg(body)
            .arg(floor.to_string());
        let written: i64 = self
            .conn
            .run_writer("write to", |mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        if written < 0 {
            return Err(StoreError::Changed {
                user: file.user.clone(),
            });
        }
        let mut file = file;
        file.generation = written as u64;
        Ok(file)
    }

    /// `WAIT` for the configured replicas after a write on the same
    /// connection; the login goes on either way.
    async fn wait_for_replicas(&self, user: &str) {
        let (replicas, timeout) = self.wait;
        if replicas == 0 {
            return;
        }
        let ms = timeout.as_millis().max(1) as u64;
        let acked: Result<i64, _> = self
            .conn
            .run_writer("write to", |mut c| async move {
                redis::cmd("WAIT")
                    .arg(replicas)
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await;
        match acked {
            Ok(n) if n >= i64::from(replicas) => {}
            Ok(n) => {
                self.conn
                    .counts()
                    .unreplicated
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    user,
                    acknowledged = n,
                    wanted = replicas,
                    "a replica did not acknowledge this account's new record in time; until one does, only this instance and the primary hold it"
                );
            }
            Err(e) => tracing::warn!(user, error = %e, "cannot wait for a replica"),
        }
    }

    async fn remove(&self, user: &str) -> Result<bool, StoreError> {
        let key = self.key(user);
        self.conn.primary().records.forget(&key);
        self.mine().remove(user);
        let n: i64 = self
            .conn
            .invoke("write to", &redis::Script::new(REMOVE).key(&key))
            .await?;
        Ok(n > 0)
    }

    async fn list(&self) -> (Vec<TokenFile>, Vec<StoreError>) {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        let pattern = format!("{}account:*", glob_escape(self.conn.prefix()));
        let keys = self
            .conn
            .run("read from", |mut c| {
                let pattern = pattern.clone();
                async move {
                    let mut keys = Vec::new();
                    let mut iter = c.scan_match::<_, String>(&pattern).await?;
                    while let Some(k) = iter.next_item().await {
                        keys.push(k?);
                    }
                    Ok(keys)
                }
            })
            .await;
        let keys = match keys {
            Ok(k) => k,
            Err(e) => {
                errors.push(e);
                return (files, errors);
            }
        };
        let start = self.conn.key("account:");
        for key in keys {
            let Some(user) = key.strip_prefix(&start) else {
                continue;
            };
            match self.load(user).await {
                Ok(Some(f)) => files.push(f),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        files.sort_by(|a, b| a.user.cmp(&b.user));
        (files, errors)
    }

    /// Repairs, from memory, every account whose newest record this
    /// instance wrote and the store no longer has.
    async fn repair_all(&self) {
        let users: Vec<String> = self.mine().keys().cloned().collect();
        for user in users {
            let key = self.key(&user);
            match self.conn.query::<Raw>("read from", &hmget(&key)).await {
                Ok(raw) => {
                    if let Err(e) = self.checked(&user, raw).await {
                        tracing::warn!(user, error = %e, "cannot repair the store after a failover");
                    }
                }
                Err(e) => {
                    tracing::warn!(user, error = %e, "cannot repair the store after a failover")
                }
            }
        }
    }
}

/// After each change of primary, repairs what the failover lost. Ends when
/// the store is dropped.
async fn repair_on_failover(store: RedisStore) {
    let mut switches = store.conn.switches();
    let written = Arc::downgrade(&store.written);
    let (conn, wait) = (store.conn.downgrade(), store.wait);
    drop(store);
    while switches.changed().await.is_ok() {
        let (Some(written), Some(conn)) = (written.upgrade(), conn.upgrade()) else {
            return;
        };
        let store = RedisStore {
            conn,
            written,
            wait,
        };
        store.repair_all().await;
    }
}

impl Backend for RedisStore {
    fn location(&self, user: &str) -> PathBuf {
        RedisStore::location(self, user)
    }

    fn load<'a>(&'a self, user: &'a str) -> Pending<'a, Option<TokenFile>> {
        Box::pin(RedisStore::load(self, user))
    }

    fn load_fresh<'a>(&'a self, user: &'a str) -> Pending<'a, Option<TokenFile>> {
        Box::pin(async move {
            let raw = self
                .conn
                .query("read from", &hmget(&self.key(user)))
                .await?;
            self.checked(user, raw).await
        })
    }

    fn save<'a>(&'a self, file: TokenFile, want: Want) -> Pending<'a, TokenFile> {
        Box::pin(RedisStore::save(self, file, want))
    }

    fn remove<'a>(&'a self, user: &'a str) -> Pending<'a, bool> {
        Box::pin(RedisStore::remove(self, user))
    }

    fn list(&self) -> Pending<'_, (Vec<TokenFile>, Vec<StoreError>)> {
        Box::pin(async move { Ok(RedisStore::list(self).await) })
    }

    fn figures(&self) -> Option<Figures> {
        let c = self.conn.counts();
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Some(Figures {
            failovers: n(&c.failovers),
            cache_hits: n(&c.cache_hits),
            cache_misses: n(&c.cache_misses),
            invalidations: n(&c.invalidations),
            repairs: n(&c.repairs),
            unreplicated: n(&c.unreplicated),
            unreachable: c
                .unreachable
                .load(Ordering::Relaxed)
                .then(|| self.conn.shown()),
        })
    }
}

/// `s` with Redis glob characters escaped, for SCAN MATCH.
fn glob_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(super::glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
