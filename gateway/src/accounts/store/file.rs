//! The file backend of the token store: one JSON file per account under
//! `state_dir/tokens/`. Files are written atomically (temp file, fsync,
//! rename, fsync of the directory) with mode 0600 under the store's lock,
//! so a crash never leaves a half-written file; every write is a
//! compare-and-swap on the account's generation. The blocking calls run on
//! tokio's blocking threads ([`Backend`] below), never on the async workers
//! every session shares.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::contract::{Backend, Pending, Want};
use super::error::{StoreError, now_ms};
use super::record::{TokenFile, decode};

/// The generation of an account's first file: the time in milliseconds,
/// shifted left by 10 bits. The file store keeps nothing of a removed
/// account, so a generation counted from 1 would repeat after `forget` and
/// a new authorisation; counted from the time, a later file starts above
/// any earlier one unless that one was written over a thousand times per
/// millisecond since (each write is an fsync). Below 2^53 until the year
/// 2248, so it survives any JSON reader.
pub fn first_generation() -> u64 {
    now_ms() << 10
}

/// The directory of token files.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FileStore {
    pub fn new(state_dir: &Path) -> FileStore {
        FileStore {
            dir: state_dir.join("tokens"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a (lower-cased) user. Characters outside a safe set are
    /// percent-encoded, so no user name can escape the directory.
    pub fn path(&self, user: &str) -> PathBuf {
        let mut name = String::new();
        for (i, b) in user.bytes().enumerate() {
            let safe = b.is_ascii_alphanumeric()
                || matches!(b, b'@' | b'_' | b'+' | b'-')
                || (b == b'.' && i > 0);
            if safe {
                name.push(char::from(b));
            } else {
                name.push_str(&format!("%{b:02X}"));
            }
        }
        self.dir.join(format!("{name}.json"))
    }

    /// Reads a user's file; `None` when there is none. A file that names
    /// another account (copied or planted under this name) is damaged.
    pub fn load(&self, user: &str) -> Result<Option<TokenFile>, StoreError> {
        let path = self.path(user);
        match self.load_path(&path)? {
            Some(f) if f.user != user => Err(StoreError::Corrupt {
                path,
                reason: "it is another account's".into(),
            }),
            found => Ok(found),
        }
    }

    fn load_path(&self, path: &Path) -> Result<Option<TokenFile>, StoreError> {
        let bytes = match read_no_follow(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        decode(&bytes, path).map(Some)
    }

    /// Writes `file` atomically with mode 0600 if the account's file is
    /// still what `want` says (compare-and-swap on the generation, under
    /// the store's lock). The written file's generation is one above the
    /// one it replaces; a new account's first one is
    /// [`first_generation`]. It is returned.
    pub fn save(&self, file: &TokenFile, want: Want) -> Result<TokenFile, StoreError> {
        let _lock = self.lock()?;
        let current = self.load(&file.user)?;
        if !want.fits(current.as_ref().map(|c| c.generation)) {
            return Err(StoreError::Changed {
                user: file.user.clone(),
            });
        }
        let mut file = file.clone();
        file.generation = current.map_or_else(first_generation, |c| c.generation.wrapping_add(1));
        let body = serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Encode {
            what: "the token file",
            reason: e.to_string(),
        })?;
        write_atomic(&self.dir, &self.path(&file.user), &body)?;
        Ok(file)
    }

    /// The store's lock, held while a compare-and-swap reads and writes.
    fn lock(&self) -> Result<std::fs::File, StoreError> {
        let path = self.dir.join(".lock");
        let io = |action| {
            let path = path.clone();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        create_private_dir(&self.dir).map_err(io("create"))?;
        let f = open_lock(&path).map_err(io("open"))?;
        fs4::FileExt::lock(&f).map_err(io("lock"))?;
        Ok(f)
    }

    /// Deletes a user's file (under the store's lock). `Ok(false)` when
    /// there was none.
    pub fn remove(&self, user: &str) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let path = self.path(user);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io {
                action: "delete",
                path,
                source,
            }),
        }
    }

    /// Every readable token file, with the paths of unreadable ones.
    pub fn list(&self) -> (Vec<TokenFile>, Vec<StoreError>) {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (files, errors);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_token = path.extension().is_some_and(|e| e == "json")
                && !path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
            if !is_token {
                continue;
            }
            match self.load_path(&path) {
                Ok(Some(f)) => files.push(f),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        files.sort_by(|a, b| a.user.cmp(&b.user));
        (files, errors)
    }
}

/// Reads a file, never through a symbolic link (a link planted in place of
/// a token file is an error, not a redirection).
fn read_no_follow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    let mut bytes = Vec::new();
    o.open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Checks that the state directory and its `tokens` (where they exist)
/// are real directories of the gateway's own user that no other user may
/// write to: a directory that others may write is tightened to 0700 (the
/// warnings say so); a symbolic link, another user's directory or not a
/// directory at all is refused. With both ours and closed, nobody else
/// can swap a path under the store, so its files are opened by path (and
/// never through a link: see [`read_no_follow`]).
pub fn secure_dirs(state_dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut warnings = Vec::new();
    for dir in [state_dir.to_path_buf(), state_dir.join("tokens")] {
        let unsafe_dir = |reason: String| StoreError::Unsafe {
            path: dir.clone(),
            reason,
        };
        let meta = match std::fs::symlink_metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(StoreError::Io {
                    action: "inspect",
                    path: dir,
                    source,
                });
            }
        };
        if meta.file_type().is_symlink() {
            return Err(unsafe_dir(
                "is a symbolic link: the gateway keeps its state only in a real directory of its own; replace the link with a directory (or point state_dir at the target)".into(),
            ));
        }
        if !meta.is_dir() {
            return Err(unsafe_dir(
                "is not a directory; remove it or choose another state_dir".into(),
            ));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let me = nix::unistd::geteuid().as_raw();
            if meta.uid() != me {
                return Err(unsafe_dir(format!(
                    "belongs to user {}, not to the gateway's user {me}: another user could read or replace the tokens; give it to the gateway's user (chown) or choose another state_dir",
                    meta.uid()
                )));
            }
            let mode = meta.mode() & 0o7777;
            if mode & 0o022 != 0 {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(
                    |source| StoreError::Io {
                        action: "restrict the permissions of",
                        path: dir.clone(),
                        source,
                    },
                )?;
                warnings.push(format!(
                    "{} was writable by other users (mode {mode:04o}); its mode is now 0700",
                    dir.display()
                ));
            }
        }
    }
    Ok(warnings)
}

/// Opens (creating) the store's lock file, never through a symbolic link.
fn open_lock(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// Writes `path` (inside `dir`) atomically with mode 0600: a temporary file,
/// fsync, rename, fsync of the directory. A crash leaves the old file or the
/// new one, never half of either.
pub fn write_atomic(dir: &Path, path: &Path, body: &[u8]) -> Result<(), StoreError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    };
    create_private_dir(dir).map_err(io("create", dir))?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = open_private(&tmp).map_err(io("create", &tmp))?;
        f.write_all(body).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io("rename into", path))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

impl Backend for FileStore {
    fn location(&self, user: &str) -> PathBuf {
        self.path(user)
    }

    fn load<'a>(&'a self, user: &'a str) -> Pending<'a, Option<TokenFile>> {
        let user = user.to_owned();
        Box::pin(self.off_worker(move |f| f.load(&user)))
    }

    fn save<'a>(&'a self, file: TokenFile, want: Want) -> Pending<'a, TokenFile> {
        Box::pin(self.off_worker(move |f| f.save(&file, want)))
    }

    fn remove<'a>(&'a self, user: &'a str) -> Pending<'a, bool> {
        let user = user.to_owned();
        Box::pin(self.off_worker(move |f| f.remove(&user)))
    }

    fn list(&self) -> Pending<'_, (Vec<TokenFile>, Vec<StoreError>)> {
        Box::pin(self.off_worker(|f| Ok(f.list())))
    }
}

impl FileStore {
    /// Runs a file-store operation on tokio's blocking threads: its `fs`
    /// calls, `flock` and `fsync` never hold one of the async workers.
    async fn off_worker<T: Send + 'static>(
        &self,
        op: impl FnOnce(&FileStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let f = self.clone();
        tokio::task::spawn_blocking(move || op(&f))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Unavailable {
                    action: "use",
                    store: format!("the token files in {}", self.dir.display()),
                    reason: e.to_string(),
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::store::SealingKey;
    use crate::accounts::store::record::tests::{cheap_kdf, tokens};
    use secrecy::SecretString;

    #[test]
    fn atomic_private_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path());
        let key = SealingKey::derive(&SecretString::from("pw"), &cheap_kdf()).expect("derive");
        let file = TokenFile::seal("a@x.test", "p", &key, &tokens()).expect("seal");
        let file = store.save(&file, Want::Absent).expect("save");
        assert!(file.generation >= first_generation() - 60_000 * 1024);
        let loaded = store.load("a@x.test").expect("load").expect("present");
        assert_eq!(loaded, file);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path("a@x.test"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(store.dir())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "the file and the lock: {names:?}");
        assert!(store.remove("a@x.test").expect("remove"));
        assert!(!store.remove("a@x.test").expect("remove again"));
        assert!(store.load("a@x.test").expect("load").is_none());
    }

    #[test]
    fn writes_are_compare_and_swap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path());
        let key = SealingKey::derive(&SecretString::from("pw"), &cheap_kdf()).expect("derive");
        let first = TokenFile::seal("a@x.test", "p", &key, &tokens()).expect("seal");
        let v1 = store.save(&first, Want::Absent).expect("first write");
        assert!(matches!(
            store.save(&first, Want::Absent),
            Err(StoreError::Changed { .. })
        ));
        let v2 = store
            .save(&v1, Want::Generation(v1.generation))
            .expect("same file");
        assert_eq!(v2.generation, v1.generation + 1);
        // A writer that still holds v1 cannot overwrite v2.
        assert!(matches!(
            store.save(&v1, Want::Generation(v1.generation)),
            Err(StoreError::Changed { .. })
        ));
        // Nor bring a removed file back.
        assert!(store.remove("a@x.test").expect("remove"));
        assert!(matches!(
            store.save(&v2, Want::Generation(v2.generation)),
            Err(StoreError::Changed { .. })
        ));
        assert!(store.load("a@x.test").expect("load").is_none());
        // An explicit replacement always writes.
        // Nor mistake a new account's file for the removed one's: its
        // generation is not one a reader of the old file can hold.
        let v = store.save(&first, Want::Any).expect("any");
        assert!(
            v.generation > v2.generation,
            "{} > {}",
            v.generation,
            v2.generation
        );
        assert!(matches!(
            store.save(&v1, Want::Generation(v1.generation)),
            Err(StoreError::Changed { .. })
        ));
    }

    #[test]
    fn file_names_cannot_escape() {
        let store = FileStore::new(Path::new("/s"));
        assert_eq!(store.path("a@x.test"), Path::new("/s/tokens/a@x.test.json"));
        assert_eq!(store.path("../etc"), Path::new("/s/tokens/%2E.%2Fetc.json"));
        assert_eq!(store.path("a/b"), Path::new("/s/tokens/a%2Fb.json"));
    }

    #[test]
    fn corrupt_files_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path());
        std::fs::create_dir_all(store.dir()).expect("mkdir");
        std::fs::write(store.path("a@x.test"), b"{\"version\":1,").expect("write");
        assert!(matches!(
            store.load("a@x.test"),
            Err(StoreError::Corrupt { .. })
        ));
        let (files, errors) = store.list();
        assert!(files.is_empty());
        assert_eq!(errors.len(), 1);
    }
}
