//! The gateway-wide bound on Argon2 work. Each derivation takes about
//! 19 MiB and tens of milliseconds of one core; without a bound, a flood of
//! wrong passwords takes as many blocking threads (and as much memory) as
//! tokio allows. At most `parallel` derivations run at once (about the
//! number of cores), at most `queue` more wait; past that an attempt is
//! refused at once as "busy".

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use crate::accounts::store::Kdf;

/// The limiter was full.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("too many password checks are queued")]
pub struct Busy;

#[derive(Debug)]
pub struct Limiter {
    running: Semaphore,
    /// Waiting or running.
    admitted: AtomicUsize,
    max_admitted: usize,
    /// Parameters of the derivation that stands in for a missing file.
    dummy: Kdf,
}

/// The process's one limiter: every Argon2 derivation or verification of
/// the gateway (logins, password changes, sealing a sign-in, the CLI's
/// commands) runs through it.
pub fn limiter() -> &'static Limiter {
    static LIMITER: OnceLock<Limiter> = OnceLock::new();
    LIMITER.get_or_init(Limiter::default)
}

impl Default for Limiter {
    fn default() -> Limiter {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Limiter::new(cores, 32 * cores)
    }
}

impl Limiter {
    pub fn new(parallel: usize, queue: usize) -> Limiter {
        Limiter {
            running: Semaphore::new(parallel.max(1)),
            admitted: AtomicUsize::new(0),
            max_admitted: parallel.max(1) + queue,
            dummy: Kdf::generate(),
        }
    }

    /// Runs `f` (blocking work) on a blocking thread once a slot is free.
    pub async fn run<T, F>(&self, f: F) -> Result<T, Busy>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.max_admitted {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy);
        }
        struct Admitted<'a>(&'a AtomicUsize);
        impl Drop for Admitted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _admitted = Admitted(&self.admitted);
        let _permit = self.running.acquire().await.map_err(|_| Busy)?;
        tokio::task::spawn_blocking(f).await.map_err(|_| Busy)
    }

    /// The parameters (the store's, with a salt of this process) of the
    /// derivation that a name without a token file costs, so that it costs
    /// (and answers) like a wrong password.
    pub fn dummy_kdf(&self) -> &Kdf {
        &self.dummy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bounds_running_and_queued_work() {
        let l = Arc::new(Limiter::new(2, 3));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (l, running, peak) = (l.clone(), running.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                l.run(move || {
                    let n = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        // 2 running + 3 queued: a sixth is refused at once.
        assert!(l.run(|| ()).await.is_err());
        for t in tasks {
            assert!(t.await.expect("task").is_ok());
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert!(l.run(|| ()).await.is_ok(), "slots are given back");
    }
}
