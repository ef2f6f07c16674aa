//! The fleet's contract: see [`crate::accounts::fleet`].

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::accounts::store::error::StoreError;

/// A boxed future of a fleet backend.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What a fleet backend does.
pub trait FleetBackend: Send + Sync + std::fmt::Debug {
    /// Whether other gateways share this state (a lease or a blob can be
    /// another process's).
    fn shared(&self) -> bool;
    /// Takes the lease `name` for `ttl` if nobody holds it (renewed while
    /// held; it expires when its holder dies); `None` while another holds
    /// it.
    fn try_lease<'a>(&'a self, name: &'a str, ttl: Duration) -> Pending<'a, Option<Lease>>;
    /// Records a failed login of `user` from `addr` (its class: an address
    /// the account knows, or not), for the fleet.
    fn failure<'a>(&'a self, user: &'a str, addr: IpAddr, familiar: bool) -> Pending<'a, ()>;
    /// Clears the counters of a success's class and address.
    fn success<'a>(&'a self, user: &'a str, addr: IpAddr, familiar: bool) -> Pending<'a, ()>;
    /// How much longer the fleet holds an attempt back.
    fn locked<'a>(&'a self, user: &'a str, addr: IpAddr, familiar: bool) -> Pending<'a, Duration>;
    /// Stores a blob for `ttl`; with `only_new`, only when none has that
    /// name. Whether it was stored.
    fn put<'a>(
        &'a self,
        name: &'a str,
        value: Vec<u8>,
        ttl: Duration,
        only_new: bool,
    ) -> Pending<'a, bool>;
    /// A blob, if there is one; with `take`, deleted as it is read (only
    /// one reader gets it).
    fn get<'a>(&'a self, name: &'a str, take: bool) -> Pending<'a, Option<Vec<u8>>>;
    /// Deletes a blob.
    fn forget<'a>(&'a self, name: &'a str) -> Pending<'a, ()>;
}

/// A handle on the fleet's backend.
#[derive(Debug, Clone)]
pub struct Fleet(Arc<dyn FleetBackend>);

impl Fleet {
    pub fn new(backend: impl FleetBackend + 'static) -> Fleet {
        Fleet(Arc::new(backend))
    }
}

impl std::ops::Deref for Fleet {
    type Target = dyn FleetBackend;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

/// A held lease; given up by [`Lease::release`], or by expiring when
/// dropped without it.
pub struct Lease(Option<Box<dyn Held>>);

/// What a backend's lease does when given up.
pub trait Held: Send {
    fn release(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

impl Lease {
    /// A lease that nothing else can contend for (one process).
    pub fn sole() -> Lease {
        Lease(None)
    }

    pub fn held(h: impl Held + 'static) -> Lease {
        Lease(Some(Box::new(h)))
    }

    pub async fn release(self) {
        if let Some(h) = self.0 {
            h.release().await;
        }
    }
}
