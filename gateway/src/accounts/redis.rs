//! The Redis (or Valkey) backend of the token store (SPEC §9), shared by
//! several gateways. Each account is one hash, `{prefix}account:{user}`:
//! `file`, the same sealed token file as on disk (Redis never sees a
//! plaintext token or key), and `gen`, its generation. Writes are
//! compare-and-swap on the generation in one Lua script; removing an
//! account deletes its `file` and keeps `gen`, so that generations never
//! repeat and a cache can never mistake a new file for the one it read.

use std::path::PathBuf;
use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};

use crate::accounts::store::{Expect, StoreError, TokenFile, decode};

/// The compare-and-swap write. KEYS[1]: the account; ARGV: the mode
/// (`absent`, `same`, `any`), the expected generation, the new file.
/// Returns the new generation, or -1 when the account is not as expected.
const SAVE: &str = r"
local exists = redis.call('HEXISTS', KEYS[1], 'file') == 1
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0') or 0
if ARGV[1] == 'absent' and exists then return -1 end
if ARGV[1] == 'same' and ((not exists) or tostring(gen) ~= ARGV[2]) then return -1 end
gen = gen + 1
redis.call('HSET', KEYS[1], 'file', ARGV[3], 'gen', gen)
return gen
";

/// Renews a lease still held by ARGV[1] for ARGV[2] ms; 1 when renewed.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Releases a lease still held by ARGV[1].
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// One failed attempt for each key: a count and the time of the last one
/// (ARGV[1], ms), forgotten ARGV[2] ms after it.
const FAILED: &str = r"
for _, k in ipairs(KEYS) do
  redis.call('HINCRBY', k, 'n', 1)
  redis.call('HSET', k, 'last', ARGV[1])
  redis.call('PEXPIRE', k, ARGV[2])
end
return 1
";

/// Deletes an account's file, keeping its generation. Returns 1 when there
/// was one.
const REMOVE: &str = r"
return redis.call('HDEL', KEYS[1], 'file')
";

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    /// The server, without a password, for messages.
    shown: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.shown)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(shown: &str, action: &'static str, e: &redis::RedisError) -> StoreError {
    StoreError::Unavailable {
        action,
        store: format!("Redis at {shown}"),
        reason: e.to_string(),
    }
}

impl RedisStore {
    /// Connects (within `timeout`) and checks that the server answers.
    pub async fn connect(
        url: &SecretString,
        prefix: &str,
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        let shown = url::Url::parse(url.expose_secret())
            .map(|u| {
                format!(
                    "{}://{}:{}",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.port().unwrap_or(6379)
                )
            })
            .unwrap_or_else(|_| "the configured URL".into());
        // rediss:// uses rustls with the system's roots, like the upstream
        // connections; ring is the process's provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client =
            redis::Client::open(url.expose_secret()).map_err(|e| unavailable(&shown, "use", &e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let mut conn =
            tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| StoreError::Unavailable {
                    action: "connect to",
                    store: format!("Redis at {shown}"),
                    reason: format!("no answer within {}", humantime::format_duration(timeout)),
                })?
                .map_err(|e| unavailable(&shown, "connect to", &e))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&shown, "talk to", &e))?;
        // Accounts and short-lived data must never share an eviction fate.
        match redis::cmd("INFO")
            .arg("memory")
            .query_async::<String>(&mut conn)
            .await
        {
            Ok(info) => {
                let policy = info
                    .lines()
                    .find_map(|l| l.strip_prefix("maxmemory_policy:"))
                    .map(|p| p.trim().to_owned());
                if let Some(policy) = policy.filter(|p| p != "noeviction") {
                    return Err(StoreError::Evicting {
                        store: format!("Redis at {shown}"),
                        policy,
                    });
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot ask Redis for its maxmemory-policy (INFO memory); make sure it is noeviction"
            ),
        }
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            shown,
        })
    }

    /// Runs a command; a failure says what could not be done.
    async fn query<T: redis::FromRedisValue>(
        &self,
        action: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&self.shown, action, &e))
    }

    /// Runs a script; a failure says what could not be done.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        action: &'static str,
        script: &mut redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        script
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&self.shown, action, &e))
    }

    fn key(&self, user: &str) -> String {
        format!("{}account:{user}", self.prefix)
    }

    /// Where an account lives, for messages.
    pub fn location(&self, user: &str) -> PathBuf {
        PathBuf::from(format!("Redis key {}", self.key(user)))
    }

    pub async fn load(&self, user: &str) -> Result<Option<TokenFile>, StoreError> {
        let key = self.key(user);
        let (file, generation): (Option<Vec<u8>>, Option<String>) = self
            .query(
                "read from",
                redis::cmd("HMGET").arg(&key).arg("file").arg("gen"),
            )
            .await?;
        let Some(bytes) = file else {
            return Ok(None);
        };
        self.decode(user, &bytes, generation.as_deref()).map(Some)
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

    pub async fn save(
        &self,
        file: &TokenFile,
        expected: Expect<'_>,
    ) -> Result<TokenFile, StoreError> {
        let (mode, expected_generation) = match expected {
            Expect::Absent => ("absent", 0),
            Expect::Same(f) => ("same", f.generation),
            Expect::Any => ("any", 0),
        };
        let body = serde_json::to_vec(file).map_err(|e| StoreError::Encode {
            what: "the token file",
            reason: e.to_string(),
        })?;
        let written: i64 = self
            .invoke(
                "write to",
                redis::Script::new(SAVE)
                    .key(self.key(&file.user))
                    .arg(mode)
                    .arg(expected_generation.to_string())
                    .arg(body),
            )
            .await?;
        if written < 0 {
            return Err(StoreError::Changed {
                user: file.user.clone(),
            });
        }
        let mut file = file.clone();
        file.generation = written as u64;
        Ok(file)
    }

    /// Takes `user`'s refresh lease for `ttl` if nobody holds it: the
    /// lease's token, or `None`. While held it is renewed every third of
    /// `ttl`; an instance that dies lets it expire.
    pub async fn try_lease(
        &self,
        user: &str,
        ttl: Duration,
    ) -> Result<Option<RedisLease>, StoreError> {
        self.lease_key(format!("{}lease:{user}", self.prefix), ttl)
            .await
    }

    /// The lease of a shared blob's name (one writer in the fleet), as
    /// [`RedisStore::try_lease`].
    pub async fn try_shared_lease(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<RedisLease>, StoreError> {
        self.lease_key(format!("{}shared-lease:{name}", self.prefix), ttl)
            .await
    }

    async fn lease_key(
        &self,
        key: String,
        ttl: Duration,
    ) -> Result<Option<RedisLease>, StoreError> {
        let token = crate::portal::sessions::random_token();
        let ms = ttl.as_millis().max(1) as u64;
        let set: Option<String> = self
            .query(
                "write to",
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms),
            )
            .await?;
        if set.is_none() {
            return Ok(None);
        }
        let (k, t, mut c) = (key.clone(), token.clone(), self.conn.clone());
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let renewed: redis::RedisResult<i64> = redis::Script::new(RENEW)
                    .key(&k)
                    .arg(&t)
                    .arg(ms)
                    .invoke_async(&mut c)
                    .await;
                if !matches!(renewed, Ok(1)) {
                    tracing::warn!(
                        "the refresh lease could not be renewed; another instance may take over"
                    );
                    return;
                }
            }
        });
        Ok(Some(RedisLease {
            conn: self.conn.clone(),
            key,
            token,
            renewal,
        }))
    }

    /// The fleet's backoff keys of a user (hashed; its failures from
    /// familiar addresses apart, see [`crate::accounts::backoff`]) and of
    /// an address.
    fn backoff_keys(&self, user: &str, addr: std::net::IpAddr, familiar: bool) -> [String; 2] {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(user.as_bytes());
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        let class = if familiar { ":familiar" } else { "" };
        [
            format!("{}backoff:user:{hex}{class}", self.prefix),
            format!("{}backoff:addr:{}", self.prefix, addr.to_canonical()),
        ]
    }

    /// Records a failed attempt for the whole fleet.
    pub async fn backoff_failure(
        &self,
        user: &str,
        addr: std::net::IpAddr,
        familiar: bool,
    ) -> Result<(), StoreError> {
        let [u, a] = self.backoff_keys(user, addr, familiar);
        let _: i64 = self
            .invoke(
                "write to",
                redis::Script::new(FAILED)
                    .key(u)
                    .key(a)
                    .arg(crate::accounts::store::now_ms())
                    .arg(crate::accounts::backoff::FORGET.as_millis() as u64),
            )
            .await?;
        Ok(())
    }

    /// Clears the counters of a success's class and address.
    pub async fn backoff_success(
        &self,
        user: &str,
        addr: std::net::IpAddr,
        familiar: bool,
    ) -> Result<(), StoreError> {
        let [u, a] = self.backoff_keys(user, addr, familiar);
        let _: i64 = self
            .query("write to", redis::cmd("DEL").arg(u).arg(a))
            .await?;
        Ok(())
    }

    /// How much longer an attempt is held back, counting the failures of
    /// every instance (a familiar address: by its class's failures only).
    pub async fn backoff_locked(
        &self,
        user: &str,
        addr: std::net::IpAddr,
        familiar: bool,
    ) -> Result<Duration, StoreError> {
        let now = crate::accounts::store::now_ms();
        let mut longest = Duration::ZERO;
        let keys = self.backoff_keys(user, addr, familiar);
        let held = if familiar { &keys[..1] } else { &keys[..] };
        for k in held {
            let (n, last): (Option<u32>, Option<u64>) = self
                .query("read from", redis::cmd("HMGET").arg(k).arg("n").arg("last"))
                .await?;
            if let (Some(n), Some(last)) = (n, last) {
                let since = Duration::from_millis(now.saturating_sub(last));
                longest = longest.max(crate::accounts::backoff::delay_for(n).saturating_sub(since));
            }
        }
        Ok(longest)
    }

    fn shared_key(&self, name: &str) -> String {
        format!("{}shared:{name}", self.prefix)
    }

    /// Stores a shared blob (see [`crate::accounts::shared`]) for `ttl`;
    /// with `only_new`, only when none has that name. Whether it was stored.
    pub async fn put(
        &self,
        name: &str,
        value: &[u8],
        ttl: Duration,
        only_new: bool,
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.shared_key(name))
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        if only_new {
            cmd.arg("NX");
        }
        let set: Option<String> = self.query("write to", &cmd).await?;
        Ok(set.is_some())
    }

    /// A shared blob, if there is one.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query("read from", redis::cmd("GET").arg(self.shared_key(name)))
            .await
    }

    /// A shared blob, deleted as it is read (only one reader gets it).
    pub async fn take(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query("read from", redis::cmd("GETDEL").arg(self.shared_key(name)))
            .await
    }

    /// Deletes a shared blob.
    pub async fn forget(&self, name: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .query("write to", redis::cmd("DEL").arg(self.shared_key(name)))
            .await?;
        Ok(())
    }

    pub async fn remove(&self, user: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .invoke(
                "write to",
                &mut redis::Script::new(REMOVE).key(self.key(user)),
            )
            .await?;
        Ok(n > 0)
    }

    pub async fn list(&self) -> (Vec<TokenFile>, Vec<StoreError>) {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        let mut conn = self.conn.clone();
        let pattern = format!("{}account:*", glob_escape(&self.prefix));
        let mut keys = Vec::new();
        match conn.scan_match::<_, String>(&pattern).await {
            Ok(mut iter) => {
                while let Some(k) = iter.next_item().await {
                    match k {
                        Ok(k) => keys.push(k),
                        Err(e) => {
                            errors.push(unavailable(&self.shown, "read from", &e));
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                errors.push(unavailable(&self.shown, "read from", &e));
                return (files, errors);
            }
        }
        let start = format!("{}account:", self.prefix);
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
}

/// A held refresh lease.
#[derive(Debug)]
pub struct RedisLease {
    conn: ConnectionManager,
    key: String,
    token: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl RedisLease {
    /// Gives the lease up (if still ours).
    pub async fn release(self) {
        self.renewal.abort();
        let mut conn = self.conn.clone();
        let _: redis::RedisResult<i64> = redis::Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut conn)
            .await;
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        // Not released (a panic, a cancelled login): it expires by itself.
        self.renewal.abort();
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
