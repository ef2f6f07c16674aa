//! Where a message received for Graph waits until it is sent: in memory up
//! to [`IN_MEMORY`] bytes, beyond that in a temporary file of the system's
//! temporary directory (`TMPDIR`; systemd's `PrivateTmp` for the Debian
//! unit). The file is created `0600` and unlinked at once, so nothing else
//! can open it and it is gone when the spool is dropped or cleared, even
//! if the process dies.

use std::io::SeekFrom;

use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

/// The largest message held in memory while it arrives.
pub const IN_MEMORY: usize = 1024 * 1024;

/// A new unlinked temporary file, `0600` whatever the umask (Linux's
/// `O_TMPFILE` creates it with the umask's mode).
fn private_file() -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::PermissionsExt as _;
    let file = tempfile::tempfile()?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// One message's bytes.
#[derive(Debug, Default)]
pub struct Spool {
    memory: Vec<u8>,
    file: Option<tokio::fs::File>,
    len: usize,
}

impl Spool {
    pub fn new() -> Spool {
        Spool::default()
    }

    /// Bytes received so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the message went to a file.
    pub fn on_disk(&self) -> bool {
        self.file.is_some()
    }

    /// Appends `bytes`, moving the message to a file once it outgrows
    /// [`IN_MEMORY`].
    pub async fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() && self.memory.len() + bytes.len() > IN_MEMORY {
            let file = tokio::task::spawn_blocking(private_file)
                .await
                .map_err(std::io::Error::other)??;
            let mut file = tokio::fs::File::from_std(file);
            file.write_all(&self.memory).await?;
            self.memory = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(f) => f.write_all(bytes).await?,
            None => self.memory.extend_from_slice(bytes),
        }
        self.len += bytes.len();
        Ok(())
    }

    /// Forgets the message (its file is closed, hence gone).
    pub fn clear(&mut self) {
        *self = Spool::default();
    }

    /// The message's first `n` bytes (fewer if it is shorter).
    pub async fn head(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_range(0, n.min(self.len), &mut out).await?;
        Ok(out)
    }

    /// Appends the bytes from `at` to the end to `out`.
    pub async fn append_from(&mut self, at: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        let n = self.len.saturating_sub(at);
        self.read_range(at, n, out).await
    }

    /// The message from `at`, borrowed when it is in memory.
    pub async fn from(&mut self, at: usize) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        if self.file.is_none() {
            return Ok(self.memory.get(at..).unwrap_or_default().into());
        }
        let mut out = Vec::new();
        self.append_from(at, &mut out).await?;
        Ok(out.into())
    }

    async fn read_range(&mut self, at: usize, n: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        match &mut self.file {
            None => {
                let end = (at + n).min(self.memory.len());
                out.extend_from_slice(self.memory.get(at..end).unwrap_or_default());
            }
            Some(f) => {
                f.flush().await?;
                f.seek(SeekFrom::Start(at as u64)).await?;
                out.reserve(n);
                let got = f.take(n as u64).read_to_end(out).await?;
                f.seek(SeekFrom::End(0)).await?;
                if got != n {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the spool file is shorter than what was written",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_large_message_goes_to_a_private_file_and_reads_back() {
        let mut s = Spool::new();
        s.push(b"Subject: x\r\n\r\n").await.expect("test value");
        assert!(!s.on_disk());
        let big = vec![b'a'; IN_MEMORY];
        s.push(&big).await.expect("test value");
        assert!(s.on_disk());
        s.push(b"end").await.expect("test value");
        assert_eq!(s.len(), 14 + IN_MEMORY + 3);
        {
            use std::os::unix::fs::PermissionsExt as _;
            let meta = s
                .file
                .as_ref()
                .expect("test value")
                .metadata()
                .await
                .expect("test value");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            // Unlinked: no name in any directory.
            assert_eq!(std::os::unix::fs::MetadataExt::nlink(&meta), 0);
        }
        assert_eq!(s.head(10).await.expect("test value"), b"Subject: x");
        let tail = s
            .from(14 + IN_MEMORY)
            .await
            .expect("test value")
            .into_owned();
        assert_eq!(tail, b"end");
        let mut all = b"H".to_vec();
        s.append_from(0, &mut all).await.expect("test value");
        assert_eq!(all.len(), 1 + s.len());
        assert!(all.ends_with(b"aend"));
        s.clear();
        assert!(!s.on_disk());
        assert_eq!(s.len(), 0);
    }

    #[tokio::test]
    async fn a_small_message_stays_in_memory() {
        let mut s = Spool::new();
        s.push(b"abc").await.expect("test value");
        s.push(b"def").await.expect("test value");
        assert!(!s.on_disk());
        assert_eq!(&*s.from(2).await.expect("test value"), b"cdef");
        assert_eq!(s.head(100).await.expect("test value"), b"abcdef");
    }
}
