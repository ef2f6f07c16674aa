//! A read buffer that exists only while bytes are in flight: an idle
//! session (IMAP `IDLE`) holds no buffer at all. Both legs of a session
//! read through it when they are in clear ([`crate::net::stream::Stream`]);
//! over TLS, rustls's own plaintext buffer plays its part.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, DuplexStream, duplex};

    fn pair() -> (OnDemand<DuplexStream>, DuplexStream) {
        let (a, b) = duplex(1024);
        (OnDemand::new(a), b)
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
