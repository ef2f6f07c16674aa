//! What the Redis store counts (see [`super::contract::Figures`]).

use std::sync::atomic::{AtomicBool, AtomicU64};

/// What the store's connection counts, for `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub struct Counts {
    pub failovers: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub invalidations: AtomicU64,
    pub repairs: AtomicU64,
    pub unreplicated: AtomicU64,
    pub unreachable: AtomicBool,
}
