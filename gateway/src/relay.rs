//! After login: a plain byte relay both ways. Nothing is parsed.
//!
//! The session ends when the upstream closes (the client is then closed
//! too: a mail server that hung up has nothing more to say). When the client
//! closes first, the upstream's write side is shut down and its last replies
//! are still delivered for up to [`DRAIN`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long the upstream may keep talking after the client closed.
const DRAIN: Duration = Duration::from_secs(5);
/// Copy buffer per direction.
const BUF: usize = 16 * 1024;

/// Copies `from` to `to` until EOF, counting bytes into `count`, then shuts
/// `to` down.
async fn pump<R, W>(mut from: R, mut to: W, count: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Flushes what each side had already sent beyond the login (`to_upstream`:
/// commands the client pipelined; `to_client`: bytes the server sent after
/// its OK), then relays both ways. Returns the bytes relayed
/// (client→upstream, upstream→client).
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    to_upstream: &[u8],
    to_client: &[u8],
) -> std::io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client_r, mut client_w) = tokio::io::split(client);
    let (upstream_r, mut upstream_w) = tokio::io::split(upstream);
    if !to_client.is_empty() {
        client_w.write_all(to_client).await?;
    }
    if !to_upstream.is_empty() {
        upstream_w.write_all(to_upstream).await?;
        upstream_w.flush().await?;
    }
    let up_bytes = AtomicU64::new(to_upstream.len() as u64);
    let down_bytes = AtomicU64::new(to_client.len() as u64);
    let up = pump(client_r, upstream_w, &up_bytes);
    let down = pump(upstream_r, client_w, &down_bytes);
    tokio::pin!(up, down);
    let result = tokio::select! {
        r = &mut down => r,
        r = &mut up => {
            // The client is gone; let the upstream finish its replies.
            let _ = tokio::time::timeout(DRAIN, &mut down).await;
            r
        }
    };
    result.map(|()| {
        (
            up_bytes.load(Ordering::Relaxed),
            down_bytes.load(Ordering::Relaxed),
        )
    })
}

/// [`relay`], logging how the session ended.
pub async fn run<C, U>(client: C, upstream: U, to_upstream: &[u8], to_client: &[u8])
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    match relay(client, upstream, to_upstream, to_client).await {
        Ok((up, down)) => tracing::info!(bytes_up = up, bytes_down = down, "session closed"),
        Err(e) => tracing::info!(error = %e, "session ended"),
    }
}
