//! After login: a plain byte relay both ways. Nothing is parsed.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Flushes what each side had already sent beyond the login (`to_upstream`:
/// commands the client pipelined; `to_client`: bytes the server sent after
/// its OK), then copies both ways until either side closes. Returns the bytes
/// relayed (client→upstream, upstream→client).
pub async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    to_upstream: &[u8],
    to_client: &[u8],
) -> std::io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    if !to_client.is_empty() {
        client.write_all(to_client).await?;
    }
    if !to_upstream.is_empty() {
        upstream.write_all(to_upstream).await?;
        upstream.flush().await?;
    }
    let (up, down) = tokio::io::copy_bidirectional(client, upstream).await?;
    Ok((up + to_upstream.len() as u64, down + to_client.len() as u64))
}
