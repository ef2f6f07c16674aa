//! What the gateways of a fleet share beside the accounts (SPEC §9): one
//! refresh per account at a time (leases), the backoff counters of failed
//! logins, and short-lived sealed blobs (pending sign-ins, the portal's
//! sessions, app-only tokens). A capability of its own beside the token
//! store ([`crate::accounts::store`]): with the file store the fleet is
//! this one process ([`local`]); with Redis it is every instance sharing
//! the server ([`redis`]).

pub mod contract;
pub mod local;
pub mod redis;
pub mod sealed;

pub use contract::{Fleet, FleetBackend, Lease, Pending};

/// The fleet of one process (the file store).
pub fn local() -> Fleet {
    Fleet::new(local::Local::default())
}

/// The fleet of every gateway sharing a Redis server.
pub fn redis(conn: crate::accounts::store::redis::Connection) -> Fleet {
    Fleet::new(redis::RedisFleet::new(conn))
}
