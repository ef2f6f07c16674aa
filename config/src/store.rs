//! `[store]` (SPEC §9): the file store, or Redis, found directly or
//! through Sentinel.

use std::time::Duration;

use secrecy::SecretString;

/// How long a write of rotated tokens waits for a replica's acknowledgement
/// (`wait_timeout`) unless configured.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(1);

/// `[store]` (SPEC §9).
#[derive(Debug, Clone)]
pub enum Store {
    /// Files under `state_dir/tokens` (the default).
    File,
    /// A Redis (or Valkey) server shared by several gateways.
    Redis(Redis),
}

/// `backend = "redis"`.
#[derive(Debug, Clone)]
pub struct Redis {
    /// `redis://` or `rediss://`, with a password or ACL user in it when
    /// needed (from `url` or `url_file`). With `sentinels`, only its
    /// scheme (TLS or not), user, password and database are used: the
    /// host is the primary the sentinels name.
    pub url: SecretString,
    /// Prepended to every key.
    pub prefix: String,
    /// Where to find the primary, when Sentinel manages it.
    pub sentinels: Option<Sentinels>,
    /// Replicas that must acknowledge a write of rotated tokens before
    /// the login goes on (`WAIT`); 1 with sentinels, else 0.
    pub wait_replicas: u32,
    /// How long that write waits for them at most.
    pub wait_timeout: Duration,
}

/// `sentinels` and `service`.
#[derive(Debug, Clone)]
pub struct Sentinels {
    /// `redis://host:port` (or `rediss://` for TLS) of each sentinel, with
    /// its password when it has one; written `redis-sentinel://` and
    /// `rediss-sentinel://` in the configuration.
    pub urls: Vec<SecretString>,
    /// The name the sentinels know the primary by.
    pub service: String,
}
