//! Accounts, local passwords and tokens at run time (SPEC §4, §5). Shared by
//! every protocol.
//!
//! Each account (lower-cased login name) has one async mutex around its
//! state. Everything that may change the state — checking a password against
//! the sealed file, refreshing the access token, re-sealing rotated refresh
//! tokens — happens under it, so concurrent logins for one account cause one
//! key derivation and one refresh (single flight), and later logins with the
//! same password cost a hash comparison.
//!
//! The store is the truth (SPEC §4): every login reads the account's file
//! (a small read) and uses its cached key and tokens only while the file is
//! still the one they came from; every write is a compare-and-swap against
//! that file, so `mailgate forget`, `login` and `passwd` take effect for the
//! next login and are never undone by a running gateway.
//!
//! Password checks that need Argon2 are bounded (see [`crate::accounts::argon`] and
//! [`crate::accounts::backoff`]): refused at once while the user or the address is in
//! backoff, capped per user and per address, and names without a file cost
//! a derivation too, so that they answer like a wrong password.

mod app_tokens;
pub mod argon;
pub mod backoff;
pub mod changes;
mod errors;
pub mod fleet;
pub mod flows;
pub mod grants;
pub mod graph;
mod graph_state;
pub mod identity;
pub mod inband;
pub mod keep_alive;
mod login;
pub mod names;
pub mod oauth;
mod probe;
pub mod random;
pub mod redirect;
mod refresh;
mod service;
mod shared;
pub use shared::split as split_shared_login;
mod sign_in;
mod state;
pub mod store;
mod throttle;

pub use changes::AccountEvent;
pub use errors::{LoginError, Unavailable, Unusable};
pub use names::{MAX_USER, account_name};
pub use service::{Accounts, Authorized};
