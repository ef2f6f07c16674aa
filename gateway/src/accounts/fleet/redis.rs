//! The fleet in Redis: leases (`{prefix}lease:{name}`, a random owner
//! token with an expiry, renewed while held), backoff counters (hashes
//! named by a hash of the user, and by the address) and sealed blobs
//! (`{prefix}shared:{name}`; see [`super::sealed`]).

use std::net::IpAddr;
use std::time::Duration;

use super::contract::{FleetBackend, Held, Lease, Pending};
use crate::accounts::store::error::StoreError;
use crate::accounts::store::redis::Connection;

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

#[derive(Debug, Clone)]
pub struct RedisFleet {
    conn: Connection,
}

impl RedisFleet {
    pub fn new(conn: Connection) -> RedisFleet {
        RedisFleet { conn }
    }

    /// Takes the lease `name` for `ttl` if nobody holds it. While held it
    /// is renewed every third of `ttl`; an instance that dies lets it
    /// expire.
    async fn lease(&self, name: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let key = self.conn.key(&format!("lease:{name}"));
        let token = crate::accounts::random::random_token();
        let ms = ttl.as_millis().max(1) as u64;
        let set: Option<String> = self
            .conn
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
        let (k, t, c) = (key.clone(), token.clone(), self.conn.clone());
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let renewed: Result<i64, _> = c
                    .invoke(
                        "write to",
                        redis::Script::new(RENEW).key(&k).arg(&t).arg(ms),
                    )
                    .await;
                if !matches!(renewed, Ok(1)) {
                    tracing::warn!("a lease could not be renewed; another instance may take over");
                    return;
                }
            }
        });
        Ok(Some(Lease::held(RedisLease {
            conn: self.conn.clone(),
            key,
            token,
            renewal,
        })))
    }

    /// The fleet's backoff keys of a user (hashed; its failures from
    /// familiar addresses apart, see [`crate::accounts::backoff`]) and of
    /// an address.
    fn backoff_keys(&self, user: &str, addr: IpAddr, familiar: bool) -> [String; 2] {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(user.as_bytes());
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        let class = if familiar { ":familiar" } else { "" };
        [
            self.conn.key(&format!("backoff:user:{hex}{class}")),
            self.conn
                .key(&format!("backoff:addr:{}", addr.to_canonical())),
        ]
    }

    async fn locked_for(
        &self,
        user: &str,
        addr: IpAddr,
        familiar: bool,
    ) -> Result<Duration, StoreError> {
        let now = crate::accounts::store::error::now_ms();
        let mut longest = Duration::ZERO;
        let keys = self.backoff_keys(user, addr, familiar);
        let held = if familiar { &keys[..1] } else { &keys[..] };
        for k in held {
            let (n, last): (Option<u32>, Option<u64>) = self
                .conn
                .query("read from", redis::cmd("HMGET").arg(k).arg("n").arg("last"))
                .await?;
            if let (Some(n), Some(last)) = (n, last) {
                let since = Duration::from_millis(now.saturating_sub(last));
                longest = longest.max(crate::accounts::backoff::delay_for(n).saturating_sub(since));
            }
        }
        Ok(longest)
    }
}

impl FleetBackend for RedisFleet {
    fn shared(&self) -> bool {
        true
    }

    fn try_lease<'a>(&'a self, name: &'a str, ttl: Duration) -> Pending<'a, Option<Lease>> {
        Box::pin(self.lease(name, ttl))
    }

    fn failure<'a>(&'a self, user: &'a str, addr: IpAddr, familiar: bool) -> Pending<'a, ()> {
        Box::pin(async move {
            let [u, a] = self.backoff_keys(user, addr, familiar);
            let _: i64 = self
                .conn
                .invoke(
                    "write to",
                    redis::Script::new(FAILED)
                        .key(u)
                        .key(a)
                        .arg(crate::accounts::store::error::now_ms())
                        .arg(crate::accounts::backoff::FORGET.as_millis() as u64),
                )
                .await?;
            Ok(())
        })
    }

    fn success<'a>(&'a self, user: &'a str, addr: IpAddr, familiar: bool) -> Pending<'a, ()> {
        Box::pin(async move {
            let [u, a] = self.backoff_keys(user, addr, familiar);
            let _: i64 = self
                .conn
                .query("write to", redis::cmd("DEL").arg(u).arg(a))
                .await?;
            Ok(())
        })
    }

    fn locked<'a>(&'a self, user: &'a str, addr: IpAddr, familiar: bool) -> Pending<'a, Duration> {
        Box::pin(self.locked_for(user, addr, familiar))
    }

    fn put<'a>(
        &'a self,
        name: &'a str,
        value: Vec<u8>,
        ttl: Duration,
        only_new: bool,
    ) -> Pending<'a, bool> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.conn.key(&format!("shared:{name}")))
                .arg(value)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            if only_new {
                cmd.arg("NX");
            }
            let set: Option<String> = self.conn.query("write to", &cmd).await?;
            Ok(set.is_some())
        })
    }

    fn get<'a>(&'a self, name: &'a str, take: bool) -> Pending<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let verb = if take { "GETDEL" } else { "GET" };
            self.conn
                .query(
                    "read from",
                    redis::cmd(verb).arg(self.conn.key(&format!("shared:{name}"))),
                )
                .await
        })
    }

    fn forget<'a>(&'a self, name: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            let _: i64 = self
                .conn
                .query(
                    "write to",
                    redis::cmd("DEL").arg(self.conn.key(&format!("shared:{name}"))),
                )
                .await?;
            Ok(())
        })
    }
}

/// A held lease.
struct RedisLease {
    conn: Connection,
    key: String,
    token: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl Held for RedisLease {
    /// Gives the lease up (if still ours).
    fn release(self: Box<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.renewal.abort();
            let _: Result<i64, _> = self
                .conn
                .invoke(
                    "write to",
                    redis::Script::new(RELEASE).key(&self.key).arg(&self.token),
                )
                .await;
        })
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        // Not released (a panic, a cancelled login): it expires by itself.
        self.renewal.abort();
    }
}
