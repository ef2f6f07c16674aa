//! Clients logging in to a fleet of gateways: each of them, round-robin
//! over the instances alive now, one IMAP login after another (20 ms
//! apart) until a deadline or [`Logins::stop`]; every login is recorded
//! with when it ended, where, and how.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::client::LineClient;
use crate::harness::Running;

/// `n` instances of the binary on `text` (instance numbers from 0), each
/// ready once it listens.
pub fn instances(env: &crate::harness::Env, text: &str, n: usize) -> Vec<Option<Running>> {
    (0..n)
        .map(|i| Some(env.instance(text, i, "listening")))
        .collect()
}

/// The IMAP listener of an instance.
pub fn imap_address(r: &Running) -> SocketAddr {
    r.address("listening", Some("imap"))
}

/// The IMAP listeners of the instances still running.
pub fn addresses(instances: &[Option<Running>]) -> Vec<SocketAddr> {
    instances.iter().flatten().map(imap_address).collect()
}

/// How a login ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Answered, but not `OK`: the answer.
    Failed(String),
    /// No answer: the connection broke or timed out (an instance killed).
    Cut,
}

/// A login: when it ended (since [`Logins::begin`]), through which
/// instance, and how.
pub type Login = (Duration, SocketAddr, Outcome);

pub struct Logins {
    pub begin: Instant,
    live: Arc<RwLock<Vec<SocketAddr>>>,
    records: Arc<Mutex<Vec<Login>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Logins {
    /// `clients` clients logging in as `user` with `password` to the
    /// instances at `live`, until `until` (or [`Logins::stop`]).
    pub fn start(
        clients: usize,
        live: Vec<SocketAddr>,
        user: &str,
        password: &str,
        until: Option<Instant>,
    ) -> Logins {
        let live = Arc::new(RwLock::new(live));
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let begin = Instant::now();
        let tasks = (0..clients)
            .map(|c| {
                let (live, records, stop) = (live.clone(), records.clone(), stop.clone());
                let (user, password) = (user.to_owned(), password.to_owned());
                tokio::spawn(async move {
                    let mut n = c;
                    while !stop.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u)
                    {
                        let target = {
                            let l = live.read().unwrap();
                            l[n % l.len()]
                        };
                        n += 1;
                        let (user, password) = (user.clone(), password.clone());
                        let one = tokio::spawn(async move {
                            let mut client = LineClient::greeted(target).await;
                            client.login("a", &user, &password).await
                        });
                        let outcome = match tokio::time::timeout(Duration::from_secs(10), one).await
                        {
                            Ok(Ok(r)) if r.starts_with("a OK") => Outcome::Ok,
                            Ok(Ok(r)) => Outcome::Failed(r),
                            _ => Outcome::Cut,
                        };
                        records
                            .lock()
                            .unwrap()
                            .push((begin.elapsed(), target, outcome));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Logins {
            begin,
            live,
            records,
            stop,
            tasks,
        }
    }

    /// `clients` clients logging in as the harness's USER to the running
    /// `instances` for `run`.
    pub fn for_a_while(instances: &[Option<Running>], clients: usize, run: Duration) -> Logins {
        Logins::start(
            clients,
            addresses(instances),
            crate::harness::USER,
            crate::harness::PASSWORD,
            Some(Instant::now() + run),
        )
    }

    /// The instance at `addr` gets no more logins.
    pub fn remove(&self, addr: SocketAddr) {
        self.live.write().unwrap().retain(|a| *a != addr);
    }

    /// The instance at `addr` gets logins too.
    pub fn add(&self, addr: SocketAddr) {
        self.live.write().unwrap().push(addr);
    }

    /// The logins so far.
    pub fn so_far(&self) -> Vec<Login> {
        self.records.lock().unwrap().clone()
    }

    /// Stops the clients (or waits for their deadline) and returns every
    /// login.
    pub async fn finish(self, stop: bool) -> Vec<Login> {
        if stop {
            self.stop.store(true, Ordering::Relaxed);
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.records.lock().unwrap().clone()
    }
}
