//! Slowing down repeated wrong passwords, per user and per client address,
//! without letting strangers lock the owner out (SPEC §4).
//!
//! The first failures are free (people mistype); from the third on, a key
//! is locked for `BASE * 2^(n-3)` after its last failure, capped at `CAP`
//! (so a guesser gets at most a few checks a minute per name). While
//! locked, attempts are refused at once, without a key derivation (an
//! attacker's parallel attempts are not queued behind a delay, and cost the
//! gateway nothing); a correct password whose key is already cached is not
//! affected at all.
//!
//! As Entra's smart lockout does, a user's failures are counted apart by
//! where they come from: addresses the owner has logged in from before
//! (*familiar*, recorded with the account's tokens, see
//! [`familiar_id`]) and all others (*strangers*). An attempt from a
//! familiar address is held back only by the failures from familiar
//! addresses; one from elsewhere by the strangers' failures and by its own
//! address's. A guessing flood from anywhere else therefore never locks the
//! owner out of an address they used before, even with no key cached
//! (after a restart, on another instance, after `passwd`).
//!
//! A success clears the counter of its class and its address; counters are
//! forgotten after `FORGET` without failures. Attempts under way at once
//! are capped per user and class and per address ([`Backoff::begin`]).
//!
//! Users are keyed by a hash of their name, so an attacker's long names
//! cost a fixed size; only names of configured accounts are kept in clear,
//! for `mailgate accounts`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const FREE: u32 = 2;
const BASE: Duration = Duration::from_millis(500);
const CAP: Duration = Duration::from_secs(16);
pub(crate) const FORGET: Duration = Duration::from_secs(15 * 60);
/// Bound on remembered keys; old entries are pruned past it.
const MAX_ENTRIES: usize = 100_000;
/// Attempts for one user that may be checked at once.
pub const MAX_PENDING_PER_USER: u32 = 4;
/// Attempts from one address that may be checked at once.
pub const MAX_PENDING_PER_ADDRESS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// A user's failures from familiar addresses (`true`) or others.
    User([u8; 32], bool),
    Addr(IpAddr),
}

fn user_key(user: &str, familiar: bool) -> Key {
    Key::User(Sha256::digest(user.as_bytes()).into(), familiar)
}

/// The keys an attempt of `user` from `addr` is held back by and counted
/// against.
fn keys(user: &str, addr: IpAddr, familiar: bool) -> [Key; 2] {
    [user_key(user, familiar), Key::Addr(addr)]
}

/// How many addresses an account remembers as familiar.
pub const MAX_FAMILIAR: usize = 8;

/// The name under which an account remembers `addr` as familiar: a hash
/// of the account and the address (an IPv6 address by its /64, the
/// network a host keeps), so the record does not spell addresses out.
pub fn familiar_id(user: &str, addr: IpAddr) -> String {
    let net = match addr.to_canonical() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => {
            let s = a.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    };
    let h = Sha256::digest(format!("mailgate-familiar\0{user}\0{net}").as_bytes());
    h[..12].iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    last: Instant,
    /// Unix seconds of `last`, for the snapshot.
    last_unix: u64,
    /// The name, for a configured account's entry only.
    name: Option<String>,
}

impl Entry {
    /// How long this key stays locked from `now`.
    fn locked_for(&self, now: Instant) -> Duration {
        let since = now.duration_since(self.last);
        if since >= FORGET {
            return Duration::ZERO;
        }
        delay_for(self.failures).saturating_sub(since)
    }
}

#[derive(Debug, Default)]
pub struct Backoff {
    entries: Mutex<HashMap<Key, Entry>>,
    /// Attempts being checked now, per key.
    pending: Arc<Mutex<HashMap<Key, u32>>>,
    /// Changed since the last snapshot was taken.
    dirty: AtomicBool,
}

/// An attempt being checked; dropping it ends it.
#[derive(Debug)]
pub struct Pending {
    map: Arc<Mutex<HashMap<Key, u32>>>,
    keys: [Key; 2],
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            if let Some(n) = map.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
    }
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
    /// How long after the last failure attempts are refused.
    pub delay_ms: u64,
}

/// The snapshot file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unix seconds when it was written.
    pub written: u64,
    /// Configured accounts only (other names are counted, not named).
    pub users: BTreeMap<String, Throttle>,
    pub addresses: BTreeMap<String, Throttle>,
}

pub(crate) fn delay_for(failures: u32) -> Duration {
    if failures <= FREE {
        return Duration::ZERO;
    }
    let exp = (failures - FREE - 1).min(16);
    BASE.saturating_mul(1u32 << exp).min(CAP)
}

impl Backoff {
    /// How much longer an attempt of `user` from `addr` (familiar to the
    /// account or not) is held back; zero when it may be checked now. A
    /// familiar address is not held back by its own counter: it may be
    /// shared with guessers (a NAT, this machine's other programs).
    pub fn locked(&self, user: &str, addr: IpAddr, familiar: bool) -> Duration {
        let now = Instant::now();
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let keys = keys(user, addr, familiar);
        let held = if familiar { &keys[..1] } else { &keys[..] };
        held.iter()
            .filter_map(|k| map.get(k))
            .map(|e| e.locked_for(now))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Starts checking an attempt; `None` when too many attempts for this
    /// user (of this class) or from this address are being checked
    /// already.
    pub fn begin(&self, user: &str, addr: IpAddr, familiar: bool) -> Option<Pending> {
        let keys = keys(user, addr, familiar);
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (u, a) = (
            map.get(&keys[0]).copied().unwrap_or(0),
            map.get(&keys[1]).copied().unwrap_or(0),
        );
        if u >= MAX_PENDING_PER_USER || (a >= MAX_PENDING_PER_ADDRESS && !familiar) {
            return None;
        }
        for k in keys {
            *map.entry(k).or_default() += 1;
        }
        Some(Pending {
            map: self.pending.clone(),
            keys,
        })
    }

    /// Records a wrong password. `known`: `user` is a configured account
    /// (its name may then appear in the snapshot); `familiar`: `addr` is
    /// one the account knows.
    pub fn failure(&self, user: &str, addr: IpAddr, known: bool, familiar: bool) {
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now.duration_since(e.last) < FORGET);
        }
        if map.len() >= MAX_ENTRIES {
            // Still full of fresh entries (many names or addresses at once):
            // forget the least recent tenth, so memory stays bounded.
            let mut by_age: Vec<(Instant, Key)> = map.iter().map(|(k, e)| (e.last, *k)).collect();
            by_age.sort_by_key(|(t, _)| *t);
            for (_, k) in by_age.into_iter().take(MAX_ENTRIES / 10) {
                map.remove(&k);
            }
        }
        for (k, name) in [
            (user_key(user, familiar), known.then(|| user.to_owned())),
            (Key::Addr(addr), None),
        ] {
            let e = map.entry(k).or_insert(Entry {
                failures: 0,
                last: now,
                last_unix: 0,
                name: None,
            });
            if now.duration_since(e.last) >= FORGET {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            e.last_unix = crate::accounts::store::error::now();
            if name.is_some() {
                e.name = name;
            }
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Records a successful login (from a familiar address or not: only
    /// that class's counter is cleared, so a guesser gains nothing from
    /// the owner's success).
    pub fn success(&self, user: &str, addr: IpAddr, familiar: bool) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let a = map.remove(&user_key(user, familiar)).is_some();
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
            written: crate::accounts::store::error::now(),
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
            match (k, &e.name) {
                (Key::User(..), Some(name)) => {
                    // The class that is further along.
                    let slot = snap.users.entry(name.clone()).or_insert(t.clone());
                    if t.failures > slot.failures {
                        *slot = t;
                    }
                }
                (Key::User(..), None) => {}
                (Key::Addr(a), _) => {
                    snap.addresses.insert(a.to_string(), t);
                }
            }
        }
        Some(snap)
    }

    /// Current failure count of a user.
    #[cfg(test)]
    pub fn failures(&self, user: &str) -> u32 {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&user_key(user, false))
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
            b.failure(&format!("user{i}"), a, false, false);
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
            b.failure("u", a, true, false);
        }
        let s = b.snapshot_if_changed().expect("changed");
        assert_eq!(s.users["u"].failures, 3);
        assert_eq!(s.users["u"].delay_ms, 500);
        assert_eq!(s.addresses["127.0.0.1"].failures, 3);
        assert!(b.snapshot_if_changed().is_none());
        b.success("u", a, false);
        assert!(b.snapshot_if_changed().expect("changed").users.is_empty());
    }

    #[test]
    fn per_user_and_per_address() {
        let b = Backoff::default();
        let a1: IpAddr = "127.0.0.1".parse().expect("ip");
        let a2: IpAddr = "127.0.0.2".parse().expect("ip");
        for _ in 0..3 {
            b.failure("u", a1, true, false);
        }
        let locked = |d: Duration| d > Duration::from_millis(400) && d <= BASE;
        assert!(locked(b.locked("u", a2, false)), "same user elsewhere");
        assert!(locked(b.locked("v", a1, false)), "same address, other user");
        assert_eq!(b.locked("v", a2, false), Duration::ZERO);
        assert_eq!(b.failures("u"), 3);
        b.success("u", a1, false);
        assert_eq!(b.locked("u", a1, false), Duration::ZERO);
    }

    #[test]
    fn pending_attempts_are_capped_and_released() {
        let b = Backoff::default();
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let held: Vec<Pending> = (0..MAX_PENDING_PER_USER)
            .map(|_| b.begin("u", a, false).expect("under the cap"))
            .collect();
        assert!(
            b.begin("u", "127.0.0.2".parse().expect("ip"), false)
                .is_none(),
            "per user"
        );
        let other: Vec<Pending> = (MAX_PENDING_PER_USER..MAX_PENDING_PER_ADDRESS)
            .map(|i| b.begin(&format!("v{i}"), a, false).expect("under the cap"))
            .collect();
        assert!(b.begin("w", a, false).is_none(), "per address");
        drop(held);
        drop(other);
        assert!(b.begin("u", a, false).is_some(), "released on drop");
        assert!(b.pending.lock().expect("lock").is_empty());
    }

    #[test]
    fn long_names_cost_a_hash_and_unknown_names_stay_out_of_the_snapshot() {
        let b = Backoff::default();
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        b.failure(&"x".repeat(300), a, false, false);
        b.failure("known@x.test", a, true, false);
        let s = b.snapshot_if_changed().expect("changed");
        assert_eq!(s.users.keys().collect::<Vec<_>>(), ["known@x.test"]);
        assert_eq!(s.addresses["127.0.0.1"].failures, 2);
    }

    /// Strangers' failures hold strangers back, not the owner at an
    /// address the account knows; the owner's own failures there count.
    #[test]
    fn familiar_addresses_are_not_locked_by_strangers() {
        let b = Backoff::default();
        let home: IpAddr = "127.0.0.1".parse().expect("ip");
        for i in 0..50u8 {
            let stranger = IpAddr::from([127, 0, 1, i]);
            b.failure("u", stranger, true, false);
        }
        assert!(b.locked("u", "127.0.2.1".parse().expect("ip"), false) > Duration::ZERO);
        assert_eq!(b.locked("u", home, true), Duration::ZERO);
        // Other programs on the owner's machine fail for other names: the
        // address is locked for strangers, not for the owner.
        for _ in 0..6 {
            b.failure("other", home, false, false);
        }
        assert!(b.locked("v", home, false) > Duration::ZERO);
        assert_eq!(b.locked("u", home, true), Duration::ZERO);
        for _ in 0..3 {
            b.failure("u", home, true, true);
        }
        assert!(b.locked("u", home, true) > Duration::ZERO);
        b.success("u", home, true);
        assert_eq!(b.locked("u", home, true), Duration::ZERO);
        assert!(
            b.locked("u", "127.0.2.1".parse().expect("ip"), false) > Duration::ZERO,
            "the owner's success does not reset the strangers' count"
        );
    }

    #[test]
    fn familiar_ids_name_a_host_or_its_v6_network() {
        let a = familiar_id("u", "192.0.2.1".parse().expect("ip"));
        assert_eq!(a, familiar_id("u", "::ffff:192.0.2.1".parse().expect("ip")));
        assert_ne!(a, familiar_id("u", "192.0.2.2".parse().expect("ip")));
        assert_ne!(a, familiar_id("v", "192.0.2.1".parse().expect("ip")));
        assert_eq!(
            familiar_id("u", "2001:db8::1".parse().expect("ip")),
            familiar_id("u", "2001:db8::2".parse().expect("ip"))
        );
        assert_eq!(a.len(), 24);
    }
}
