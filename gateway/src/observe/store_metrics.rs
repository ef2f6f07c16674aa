//! The shared store's series: `mailgate_store_failovers_total`,
//! `mailgate_store_cache_total{result="hit"|"miss"}`,
//! `mailgate_store_invalidations_total`, `mailgate_store_repairs_total`,
//! `mailgate_store_unreplicated_writes_total` and `mailgate_store_up`,
//! read from the store's own counters whenever they are shown; and what
//! `/healthz` says of the store.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::accounts::store::{Figures, Store};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheResult {
    result: &'static str,
}

#[derive(Debug, Default)]
pub struct StoreMeters {
    store: OnceLock<Store>,
    failovers: Counter,
    cache: Family<CacheResult, Counter>,
    invalidations: Counter,
    repairs: Counter,
    unreplicated: Counter,
    up: Gauge,
}

/// Brings a counter up to `to` (the store's count only grows).
fn catch_up(c: &Counter, to: u64) {
    c.inc_by(to.saturating_sub(c.get()));
}

impl StoreMeters {
    pub fn register(registry: &mut Registry) -> StoreMeters {
        let m = StoreMeters::default();
        registry.register(
            "store_failovers",
            "Changes of the store's Redis primary this instance followed",
            m.failovers.clone(),
        );
        registry.register(
            "store_cache",
            "Account records read from this instance's cache (hit) or from Redis (miss)",
            m.cache.clone(),
        );
        registry.register(
            "store_invalidations",
            "Cached account records Redis said had changed",
            m.invalidations.clone(),
        );
        registry.register(
            "store_repairs",
            "Account records written back from memory over a store that had lost them",
            m.repairs.clone(),
        );
        registry.register(
            "store_unreplicated_writes",
            "Account record writes no replica acknowledged within wait_timeout",
            m.unreplicated.clone(),
        );
        registry.register(
            "store_up",
            "1 while the shared store answers, 0 while it does not",
            m.up.clone(),
        );
        m
    }

    /// The store whose counters these are (the file store has none).
    pub fn watch(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// Brings the series up to date; the store's figures.
    pub fn refresh(&self) -> Option<Figures> {
        let f = self.store.get()?.figures()?;
        catch_up(&self.failovers, f.failovers);
        catch_up(
            &self.cache.get_or_create(&CacheResult { result: "hit" }),
            f.cache_hits,
        );
        catch_up(
            &self.cache.get_or_create(&CacheResult { result: "miss" }),
            f.cache_misses,
        );
        catch_up(&self.invalidations, f.invalidations);
        catch_up(&self.repairs, f.repairs);
        catch_up(&self.unreplicated, f.unreplicated);
        self.up.set(i64::from(f.unreachable.is_none()));
        Some(f)
    }

    /// What `/healthz` says: `ok`, or `degraded` and why.
    pub fn health(&self) -> String {
        match self.refresh().and_then(|f| f.unreachable) {
            None => "ok\n".into(),
            Some(what) => format!(
                "degraded: the token store (Redis at {what}) does not answer; logins are served from memory where they can be\n"
            ),
        }
    }
}
