//! The per-instance cache of account records, kept true by Redis
//! (server-assisted client-side caching, RESP3 `CLIENT TRACKING`): the
//! records are read on a connection of their own with tracking on, and
//! Redis pushes an invalidation on that connection whenever a key read
//! there changes, whoever changes it (another instance's refresh,
//! `mailgate forget` or `passwd`, the portal). A login whose account did
//! not change reads its record from memory.
//!
//! Kept true:
//! - a read marks its key as being read (a ticket) before asking; an
//!   invalidation of the key in the meantime removes the mark, and the
//!   answer is then not kept (the race the Redis documentation describes);
//! - pushes already received are applied before every lookup;
//! - a dropped connection (or one that could not turn tracking on) empties
//!   the cache and keeps it off until a new connection has tracking on;
//! - a failover drops the whole cache with its primary
//!   ([`super::connection`]);
//! - only records that exist are held, at most [`MAX_HELD`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::counts::Counts;

/// What a record's key holds: the sealed file and the generation
/// (`HMGET key file gen`).
pub type Raw = (Option<Vec<u8>>, Option<String>);

/// How long to wait before trying again to open a tracking connection that
/// failed.
const RETRY: Duration = Duration::from_secs(1);

/// Records held at most: beyond, reads go to Redis. Only existing records
/// are held, so that logins with made-up names (under a `*@domain`
/// account) cannot grow the cache.
const MAX_HELD: usize = 100_000;

pub struct Records {
    client: redis::Client,
    counts: Arc<Counts>,
    state: Mutex<State>,
    /// One tracking connection opened at a time.
    opening: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reading")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// The tracking connection, and its pushes.
    conn: Option<MultiplexedConnection>,
    pushes: Option<UnboundedReceiver<PushInfo>>,
    /// Counts tracking connections, so that an answer read on an earlier
    /// one is never kept.
    generation: u64,
    slots: HashMap<String, Slot>,
    tickets: u64,
    retry_at: Option<Instant>,
}

enum Slot {
    /// Being read with this ticket.
    Reading(u64),
    Held(Raw),
}

/// A read in progress: keep its answer with [`Records::keep`].
pub struct Reading {
    ticket: u64,
    generation: u64,
    pub conn: MultiplexedConnection,
}

impl State {
    /// Applies the pushes received so far.
    fn settle(&mut self, counts: &Counts) {
        let mut dropped = false;
        if let Some(pushes) = &mut self.pushes {
            while let Ok(push) = pushes.try_recv() {
                match push.kind {
                    PushKind::Invalidate => {
                        match push.data.into_iter().next() {
                            Some(Value::Array(keys)) => {
                                for k in keys {
                                    if let Value::BulkString(k) = k {
                                        let k = String::from_utf8_lossy(&k);
                                        self.slots.remove(k.as_ref());
                                        counts.invalidations.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                            // A flush: every key.
                            _ => {
                                counts
                                    .invalidations
                                    .fetch_add(self.slots.len() as u64, Ordering::Relaxed);
                                self.slots.clear();
                            }
                        }
                    }
                    PushKind::Disconnection => dropped = true,
                    _ => {}
                }
            }
        }
        if dropped {
            self.forget_all();
        }
    }

    fn forget_all(&mut self) {
        self.conn = None;
        self.pushes = None;
        self.slots.clear();
        self.generation += 1;
    }
}

impl Records {
    /// A cache whose tracking connection `client` opens when first needed.
    pub fn new(client: redis::Client, counts: Arc<Counts>) -> Records {
        Records {
            client,
            counts,
            state: Mutex::new(State::default()),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies the pushes received so far (also done before each lookup).
    pub fn settle(&self) {
        self.state().settle(&self.counts);
    }

    /// The record under `key`, when the cache holds it.
    pub fn get(&self, key: &str) -> Option<Raw> {
        let mut st = self.state();
        st.settle(&self.counts);
        let hit = match st.slots.get(key) {
            Some(Slot::Held(raw)) => Some(raw.clone()),
            _ => None,
        };
        let counter = if hit.is_some() {
            &self.counts.cache_hits
        } else {
            &self.counts.cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// Forgets `key` (this instance is about to change it).
    pub fn forget(&self, key: &str) {
        self.state().slots.remove(key);
    }

    /// Starts reading `key` on the tracking connection; `None` when there
    /// is none (the caller reads without the cache).
    pub async fn begin(&self, key: &str) -> Option<Reading> {
        if self.current().is_none() {
            self.open().await?;
        }
        let mut st = self.state();
        st.settle(&self.counts);
        let conn = st.conn.clone()?;
        if st.slots.len() >= MAX_HELD && !st.slots.contains_key(key) {
            return None;
        }
        st.tickets += 1;
        let ticket = st.tickets;
        st.slots.insert(key.to_owned(), Slot::Reading(ticket));
        Some(Reading {
            ticket,
            generation: st.generation,
            conn,
        })
    }

    /// Keeps what `reading` read under `key`, unless the key changed (or
    /// the tracking connection was lost) meanwhile.
    pub fn keep(&self, key: &str, reading: Reading, raw: &Raw) {
        let mut st = self.state();
        st.settle(&self.counts);
        let same = matches!(st.slots.get(key), Some(Slot::Reading(t)) if *t == reading.ticket);
        if !same {
            return;
        }
        if raw.0.is_some() && st.generation == reading.generation && st.conn.is_some() {
            st.slots.insert(key.to_owned(), Slot::Held(raw.clone()));
        } else {
            st.slots.remove(key);
        }
    }

    /// The read on the tracking connection failed: it is given up.
    pub fn failed(&self, reading: Reading) {
        let mut st = self.state();
        if st.generation == reading.generation {
            st.forget_all();
            st.retry_at = Some(Instant::now() + RETRY);
        }
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        let mut st = self.state();
        st.settle(&self.counts);
        st.conn.clone()
    }

    /// Opens a tracking connection, unless one failed within [`RETRY`].
    async fn open(&self) -> Option<MultiplexedConnection> {
        let _one = self.opening.lock().await;
        if let Some(c) = self.current() {
            return Some(c);
        }
        if self.state().retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let (tx, rx) = unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_push_sender(tx);
        let opened = async {
            let mut c = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let _: () = redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .query_async(&mut c)
                .await?;
            Ok::<_, redis::RedisError>(c)
        }
        .await;
        let mut st = self.state();
        match opened {
            Ok(c) => {
                st.forget_all();
                st.conn = Some(c.clone());
                st.pushes = Some(rx);
                st.retry_at = None;
                Some(c)
            }
            Err(e) => {
                if st.retry_at.is_none() {
                    tracing::warn!(
                        error = %e,
                        "cannot keep a cache of account records (RESP3 CLIENT TRACKING); every login reads its record from Redis"
                    );
                }
                st.retry_at = Some(Instant::now() + RETRY);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(kind: PushKind, data: Vec<Value>) -> PushInfo {
        PushInfo { kind, data }
    }

    fn held(st: &State) -> Vec<String> {
        let mut v: Vec<String> = st
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Held(_)))
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// Invalidations drop their keys (held or being read), a flush drops
    /// everything, a lost connection drops everything and starts a new
    /// generation.
    #[test]
    fn pushes_drop_what_changed() {
        let counts = Counts::default();
        let (tx, rx) = unbounded_channel();
        let mut st = State {
            pushes: Some(rx),
            ..State::default()
        };
        let raw: Raw = (Some(b"{}".to_vec()), Some("1".into()));
        for k in ["a", "b", "c"] {
            st.slots.insert(k.into(), Slot::Held(raw.clone()));
        }
        st.slots.insert("d".into(), Slot::Reading(7));
        tx.send(push(
            PushKind::Invalidate,
            vec![Value::Array(vec![
                Value::BulkString(b"a".to_vec()),
                Value::BulkString(b"d".to_vec()),
            ])],
        ))
        .expect("sent");
        st.settle(&counts);
        assert_eq!(held(&st), ["b", "c"]);
        assert!(
            !st.slots.contains_key("d"),
            "a read in progress is not kept"
        );
        assert_eq!(counts.invalidations.load(Ordering::Relaxed), 2);

        tx.send(push(PushKind::Invalidate, vec![Value::Nil]))
            .expect("sent");
        st.settle(&counts);
        assert!(st.slots.is_empty());

        st.slots.insert("e".into(), Slot::Held(raw));
        let generation = st.generation;
        tx.send(push(PushKind::Disconnection, vec![]))
            .expect("sent");
        st.settle(&counts);
        assert!(st.slots.is_empty());
        assert!(st.pushes.is_none() && st.conn.is_none());
        assert_eq!(st.generation, generation + 1);
    }
}
