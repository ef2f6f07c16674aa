//! After login: a plain byte relay both ways. Nothing is parsed.
//!
//! One task drives both directions. Each direction writes straight out of
//! its source's read buffer ([`AsyncBufRead`]): for a TLS source that is
//! rustls's own plaintext buffer (no copy of ours); for a plain socket it is
//! an [`OnDemand`] buffer that exists only while bytes are in flight, so an
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

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::observe::metrics::Meters;
use crate::session::tls::ClientStream;
use prometheus_client::metrics::counter::Counter;

/// How long the upstream may keep talking after the client closed.
const DRAIN: Duration = Duration::from_secs(5);
/// The most an [`OnDemand`] buffer reads at once.
const READ_SIZE: usize = 64 * 1024;

/// A buffered reader whose buffer is allocated when the source has bytes
/// and released as soon as they are all consumed and the source would
/// block.
#[derive(Debug)]
pub struct OnDemand<S> {
    inner: S,
    buf: Option<BytesMut>,
}

impl<S> OnDemand<S> {
    pub fn new(inner: S) -> Self {
        OnDemand { inner, buf: None }
    }

    /// The stream; bytes still buffered are dropped (none are while only
    /// [`AsyncRead`] was used: reads bypass an empty buffer).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Whether a buffer is held now.
    pub fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }
}

impl<S: AsyncRead + Unpin> AsyncBufRead for OnDemand<S> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.buf.as_ref().is_none_or(|b| b.is_empty()) {
            let buf = this
                .buf
                .get_or_insert_with(|| BytesMut::with_capacity(READ_SIZE));
            // Reclaims the space consumed at the front (the buffer is empty).
            buf.reserve(READ_SIZE);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, buf) {
                Poll::Pending => {
                    this.buf = None;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    this.buf = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
        Poll::Ready(Ok(this.buf.as_deref().unwrap_or_default()))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        if let Some(b) = self.get_mut().buf.as_mut() {
            b.advance(amt.min(b.len()));
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for OnDemand<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.buf.as_ref().is_none_or(|b| b.is_empty()) {
            // Nothing buffered: read straight into the caller's buffer.
            return Pin::new(&mut self.get_mut().inner).poll_read(cx, out);
        }
        let data = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = data.len().min(out.remaining());
        out.put_slice(&data[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for OnDemand<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

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

/// [`relay`], logging how the session ended.
pub async fn run<U>(
    client: ClientStream,
    upstream: U,
    to_upstream: &[u8],
    to_client: &[u8],
    meters: Meters,
) where
    U: AsyncBufRead + AsyncWrite + Unpin,
{
    match relay(client, upstream, to_upstream, to_client, meters).await {
        Ok((up, down)) => tracing::info!(bytes_up = up, bytes_down = down, "session closed"),
        Err(e) => tracing::info!(error = %e, "session ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[tokio::test]
    async fn on_demand_holds_no_buffer_while_idle() {
        let (mut r, mut peer) = pair();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut r).poll_fill_buf(&mut cx).is_pending());
        assert!(!r.holds_buffer());
        peer.write_all(b"hello").await.expect("write");
        match Pin::new(&mut r).poll_fill_buf(&mut cx) {
            Poll::Ready(Ok(d)) => assert_eq!(d, b"hello"),
            other => panic!("expected data, got {other:?}"),
        }
        assert!(r.holds_buffer());
        Pin::new(&mut r).consume(2);
        match Pin::new(&mut r).poll_fill_buf(&mut cx) {
            Poll::Ready(Ok(d)) => assert_eq!(d, b"llo"),
            other => panic!("expected the rest, got {other:?}"),
        }
        Pin::new(&mut r).consume(3);
        assert!(Pin::new(&mut r).poll_fill_buf(&mut cx).is_pending());
        assert!(!r.holds_buffer(), "the buffer is released once drained");
        drop(peer);
        match Pin::new(&mut r).poll_fill_buf(&mut cx) {
            Poll::Ready(Ok(d)) => assert!(d.is_empty(), "EOF"),
            other => panic!("expected EOF, got {other:?}"),
        }
    }
}
