//! After login: a plain byte relay both ways. Nothing is parsed.
//!
//! One task drives both directions. Each direction writes straight out of
//! its source's read buffer ([`AsyncBufRead`]): for a TLS source that is
//! rustls's own plaintext buffer (no copy of ours); for a plain socket it is
//! an [`OnDemand`](crate::net::buffer::OnDemand) buffer that exists only while bytes are in flight, so an
//! idle session (IMAP `IDLE`) holds no relay buffer at all. Writes are
//! flushed when the source has nothing more to give, not after each chunk.
//!
//! The session ends when the upstream closes (the client is then closed
//! too: a mail server that hung up has nothing more to say). When the client
//! closes first, the upstream's write side is shut down and its last replies
//! are still delivered for up to [`DRAIN`].

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};

use crate::net::stream::Stream;
use crate::observe::metrics::Meters;
use prometheus_client::metrics::counter::Counter;

/// How long the upstream may keep talking after the client closed.
const DRAIN: Duration = Duration::from_secs(5);
/// One direction of the relay.
#[derive(Debug)]
struct Lane {
    bytes: u64,
    /// The metrics counter of this direction.
    meter: Counter,
    /// Bytes were written since the last flush.
    unflushed: bool,
}

impl Lane {
    /// Moves bytes from `src` to `dst` until `src` would block (after
    /// flushing `dst`), `dst` would block (the bytes wait in `src`'s
    /// buffer), or `src` ends (`dst`'s write side is then shut down:
    /// `Ready(Ok)`).
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, src: &mut R, dst: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            let data = match Pin::new(&mut *src).poll_fill_buf(cx) {
                Poll::Pending => {
                    if self.unflushed {
                        ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(r) => r?,
            };
            if data.is_empty() {
                // Shutting down flushes; a peer already gone is no error.
                let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut *dst).poll_write(cx, data))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Pin::new(&mut *src).consume(n);
            self.bytes += n as u64;
            self.meter.inc_by(n as u64);
            self.unflushed = true;
        }
    }
}

/// Flushes what each side had already sent beyond the login (`to_upstream`:
/// commands the client pipelined; `to_client`: bytes the server sent after
/// its OK), then relays both ways. Returns the bytes relayed
/// (client→upstream, upstream→client).
pub async fn relay<C, U>(
    mut client: C,
    mut upstream: U,
    to_upstream: &[u8],
    to_client: &[u8],
    meters: Meters,
) -> io::Result<(u64, u64)>
where
    C: AsyncBufRead + AsyncWrite + Unpin,
    U: AsyncBufRead + AsyncWrite + Unpin,
{
    if !to_client.is_empty() {
        client.write_all(to_client).await?;
        client.flush().await?;
    }
    if !to_upstream.is_empty() {
        upstream.write_all(to_upstream).await?;
        upstream.flush().await?;
    }
    meters.to_upstream.inc_by(to_upstream.len() as u64);
    meters.to_client.inc_by(to_client.len() as u64);
    let mut up = Lane {
        bytes: to_upstream.len() as u64,
        meter: meters.to_upstream,
        unflushed: false,
    };
    let mut down = Lane {
        bytes: to_client.len() as u64,
        meter: meters.to_client,
        unflushed: false,
    };
    // Set once the client is gone: (how its side ended, the drain deadline).
    let mut client_gone: Option<(io::Result<()>, Pin<Box<tokio::time::Sleep>>)> = None;
    let result = poll_fn(|cx| {
        if let Poll::Ready(r) = down.poll(cx, &mut upstream, &mut client) {
            return Poll::Ready(r);
        }
        if client_gone.is_none()
            && let Poll::Ready(r) = up.poll(cx, &mut client, &mut upstream)
        {
            client_gone = Some((r, Box::pin(tokio::time::sleep(DRAIN))));
        }
        if let Some((r, deadline)) = client_gone.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(std::mem::replace(r, Ok(())));
        }
        Poll::Pending
    })
    .await;
    // The upstream ended first: the client's side may still have been fine.
    let result = match client_gone {
        Some((r, _)) if result.is_ok() => r,
        _ => result,
    };
    result.map(|()| (up.bytes, down.bytes))
}

/// [`relay`] between the two legs of a session, logging how it ended.
pub async fn run(
    client: Stream,
    upstream: Stream,
    to_upstream: &[u8],
    to_client: &[u8],
    meters: Meters,
) {
    match relay(client, upstream, to_upstream, to_client, meters).await {
        Ok((up, down)) => tracing::info!(bytes_up = up, bytes_down = down, "session closed"),
        Err(e) => tracing::info!(error = %e, "session ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::buffer::OnDemand;
    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    type Side = OnDemand<DuplexStream>;

    fn pair() -> (Side, DuplexStream) {
        let (a, b) = duplex(1024);
        (OnDemand::new(a), b)
    }

    #[tokio::test]
    async fn relays_both_ways_with_leftovers_and_counts() {
        let (client, mut client_peer) = pair();
        let (upstream, mut upstream_peer) = pair();
        let meters = Meters::default();
        let seen = meters.clone();
        let task = tokio::spawn(async move {
            relay(client, upstream, b"a1 NOOP\r\n", b"* 3 EXISTS\r\n", meters).await
        });
        let mut buf = [0u8; 64];
        let n = client_peer.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"* 3 EXISTS\r\n");
        let n = upstream_peer.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"a1 NOOP\r\n");
        // A transfer bigger than the pipe: backpressure both ways.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            upstream_peer.write_all(&sent).await.expect("write");
            upstream_peer
        });
        let mut got = vec![0u8; big.len()];
        client_peer.read_exact(&mut got).await.expect("read big");
        assert_eq!(got, big);
        let mut upstream_peer = writer.await.expect("join");
        client_peer
            .write_all(b"a2 LOGOUT\r\n")
            .await
            .expect("write");
        let n = upstream_peer.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"a2 LOGOUT\r\n");
        // The upstream hangs up: the session ends and the client sees EOF.
        drop(upstream_peer);
        let (up, down) = task.await.expect("join").expect("relay");
        assert_eq!(up, 9 + 11);
        assert_eq!(down, 12 + 200_000);
        assert_eq!(seen.to_upstream.get(), up, "the metrics see the same bytes");
        assert_eq!(seen.to_client.get(), down);
        assert_eq!(client_peer.read(&mut buf).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn client_close_lets_the_upstream_finish() {
        let (client, mut client_peer) = pair();
        let (upstream, mut upstream_peer) = pair();
        let task =
            tokio::spawn(async move { relay(client, upstream, b"", b"", Meters::default()).await });
        client_peer.write_all(b"a LOGOUT\r\n").await.expect("write");
        client_peer.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        // The upstream sees the command, then EOF (its write side was shut).
        upstream_peer.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"a LOGOUT\r\n");
        upstream_peer
            .write_all(b"* BYE\r\na OK\r\n")
            .await
            .expect("write");
        drop(upstream_peer);
        let mut reply = Vec::new();
        client_peer.read_to_end(&mut reply).await.expect("read");
        assert_eq!(reply, b"* BYE\r\na OK\r\n");
        task.await.expect("join").expect("relay");
    }
}
