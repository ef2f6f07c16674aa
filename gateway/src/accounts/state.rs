//! What the accounts keep in memory per account and per provider.

use std::sync::Arc;

use secrecy::SecretString;

use crate::accounts::store::{SealingKey, TokenFile, Tokens};

/// A derived key and a fast check of the password it came from.
pub struct CachedKey {
    pub key: SealingKey,
    /// SHA-256(process salt || password); memory only.
    pub check: [u8; 32],
}

#[derive(Default)]
pub struct AccountState {
    pub key: Option<CachedKey>,
    pub tokens: Option<Tokens>,
    /// The file as last read from or written to the store: the key and the
    /// tokens stand only while the store holds exactly this file.
    pub disk: Option<TokenFile>,
    /// The tokens in memory are newer than `disk` (a write failed); they
    /// are written at the next login.
    pub unsaved: bool,
}

/// Per provider (per mailbox for a service account): the app-only token
/// and its expiry (Unix seconds).
pub type AppTokenSlot = Arc<tokio::sync::Mutex<Option<(SecretString, u64)>>>;
