//! The token store's contract: see [`crate::accounts::store`].

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use super::error::StoreError;
use super::record::TokenFile;

/// What a compare-and-swap write expects to replace.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// No record: the first tokens of an account.
    Absent,
    /// This record, as read or last written: the store still holds its
    /// generation.
    Same(&'a TokenFile),
    /// Whatever is there: an explicit command (`mailgate login`, `token
    /// import`) that replaces the account's tokens on purpose.
    Any,
}

/// An [`Expect`] reduced to what the compare-and-swap compares (it
/// crosses into a backend's blocking task or script).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Absent,
    Generation(u64),
    Any,
}

impl Expect<'_> {
    pub fn want(self) -> Want {
        match self {
            Expect::Absent => Want::Absent,
            Expect::Same(f) => Want::Generation(f.generation),
            Expect::Any => Want::Any,
        }
    }
}

impl Want {
    /// Whether a store that holds `current` (its generation; `None`: no
    /// record) may be written.
    pub fn fits(self, current: Option<u64>) -> bool {
        match (self, current) {
            (Want::Any, _) | (Want::Absent, None) => true,
            (Want::Generation(want), Some(cur)) => want == cur,
            _ => false,
        }
    }
}

/// A boxed future of a backend (the contract is used as a trait object).
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What a backend of the token store does (see the module's contract).
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where a user's record is, for messages.
    fn location(&self, user: &str) -> PathBuf;
    /// A user's record; `None` when there is none.
    fn load<'a>(&'a self, user: &'a str) -> Pending<'a, Option<TokenFile>>;
    /// As [`Backend::load`], read from the store itself even when a cache
    /// holds it: for the reads a refresh decides on.
    fn load_fresh<'a>(&'a self, user: &'a str) -> Pending<'a, Option<TokenFile>> {
        self.load(user)
    }
    /// Writes `file` if the store holds what `want` says; the written
    /// record, with its new generation.
    fn save<'a>(&'a self, file: TokenFile, want: Want) -> Pending<'a, TokenFile>;
    /// Deletes a user's record; `false` when there was none.
    fn remove<'a>(&'a self, user: &'a str) -> Pending<'a, bool>;
    /// Every readable record, with the errors of unreadable ones.
    fn list(&self) -> Pending<'_, (Vec<TokenFile>, Vec<StoreError>)>;
    /// What a shared store counts (the file store: nothing).
    fn figures(&self) -> Option<Figures> {
        None
    }
}

/// What a shared store counts since the process started, for `/metrics`
/// and `/healthz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    /// Changes of primary followed.
    pub failovers: u64,
    /// Account records read from the cache, and from the server.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Records the server told the cache to drop.
    pub invalidations: u64,
    /// Records written back from memory over a store that lost them.
    pub repairs: u64,
    /// Writes no replica acknowledged in time.
    pub unreplicated: u64,
    /// `None` while reachable; else what is unreachable.
    pub unreachable: Option<String>,
}

/// Where accounts' sealed tokens live: a handle on the configured backend.
#[derive(Debug, Clone)]
pub struct Store(Arc<dyn Backend>);

impl Store {
    pub fn new(backend: impl Backend + 'static) -> Store {
        Store(Arc::new(backend))
    }

    /// Where a user's tokens are, for messages.
    pub fn location(&self, user: &str) -> PathBuf {
        self.0.location(user)
    }

    /// A user's record; `None` when there is none. A shared store may
    /// answer from its cache, which learns of another process's change
    /// within the time the server takes to tell it (see
    /// [`super::redis`]).
    pub async fn load(&self, user: &str) -> Result<Option<TokenFile>, StoreError> {
        self.0.load(user).await
    }

    /// A user's record as the store holds it now (never from a cache):
    /// what a refresh decides on, so that it never starts from a spent
    /// refresh token.
    pub async fn load_fresh(&self, user: &str) -> Result<Option<TokenFile>, StoreError> {
        self.0.load_fresh(user).await
    }

    /// Writes `file` if the account is still what `expected` says
    /// (compare-and-swap on the generation); the written record, with its
    /// new generation, is returned. [`StoreError::Changed`] when not.
    pub async fn save(
        &self,
        file: &TokenFile,
        expected: Expect<'_>,
    ) -> Result<TokenFile, StoreError> {
        self.0.save(file.clone(), expected.want()).await
    }

    /// Deletes a user's tokens; `Ok(false)` when there were none.
    pub async fn remove(&self, user: &str) -> Result<bool, StoreError> {
        self.0.remove(user).await
    }

    /// What a shared store counts; `None` for the file store.
    pub fn figures(&self) -> Option<Figures> {
        self.0.figures()
    }

    /// Every readable account, with the errors of unreadable ones.
    pub async fn list(&self) -> (Vec<TokenFile>, Vec<StoreError>) {
        self.0
            .list()
            .await
            .unwrap_or_else(|e| (Vec::new(), vec![e]))
    }
}
