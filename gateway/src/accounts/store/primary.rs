//! The store's Redis server as [`super::connection`] uses it: the target
//! (the server at `url`, or the primary that `sentinels` name), one
//! connected primary with what is bound to it, and the counts.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{IntoConnectionInfo as _, ProtocolVersion, RedisError};
use secrecy::ExposeSecret;

use super::counts::Counts;
use super::error::StoreError;
use super::tracking::Records;

pub enum Target {
    /// `url`, and how it is shown (without its password).
    Direct(redis::Client, String),
    /// `sentinels` (a client for each: a sentinel that has not yet learnt
    /// of a failover must not hide one that has) and `service`.
    Sentinel {
        clients: Vec<tokio::sync::Mutex<SentinelClient>>,
        service: String,
        listed: String,
    },
}

impl Target {
    /// What `config` says to connect to.
    pub fn new(config: &mailgate_config::Redis) -> Result<Target, StoreError> {
        let url = config.url.expose_secret();
        let shown_url = shown(url);
        let client = redis::Client::open(url).map_err(|e| unavailable(&shown_url, "use", &e))?;
        let target = match &config.sentinels {
            None => Target::Direct(client, shown_url.clone()),
            Some(s) => {
                let node = client.get_connection_info();
                let mut info = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(node.redis_settings().clone());
                if matches!(node.addr(), redis::ConnectionAddr::TcpTls { .. }) {
                    info = info.set_tls_mode(redis::TlsMode::Secure);
                }
                let listed: Vec<String> = s.urls.iter().map(|u| shown(u.expose_secret())).collect();
                let clients = s
                    .urls
                    .iter()
                    .map(|u| {
                        let one = vec![u.expose_secret().into_connection_info()?];
                        SentinelClient::build(
                            one,
                            &s.service,
                            Some(info.clone()),
                            SentinelServerType::Master,
                        )
                        .map(tokio::sync::Mutex::new)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| unavailable("the sentinels", "use", &e))?;
                Target::Sentinel {
                    clients,
                    service: s.service.clone(),
                    listed: listed.join(", "),
                }
            }
        };
        Ok(target)
    }

    /// Whether the sentinels name the primary.
    pub fn follows(&self) -> bool {
        matches!(self, Target::Sentinel { .. })
    }
}

/// The primary in use, and what is bound to it.
pub struct Primary {
    /// Counts the primaries this process has used.
    pub epoch: u64,
    /// `host:port`, for messages.
    pub address: String,
    pub conn: ConnectionManager,
    /// Account records: their writes and the `WAIT` after them.
    pub writer: ConnectionManager,
    /// The cache of account records read from this primary.
    pub records: Records,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary")
            .field("epoch", &self.epoch)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

pub fn unavailable(shown: &str, action: &'static str, e: &RedisError) -> StoreError {
    StoreError::Unavailable {
        action,
        store: format!("Redis at {shown}"),
        reason: e.to_string(),
    }
}

/// Whether `e` may mean that the server is no longer (or not) the primary.
pub fn lost_primary(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.code() == Some("READONLY")
        || e.code() == Some("MASTERDOWN")
}

/// `host:port` of a client, for messages (never its password).
fn address_of(client: &redis::Client) -> String {
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(h, p)
        | redis::ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            format!("{h}:{p}")
        }
        other => other.to_string(),
    }
}

/// The same client speaking RESP3 (for the cache's invalidations).
fn resp3(client: &redis::Client) -> Result<redis::Client, RedisError> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

/// A URL without its password.
fn shown(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| {
            format!(
                "{}://{}:{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port().unwrap_or(6379)
            )
        })
        .unwrap_or_else(|_| "the configured URL".into())
}

pub fn describe(target: &Target, address: Option<&str>) -> String {
    match (target, address) {
        (Target::Direct(_, shown), _) => shown.clone(),
        (
            Target::Sentinel {
                service, listed, ..
            },
            Some(a),
        ) => {
            format!("{a}, the primary of {service:?} (sentinels {listed})")
        }
        (
            Target::Sentinel {
                service, listed, ..
            },
            None,
        ) => {
            format!("the primary of {service:?} (sentinels {listed})")
        }
    }
}

/// Connects to the server or to the primary the sentinels name now.
pub async fn connect(
    target: &Target,
    epoch: u64,
    timeout: Duration,
    counts: &Arc<Counts>,
) -> Result<Primary, StoreError> {
    let client = match target {
        Target::Direct(c, _) => c.clone(),
        Target::Sentinel { clients, .. } => {
            // The first sentinel that names a primary answering as one.
            let mut last = String::from("no sentinel answered");
            let mut found = None;
            for c in clients {
                let asked = tokio::time::timeout(timeout, async {
                    c.lock().await.async_get_client().await
                })
                .await;
                match asked {
                    Ok(Ok(client)) => {
                        found = Some(client);
                        break;
                    }
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => {
                        last = format!("no answer within {}", humantime::format_duration(timeout));
                    }
                }
            }
            found.ok_or_else(|| StoreError::Unavailable {
                action: "find",
                store: describe(target, None),
                reason: last,
            })?
        }
    };
    let address = address_of(&client);
    let shown = match target {
        Target::Direct(_, shown) => shown.clone(),
        Target::Sentinel { .. } => address.clone(),
    };
    let err = |action, e: &RedisError| unavailable(&shown, action, e);
    // With sentinels, a lost primary is not retried here: the sentinels
    // are asked again instead.
    let retries = if matches!(target, Target::Sentinel { .. }) {
        0
    } else {
        2
    };
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(retries)
        .set_max_delay(Duration::from_secs(2));
    let mut conn = ConnectionManager::new_with_config(client.clone(), config.clone())
        .await
        .map_err(|e| err("connect to", &e))?;
    let writer = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|e| err("connect to", &e))?;
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| err("talk to", &e))?;
    if matches!(target, Target::Sentinel { .. }) {
        // Never write to a replica: the crate checked ROLE; check again
        // on this very connection.
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query_async(&mut conn)
            .await
            .map_err(|e| err("talk to", &e))?;
        if !says_primary(&role) {
            return Err(StoreError::Unavailable {
                action: "use",
                store: format!("Redis at {shown}"),
                reason: "the sentinels name it, but it is not the primary (yet)".into(),
            });
        }
    }
    check_eviction(&mut conn, &shown).await?;
    // Only the cache's connection speaks RESP3 (its invalidations come as
    // pushes): a server without it still serves everything else.
    let records = Records::new(resp3(&client).map_err(|e| err("use", &e))?, counts.clone());
    Ok(Primary {
        epoch,
        address,
        conn,
        writer,
        records,
    })
}

/// Whether a `ROLE` answer is a primary's.
pub fn says_primary(role: &[redis::Value]) -> bool {
    matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master")
        || matches!(role.first(), Some(redis::Value::SimpleString(s)) if s == "master")
}

/// Accounts and short-lived data must never share an eviction fate.
async fn check_eviction(conn: &mut ConnectionManager, address: &str) -> Result<(), StoreError> {
    match redis::cmd("INFO")
        .arg("memory")
        .query_async::<String>(conn)
        .await
    {
        Ok(info) => {
            let policy = info
                .lines()
                .find_map(|l| l.strip_prefix("maxmemory_policy:"))
                .map(|p| p.trim().to_owned());
            if let Some(policy) = policy.filter(|p| p != "noeviction") {
                return Err(StoreError::Evicting {
                    store: format!("Redis at {address}"),
                    policy,
                });
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            "cannot ask Redis for its maxmemory-policy (INFO memory); make sure it is noeviction"
        ),
    }
    Ok(())
}

/// What each sentinel names as the primary of `service` (`host:port`), or
/// why it did not answer: for `mailgate check`.
pub async fn ask_sentinels(
    sentinels: &mailgate_config::Sentinels,
    timeout: Duration,
) -> Vec<(String, Result<String, String>)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut out = Vec::new();
    for url in &sentinels.urls {
        let asked = async {
            let client = redis::Client::open(url.expose_secret())?;
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&sentinels.service)
                .query_async::<Option<(String, String)>>(&mut c)
                .await
        };
        let answer = match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(Some((host, port)))) => Ok(format!("{host}:{port}")),
            Ok(Ok(None)) => Err(format!("knows no primary named {:?}", sentinels.service)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        };
        out.push((shown(url.expose_secret()), answer));
    }
    out
}
