//! A TCP load balancer for tests: one loopback address in front of several
//! backends. New connections go to the backend chosen last; switching also
//! cuts the connections open, so that a browser's next request (on a new
//! connection) reaches the other backend, as when a balancer moves a
//! client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Balancer {
    pub address: SocketAddr,
    backends: usize,
    current: Arc<AtomicUsize>,
    /// Bumped to cut the connections open.
    cut: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Listens on `address` (a port known beforehand) in front of
    /// `backends`, sending new connections to the first.
    pub async fn start(address: SocketAddr, backends: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind(address)
            .await
            .expect("the balancer's port");
        let current = Arc::new(AtomicUsize::new(0));
        let (cut, _) = watch::channel(0u64);
        let (c, k, n) = (current.clone(), cut.clone(), backends.len());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let to = backends[c.load(Ordering::SeqCst) % backends.len()];
                tokio::spawn(forward(client, to, k.subscribe()));
            }
        });
        Balancer {
            address,
            backends: n,
            current,
            cut,
            accept,
        }
    }

    /// Sends new connections to backend `i` and cuts the open ones.
    pub fn switch_to(&self, i: usize) {
        assert!(i < self.backends);
        self.current.store(i, Ordering::SeqCst);
        self.cut.send_modify(|g| *g += 1);
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut.send_modify(|g| *g += 1);
    }
}

async fn forward(mut client: TcpStream, to: SocketAddr, mut cut: watch::Receiver<u64>) {
    let Ok(mut server) = TcpStream::connect(to).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.changed() => {}
    }
}
