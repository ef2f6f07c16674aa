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

use super::contract::{Backend, Pending, Want};
use super::error::StoreError;
use super::record::{TokenFile, decode};

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

/// Deletes an account's file, keeping its generation. Returns 1 when there
/// was one.
const REMOVE: &str = r"
return redis.call('HDEL', KEYS[1], 'file')
";

/// A connection to the server and the prefix of every key: what the
/// store's accounts and the fleet's shared state ([`crate::accounts::fleet`])
/// both use.
#[derive(Clone)]
pub struct Connection {
    conn: ConnectionManager,
    prefix: String,
    /// The server, without a password, for messages.
    shown: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.shown)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The accounts in Redis.
#[derive(Debug, Clone)]
pub struct RedisStore {
    conn: Connection,
}

pub fn unavailable(shown: &str, action: &'static str, e: &redis::RedisError) -> StoreError {
    StoreError::Unavailable {
        action,
        store: format!("Redis at {shown}"),
        reason: e.to_string(),
    }
}

impl Connection {
    /// Connects (within `timeout`) and checks that the server answers and
    /// never evicts keys.
    pub async fn open(
        url: &SecretString,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Connection, StoreError> {
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
        Ok(Connection {
            conn,
            prefix: prefix.to_owned(),
            shown,
        })
    }

    /// The key `rest` below the prefix.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The server, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A clone of the multiplexed connection, for a task of its own.
    pub fn manager(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs a command; a failure says what could not be done.
    pub async fn query<T: redis::FromRedisValue>(
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
    pub async fn invoke<T: redis::FromRedisValue>(
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
}

impl RedisStore {
    pub fn new(conn: Connection) -> RedisStore {
        RedisStore { conn }
    }

    fn key(&self, user: &str) -> String {
        self.conn.key(&format!("account:{user}"))
    }

    /// Where an account lives, for messages.
    fn location(&self, user: &str) -> PathBuf {
        PathBuf::from(format!("Redis key {}", self.key(user)))
    }

    async fn load(&self, user: &str) -> Result<Option<TokenFile>, StoreError> {
        let key = self.key(user);
        let (file, generation): (Option<Vec<u8>>, Option<String>) = self
            .conn
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

    async fn save(&self, file: TokenFile, want: Want) -> Result<TokenFile, StoreError> {
        let (mode, expected_generation) = match want {
            Want::Absent => ("absent", 0),
            Want::Generation(g) => ("same", g),
            Want::Any => ("any", 0),
        };
        let body = serde_json::to_vec(&file).map_err(|e| StoreError::Encode {
            what: "the token file",
            reason: e.to_string(),
        })?;
        let written: i64 = self
            .conn
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
        let mut file = file;
        file.generation = written as u64;
        Ok(file)
    }

    async fn remove(&self, user: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .conn
            .invoke(
                "write to",
                &mut redis::Script::new(REMOVE).key(self.key(user)),
            )
            .await?;
        Ok(n > 0)
    }

    async fn list(&self) -> (Vec<TokenFile>, Vec<StoreError>) {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        let mut conn = self.conn.manager();
        let pattern = format!("{}account:*", glob_escape(&self.conn.prefix));
        let mut keys = Vec::new();
        match conn.scan_match::<_, String>(&pattern).await {
            Ok(mut iter) => {
                while let Some(k) = iter.next_item().await {
                    match k {
                        Ok(k) => keys.push(k),
                        Err(e) => {
                            errors.push(unavailable(&self.conn.shown, "read from", &e));
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                errors.push(unavailable(&self.conn.shown, "read from", &e));
                return (files, errors);
            }
        }
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
}

impl Backend for RedisStore {
    fn location(&self, user: &str) -> PathBuf {
        RedisStore::location(self, user)
    }

    fn load<'a>(&'a self, user: &'a str) -> Pending<'a, Option<TokenFile>> {
        Box::pin(RedisStore::load(self, user))
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
