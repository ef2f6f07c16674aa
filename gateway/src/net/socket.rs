//! Sockets: listening with a large backlog, and the tuning every
//! connection gets, on either leg.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Connections the kernel queues before they are accepted.
const BACKLOG: u32 = 4096;

/// Listens on `addr` with [`BACKLOG`] (address reuse on, so that a restart
/// does not wait for the old connections' TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// TCP_NODELAY (no Nagle delay against delayed ACKs on small writes) and
/// keepalive, for either leg.
pub fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15));
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

#[cfg(test)]
mod tests {
    /// Both legs get TCP_NODELAY and keepalive.
    #[tokio::test]
    async fn tune_sets_nodelay_and_keepalive() {
        let l = super::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = l.local_addr().expect("addr");
        let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        for sock in [&c, &s] {
            super::tune(sock);
            assert!(sock.nodelay().expect("nodelay"));
            assert!(socket2::SockRef::from(sock).keepalive().expect("keepalive"));
        }
    }
}
