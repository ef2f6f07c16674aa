//! What can go wrong in the token store, and its clock.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged ({reason}); run `mailgate forget USER` and authorise the account again"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("the password does not open the stored tokens")]
    WrongPassword,
    /// A shared store cannot be reached or refused the request.
    #[error(
        "cannot {action} {store}: {reason}; check that it is running and reachable, and the address and password in [store] url"
    )]
    Unavailable {
        action: &'static str,
        store: String,
        reason: String,
    },
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// A compare-and-swap write found another file (or none) where it
    /// expected the one it read: someone else (`mailgate forget`, `login`,
    /// `passwd`, another process) changed the account meanwhile.
    #[error(
        "the token file of {user} was changed or removed by someone else meanwhile; nothing was written"
    )]
    Changed { user: String },
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// The state directory (or its `tokens`) is not safely ours.
    #[error("{path} {reason}")]
    Unsafe { path: PathBuf, reason: String },
    /// The shared store would drop keys when full: accounts' sealed tokens
    /// among them (SPEC §9).
    #[error(
        "{store} evicts keys when its memory is full (maxmemory-policy {policy}): it would drop accounts' sealed tokens to make room for sessions and sign-ins. Set maxmemory-policy noeviction (in redis.conf, and `CONFIG SET maxmemory-policy noeviction` to apply it now), or give mailgate a Redis of its own"
    )]
    Evicting { store: String, policy: String },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
