//! The fleet of one process (the file store). Its backoff is the
//! process's own ([`crate::accounts::backoff::Backoff`], which the accounts
//! always consult): nothing more to count here. Its refresh lease is the
//! account's lock in [`crate::accounts`] (single flight): a lease here is
//! always granted. Its blobs live in memory until they expire.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::contract::{FleetBackend, Lease, Pending};

/// Blobs held at once; past it the one closest to expiring goes.
const MAX_BLOBS: usize = 50_000;

#[derive(Debug, Default)]
pub struct Local {
    blobs: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
}

impl Local {
    fn blobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<u8>, Instant)>> {
        self.blobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FleetBackend for Local {
    fn shared(&self) -> bool {
        false
    }

    fn try_lease<'a>(&'a self, _name: &'a str, _ttl: Duration) -> Pending<'a, Option<Lease>> {
        Box::pin(async { Ok(Some(Lease::sole())) })
    }

    fn failure<'a>(&'a self, _user: &'a str, _addr: IpAddr, _familiar: bool) -> Pending<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn success<'a>(&'a self, _user: &'a str, _addr: IpAddr, _familiar: bool) -> Pending<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn locked<'a>(
        &'a self,
        _user: &'a str,
        _addr: IpAddr,
        _familiar: bool,
    ) -> Pending<'a, Duration> {
        Box::pin(async { Ok(Duration::ZERO) })
    }

    fn put<'a>(
        &'a self,
        name: &'a str,
        value: Vec<u8>,
        ttl: Duration,
        only_new: bool,
    ) -> Pending<'a, bool> {
        Box::pin(async move {
            let now = Instant::now();
            let mut blobs = self.blobs();
            if blobs.get(name).is_some_and(|(_, until)| *until > now) && only_new {
                return Ok(false);
            }
            if blobs.len() >= MAX_BLOBS {
                blobs.retain(|_, (_, until)| *until > now);
            }
            if blobs.len() >= MAX_BLOBS
                && let Some(soonest) = blobs
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone())
            {
                blobs.remove(&soonest);
            }
            blobs.insert(name.to_owned(), (value, now + ttl));
            Ok(true)
        })
    }

    fn get<'a>(&'a self, name: &'a str, take: bool) -> Pending<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let mut blobs = self.blobs();
            let live = blobs
                .get(name)
                .is_some_and(|(_, until)| *until > Instant::now());
            if !live {
                blobs.remove(name);
                return Ok(None);
            }
            Ok(if take {
                blobs.remove(name).map(|(v, _)| v)
            } else {
                blobs.get(name).map(|(v, _)| v.clone())
            })
        })
    }

    fn forget<'a>(&'a self, name: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            self.blobs().remove(name);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_expire_are_taken_once_and_only_new_keeps_the_first() {
        let l = Local::default();
        assert!(
            l.put("a", b"1".to_vec(), Duration::from_secs(60), true)
                .await
                .expect("put")
        );
        assert!(
            !l.put("a", b"2".to_vec(), Duration::from_secs(60), true)
                .await
                .expect("put")
        );
        assert_eq!(l.get("a", false).await.expect("get"), Some(b"1".to_vec()));
        assert_eq!(l.get("a", true).await.expect("take"), Some(b"1".to_vec()));
        assert_eq!(l.get("a", true).await.expect("take"), None);
        l.put("b", b"x".to_vec(), Duration::from_millis(1), false)
            .await
            .expect("put");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(l.get("b", false).await.expect("get"), None, "expired");
    }
}
