//! The token store's contract (SPEC §4, §9): what an account record is,
//! what a write expects to replace, and what can go wrong. Two backends
//! implement it: [`file`] (one JSON file per account under
//! `state_dir/tokens/`, the default) and [`redis`] (a server shared by a
//! fleet). Nothing outside this module and [`crate::accounts::fleet`] names
//! a backend: the rest of the gateway holds a [`Store`].
//!
//! The contract:
//! - a record is a sealed [`TokenFile`] (see [`record`]): the tokens are
//!   sealed under a key derived from the local password, so the store never
//!   holds a plaintext token or key;
//! - every record has a generation; [`Store::save`] is a compare-and-swap
//!   on it ([`Expect`]) and returns the record with its new generation. A
//!   generation is never given twice to one account, not even after the
//!   account was removed and authorised again, so a writer that read an
//!   older record can never overwrite a newer one nor bring a removed one
//!   back;
//! - nothing here deletes or rewrites a record because a password was
//!   wrong;
//! - a backend's blocking work (the file store's `fs` calls, `flock` and
//!   `fsync`) runs off the async workers.

pub mod connection;
pub mod contract;
mod counts;
pub mod error;
pub mod file;
pub mod migrate;
mod opened;
mod primary;
pub mod record;
pub mod redis;
pub mod serde_secret;
mod tracking;

pub use contract::{Backend, Expect, Figures, Pending, Store, Want};
pub use error::{StoreError, now, now_ms};
pub use file::{secure_dirs, write_atomic};
pub use record::{
    Access, Audience, Kdf, MAX_M_COST, MAX_P_COST, MAX_T_COST, SealingKey, TokenFile, Tokens,
};

pub use opened::{ask_sentinels, open};

/// The file store under `state_dir`.
pub fn files(state_dir: &std::path::Path) -> Store {
    Store::new(file::FileStore::new(state_dir))
}
