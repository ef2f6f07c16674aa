//! Keeping accounts alive: a refresh token that is not used lapses
//! (Microsoft: 90 days; Google, for an app in "Testing": 7), and with it
//! the account, though its owner did nothing wrong. An account whose key
//! is in memory (someone logged in since the gateway started) can be
//! refreshed by the gateway itself before that: its tokens are opened and
//! re-sealed with the cached key, under the fleet's refresh lease like any
//! refresh. An account whose key is not in memory cannot be: its tokens
//! are sealed with a password the gateway does not have.

use std::time::Duration;

use tracing::{info, warn};

use super::refresh::Leased;
use super::service::Accounts;
use super::store::Audience;

/// What one keep-alive pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeptAlive {
    /// Accounts refreshed.
    pub refreshed: Vec<String>,
    /// Accounts whose refresh failed (the refresh's own events and logs
    /// say why).
    pub failed: Vec<String>,
    /// Every account whose key is in memory (can be kept alive).
    pub in_memory: Vec<String>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Accounts {
    /// Refreshes every account whose key is in memory and whose last
    /// refresh (or sign-in) is older than `older_than`.
    pub async fn keep_alive(&self, older_than: Duration) -> KeptAlive {
        let states: Vec<_> = {
            let map = self.states.lock().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(u, s)| (u.clone(), s.clone())).collect()
        };
        let mut out = KeptAlive::default();
        for (user, state) in states {
            let mut st = state.lock().await;
            if st.key.is_none() || st.tokens.is_none() {
                continue;
            }
            out.in_memory.push(user.clone());
            let Some(disk) = st.disk.as_ref() else {
                continue;
            };
            let last = disk.last_refresh.unwrap_or(disk.sealed_at);
            if disk.needs_authorization || now().saturating_sub(last) < older_than.as_secs() {
                continue;
            }
            let Some(provider) = self.provider_of(&user) else {
                continue;
            };
            let lease = match self
                .lease(&user, &mut st, None, u64::MAX, Audience::Mail)
                .await
            {
                Ok(Leased::Held(l)) => l,
                Ok(Leased::Fresh(_)) => continue,
                Err(e) => {
                    warn!(%user, error = %e, "keep-alive: no refresh lease");
                    out.failed.push(user);
                    continue;
                }
            };
            let done = self
                .refresh_now(&user, &provider, &mut st, 0, Audience::Mail)
                .await;
            lease.release().await;
            match done {
                Ok(_) => {
                    info!(%user, idle_s = now().saturating_sub(last), "keep-alive: refreshed an account unused for a while");
                    out.refreshed.push(user);
                }
                Err(e) => {
                    warn!(%user, error = %e, "keep-alive: the refresh failed");
                    out.failed.push(user);
                }
            }
        }
        out.in_memory.sort();
        out
    }
}

/// Where the running gateway says which accounts it can keep alive, for
/// `mailgate accounts` (under `state_dir`).
pub const SNAPSHOT_FILE: &str = "keep_alive.json";

/// The running gateway's accounts with a key in memory.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Unix seconds when it was written.
    pub at: u64,
    /// Seconds between passes: a snapshot older than two of them (and a
    /// minute) is from a gateway that no longer runs.
    pub period_s: u64,
    pub users: Vec<String>,
}

impl Snapshot {
    /// Whether `user` is kept alive by a gateway that still runs.
    pub fn keeps(&self, user: &str) -> bool {
        now().saturating_sub(self.at) <= 2 * self.period_s + 60
            && self.users.iter().any(|u| u == user)
    }
}

/// Reads the running gateway's last snapshot, if any.
pub fn read_snapshot(state_dir: &std::path::Path) -> Option<Snapshot> {
    let bytes = std::fs::read(state_dir.join(SNAPSHOT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// How long after its last use a provider's refresh token lapses, where
/// the provider documents it: Microsoft 90 days; Google 6 months (7 days
/// for an app whose consent screen is in "Testing").
pub fn lapse_after(preset: mailgate_config::Preset) -> Option<Duration> {
    match preset {
        mailgate_config::Preset::Office365 | mailgate_config::Preset::Outlook => {
            Some(Duration::from_secs(90 * 24 * 3600))
        }
        mailgate_config::Preset::Gmail => Some(Duration::from_secs(180 * 24 * 3600)),
        mailgate_config::Preset::Custom => None,
    }
}
