//! Slowing down repeated wrong passwords, per user and per client address.
//!
//! The first failures are free (people mistype); from the third on, every
//! attempt for that user or from that address waits `BASE * 2^(n-3)`, capped
//! at `CAP`. A success clears both counters; counters are forgotten after
//! `FORGET` without failures.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const FREE: u32 = 2;
const BASE: Duration = Duration::from_millis(500);
const CAP: Duration = Duration::from_secs(16);
const FORGET: Duration = Duration::from_secs(15 * 60);
/// Bound on remembered keys; old entries are pruned past it.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Addr(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    /// Unix seconds of `last`, for the snapshot.
    last_unix: u64,
}

#[derive(Debug, Default)]
pub struct Backoff {
    entries: Mutex<HashMap<Key, Entry>>,
    /// Changed since the last snapshot was taken.
    dirty: AtomicBool,
}

/// The snapshot's file name under `state_dir`.
pub const SNAPSHOT_FILE: &str = "backoff.json";

/// Reads the running gateway's last snapshot, if any.
pub fn read_snapshot(state_dir: &std::path::Path) -> Option<Snapshot> {
    let bytes = std::fs::read(state_dir.join(SNAPSHOT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// One user's or address's state, as written to `state_dir/backoff.json`
/// for `mailgate accounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    pub failures: u32,
    /// Unix seconds of the last failure.
    pub last_failure: u64,
    /// How long the next attempt waits.
    pub delay_ms: u64,
}

/// The snapshot file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unix seconds when it was written.
    pub written: u64,
    pub users: BTreeMap<String, Throttle>,
    pub addresses: BTreeMap<String, Throttle>,
}

fn delay_for(failures: u32) -> Duration {
    if failures <= FREE {
        return Duration::ZERO;
    }
    let exp = (failures - FREE - 1).min(16);
    BASE.saturating_mul(1u32 << exp).min(CAP)
}

impl Backoff {
    /// How long the next attempt for `user` from `addr` must wait.
    pub fn delay(&self, user: &str, addr: IpAddr) -> Duration {
        let now = Instant::now();
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        [Key::User(user.to_owned()), Key::Addr(addr)]
            .iter()
            .filter_map(|k| map.get(k))
            .filter(|e| now.duration_since(e.last) < FORGET)
            .map(|e| delay_for(e.failures))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Records a wrong password.
    pub fn failure(&self, user: &str, addr: IpAddr) {
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now.duration_since(e.last) < FORGET);
        }
        if map.len() >= MAX_ENTRIES {
            // Still full of fresh entries (many names or addresses at once):
            // forget the least recent tenth, so memory stays bounded.
            let mut by_age: Vec<(Instant, Key)> =
                map.iter().map(|(k, e)| (e.last, k.clone())).collect();
            by_age.sort_by_key(|(t, _)| *t);
            for (_, k) in by_age.into_iter().take(MAX_ENTRIES / 10) {
                map.remove(&k);
            }
        }
        for k in [Key::User(user.to_owned()), Key::Addr(addr)] {
            let e = map.entry(k).or_insert(Entry {
                failures: 0,
                last: now,
                last_unix: 0,
            });
            if now.duration_since(e.last) >= FORGET {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            e.last_unix = crate::store::now();
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Records a successful login.
    pub fn success(&self, user: &str, addr: IpAddr) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let a = map.remove(&Key::User(user.to_owned())).is_some();
        let b = map.remove(&Key::Addr(addr)).is_some();
        if a || b {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// The current state when it changed since the last call, else `None`.
    pub fn snapshot_if_changed(&self) -> Option<Snapshot> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut snap = Snapshot {
            written: crate::store::now(),
            ..Snapshot::default()
        };
        for (k, e) in map
            .iter()
            .filter(|(_, e)| now.duration_since(e.last) < FORGET)
        {
            let t = Throttle {
                failures: e.failures,
                last_failure: e.last_unix,
                delay_ms: delay_for(e.failures).as_millis() as u64,
            };
            match k {
                Key::User(u) => snap.users.insert(u.clone(), t),
                Key::Addr(a) => snap.addresses.insert(a.to_string(), t),
            };
        }
        Some(snap)
    }

    /// Current failure count of a user.
    #[cfg(test)]
    pub fn failures(&self, user: &str) -> u32 {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&Key::User(user.to_owned()))
            .map(|e| e.failures)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule() {
        let want = [0, 0, 0, 500, 1000, 2000, 4000, 8000, 16000, 16000];
        for (n, ms) in want.iter().enumerate() {
            assert_eq!(delay_for(n as u32), Duration::from_millis(*ms), "n={n}");
        }
        assert_eq!(delay_for(u32::MAX), CAP);
    }

    #[test]
    fn memory_stays_bounded_under_many_names() {
        let b = Backoff::default();
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        for i in 0..(MAX_ENTRIES + 1000) {
            b.failure(&format!("user{i}"), a);
        }
        let n = b.entries.lock().expect("lock").len();
        assert!(n <= MAX_ENTRIES, "{n} entries");
        assert!(
            b.failures(&format!("user{}", MAX_ENTRIES + 999)) == 1,
            "recent entries are kept"
        );
    }

    #[test]
    fn snapshots_only_when_changed() {
        let b = Backoff::default();
        assert!(b.snapshot_if_changed().is_none());
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        for _ in 0..3 {
            b.failure("u", a);
        }
        let s = b.snapshot_if_changed().expect("changed");
        assert_eq!(s.users["u"].failures, 3);
        assert_eq!(s.users["u"].delay_ms, 500);
        assert_eq!(s.addresses["127.0.0.1"].failures, 3);
        assert!(b.snapshot_if_changed().is_none());
        b.success("u", a);
        assert!(b.snapshot_if_changed().expect("changed").users.is_empty());
    }

    #[test]
    fn per_user_and_per_address() {
        let b = Backoff::default();
        let a1: IpAddr = "127.0.0.1".parse().expect("ip");
        let a2: IpAddr = "127.0.0.2".parse().expect("ip");
        for _ in 0..3 {
            b.failure("u", a1);
        }
        assert_eq!(
            b.delay("u", a2),
            Duration::from_millis(500),
            "same user elsewhere"
        );
        assert_eq!(
            b.delay("v", a1),
            Duration::from_millis(500),
            "same address, other user"
        );
        assert_eq!(b.delay("v", a2), Duration::ZERO);
        assert_eq!(b.failures("u"), 3);
        b.success("u", a1);
        assert_eq!(b.delay("u", a1), Duration::ZERO);
    }
}
