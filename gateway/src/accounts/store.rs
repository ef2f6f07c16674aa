//! The sealed token store (SPEC §4).
//!
//! One JSON file per account under `state_dir/tokens/`. The tokens are sealed
//! with XChaCha20-Poly1305 under a key derived from the local password with
//! Argon2id; decrypting them *is* the password check. The metadata (user,
//! provider, times, last error) stays in clear so `mailgate accounts` needs no
//! password. Files are written atomically (temp file, fsync, rename, fsync of
//! the directory) with mode 0600, so a crash never leaves a half-written file,
//! and nothing here ever deletes or rewrites a file because a password was
//! wrong.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Current file format version.
const VERSION: u32 = 1;
/// OWASP's recommended Argon2id parameters: 19 MiB, 2 passes, 1 lane.
const M_COST: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged ({reason}); run `mailgate forget USER` and authorise the account again"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("the password does not open the stored tokens")]
    WrongPassword,
    /// A shared store cannot be reached or refused the request.
    #[error(
        "cannot {action} {store}: {reason}; check that it is running and reachable, and the address and password in [store] url"
    )]
    Unavailable {
        action: &'static str,
        store: String,
        reason: String,
    },
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// A compare-and-swap write found another file (or none) where it
    /// expected the one it read: someone else (`mailgate forget`, `login`,
    /// `passwd`, another process) changed the account meanwhile.
    #[error(
        "the token file of {user} was changed or removed by someone else meanwhile; nothing was written"
    )]
    Changed { user: String },
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// The state directory (or its `tokens`) is not safely ours.
    #[error("{path} {reason}")]
    Unsafe { path: PathBuf, reason: String },
    /// The shared store would drop keys when full: accounts' sealed tokens
    /// among them (SPEC §9).
    #[error(
        "{store} evicts keys when its memory is full (maxmemory-policy {policy}): it would drop accounts' sealed tokens to make room for sessions and sign-ins. Set maxmemory-policy noeviction (in redis.conf, and `CONFIG SET maxmemory-policy noeviction` to apply it now), or give mailgate a Redis of its own"
    )]
    Evicting { store: String, policy: String },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The Argon2id parameters and salt a file was sealed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kdf {
    pub algorithm: String,
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    /// base64
    pub salt: String,
}

/// The costliest Argon2id parameters a stored record may name: anything
/// beyond is a damaged (or planted) record, never a reason to spend
/// seconds of CPU or gigabytes of memory on one login. Four times the
/// memory and the passes the gateway itself seals with, two lanes.
pub const MAX_M_COST: u32 = 4 * M_COST;
pub const MAX_T_COST: u32 = 4 * T_COST;
pub const MAX_P_COST: u32 = 2;

impl Kdf {
    /// Whether the parameters are within what a record of this gateway can
    /// name (see [`MAX_M_COST`]); the reason when not.
    pub fn check(&self) -> Result<(), String> {
        if self.algorithm != "argon2id" {
            return Err(format!("unknown key derivation {}", self.algorithm));
        }
        if !(8..=MAX_M_COST).contains(&self.m_cost)
            || !(1..=MAX_T_COST).contains(&self.t_cost)
            || !(1..=MAX_P_COST).contains(&self.p_cost)
        {
            return Err(format!(
                "its Argon2id parameters (m={}, t={}, p={}) are outside what this gateway seals with",
                self.m_cost, self.t_cost, self.p_cost
            ));
        }
        if !(16..=88).contains(&self.salt.len()) {
            return Err("its salt has an impossible length".into());
        }
        Ok(())
    }

    /// Fresh parameters with a random salt.
    pub fn generate() -> Kdf {
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        Kdf {
            algorithm: "argon2id".into(),
            m_cost: M_COST,
            t_cost: T_COST,
            p_cost: P_COST,
            salt: STANDARD.encode(salt),
        }
    }
}

/// A key derived from a local password. Wiped on drop.
#[derive(Clone, ZeroizeOnDrop)]
pub struct SealingKey {
    key: [u8; 32],
    #[zeroize(skip)]
    kdf: Kdf,
}

impl SealingKey {
    /// The parameters and salt it was derived with.
    pub fn kdf(&self) -> &Kdf {
        &self.kdf
    }
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey([REDACTED])")
    }
}

impl SealingKey {
    /// Derives the key (Argon2id; tens of milliseconds: call off the async
    /// threads).
    pub fn derive(password: &SecretString, kdf: &Kdf) -> Result<SealingKey, StoreError> {
        kdf.check().map_err(StoreError::Kdf)?;
        let salt = STANDARD
            .decode(&kdf.salt)
            .map_err(|_| StoreError::Kdf("salt is not base64".into()))?;
        let params = argon2::Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(32))
            .map_err(|e| StoreError::Kdf(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = [0u8; 32];
        argon
            .hash_password_into(password.expose_secret().as_bytes(), &salt, &mut key)
            .map_err(|e| StoreError::Kdf(e.to_string()))?;
        Ok(SealingKey {
            key,
            kdf: kdf.clone(),
        })
    }
}

/// The secret part of a token file.
#[derive(Clone, Default, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Tokens {
    pub refresh_token: Option<String>,
    pub access_token: Option<String>,
    /// Unix seconds.
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// One account's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    pub version: u32,
    /// Lower-cased login name.
    pub user: String,
    pub provider: String,
    pub sealed_at: u64,
    pub last_refresh: Option<u64>,
    pub last_error: Option<String>,
    /// Bumped by every write; with the rest of the file it tells a cache
    /// whether the file is still the one it read.
    #[serde(default)]
    pub generation: u64,
    /// Unix seconds when the sealed access token expires (a copy in clear,
    /// for `mailgate accounts`; not a secret).
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Set when the provider answered `invalid_grant`: the refresh token is
    /// dead and the user must authorise again.
    #[serde(default)]
    pub needs_authorization: bool,
    /// Microsoft: the tenant (`tid`) the tokens were signed in from; a
    /// later sign-in from another one is refused (see
    /// [`crate::accounts::identity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The addresses the owner logged in from with the right password
    /// (hashed, newest first; see [`crate::accounts::backoff`]): strangers'
    /// failures do not hold the owner back there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub familiar: Vec<String>,
    pub kdf: Kdf,
    /// base64, 24 bytes
    pub nonce: String,
    /// base64
    pub ciphertext: String,
}

fn aad(user: &str) -> Vec<u8> {
    format!("mailgate-tokens-v{VERSION}:{user}").into_bytes()
}

impl TokenFile {
    /// Seals `tokens` for `user` under `key`.
    pub fn seal(
        user: &str,
        provider: &str,
        key: &SealingKey,
        tokens: &Tokens,
    ) -> Result<TokenFile, StoreError> {
        let mut file = TokenFile {
            version: VERSION,
            user: user.to_owned(),
            provider: provider.to_owned(),
            sealed_at: now(),
            last_refresh: None,
            last_error: None,
            generation: 0,
            expires_at: None,
            needs_authorization: false,
            tenant: None,
            familiar: Vec::new(),
            kdf: key.kdf.clone(),
            nonce: String::new(),
            ciphertext: String::new(),
        };
        file.reseal(key, tokens)?;
        Ok(file)
    }

    /// Replaces the sealed tokens, keeping the metadata. Nothing changes
    /// when they cannot be sealed.
    pub fn reseal(&mut self, key: &SealingKey, tokens: &Tokens) -> Result<(), StoreError> {
        let encode = |reason: String| StoreError::Encode {
            what: "the tokens",
            reason,
        };
        let plain = Zeroizing::new(serde_json::to_vec(tokens).map_err(|e| encode(e.to_string()))?);
        let cipher = XChaCha20Poly1305::new((&key.key).into());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = aad(&self.user);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| encode("encryption failed".into()))?;
        self.expires_at = tokens.access_token.as_ref().and(tokens.expires_at);
        self.kdf = key.kdf.clone();
        self.nonce = STANDARD.encode(nonce);
        self.ciphertext = STANDARD.encode(ct);
        self.sealed_at = now();
        Ok(())
    }

    /// Opens the sealed tokens. A wrong key is [`StoreError::WrongPassword`].
    pub fn open(&self, key: &SealingKey, path: &Path) -> Result<Tokens, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let nonce = STANDARD
            .decode(&self.nonce)
            .map_err(|_| corrupt("nonce is not base64"))?;
        if nonce.len() != 24 {
            return Err(corrupt("nonce has the wrong length"));
        }
        let ct = STANDARD
            .decode(&self.ciphertext)
            .map_err(|_| corrupt("ciphertext is not base64"))?;
        if ct.len() < 16 {
            return Err(corrupt("ciphertext is shorter than its authentication tag"));
        }
        let cipher = XChaCha20Poly1305::new((&key.key).into());
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &ct,
                        aad: &aad(&self.user),
                    },
                )
                .map_err(|_| StoreError::WrongPassword)?,
        );
        serde_json::from_slice(&plain).map_err(|_| corrupt("sealed content is not valid"))
    }
}

/// Where accounts' sealed tokens live: files under `state_dir` (the
/// default), or a Redis server shared by several gateways (SPEC §9). Both
/// keep the same sealed files and the same compare-and-swap rule.
#[derive(Debug, Clone)]
pub enum Store {
    File(FileStore),
    Redis(crate::accounts::redis::RedisStore),
}

impl Store {
    /// The file store under `state_dir`.
    pub fn files(state_dir: &Path) -> Store {
        Store::File(FileStore::new(state_dir))
    }

    /// The configured store; for Redis, connected and answering (within
    /// `timeout`), or a clear error.
    pub async fn open(config: &mailgate_config::Config) -> Result<Store, StoreError> {
        match &config.store {
            mailgate_config::Store::File => Ok(Store::files(&config.gateway.state_dir)),
            mailgate_config::Store::Redis { url, prefix } => Ok(Store::Redis(
                crate::accounts::redis::RedisStore::connect(
                    url,
                    prefix,
                    config.gateway.upstream_timeout,
                )
                .await?,
            )),
        }
    }

    /// Where a user's tokens are, for messages.
    pub fn location(&self, user: &str) -> PathBuf {
        match self {
            Store::File(f) => f.path(user),
            Store::Redis(r) => r.location(user),
        }
    }

    /// Reads a user's file; `None` when there is none.
    pub async fn load(&self, user: &str) -> Result<Option<TokenFile>, StoreError> {
        match self {
            Store::File(f) => {
                let user = user.to_owned();
                off_worker(f, move |f| f.load(&user)).await
            }
            Store::Redis(r) => r.load(user).await,
        }
    }

    /// Writes `file` if the account is still what `expected` says (see
    /// [`FileStore::save`]); the written file (its new generation) is
    /// returned.
    pub async fn save(
        &self,
        file: &TokenFile,
        expected: Expect<'_>,
    ) -> Result<TokenFile, StoreError> {
        match self {
            Store::File(f) => {
                let (file, expected) = (file.clone(), expected.owned());
                off_worker(f, move |f| f.save(&file, expected.borrowed())).await
            }
            Store::Redis(r) => r.save(file, expected).await,
        }
    }

    /// Deletes a user's tokens; `Ok(false)` when there were none.
    pub async fn remove(&self, user: &str) -> Result<bool, StoreError> {
        match self {
            Store::File(f) => {
                let user = user.to_owned();
                off_worker(f, move |f| f.remove(&user)).await
            }
            Store::Redis(r) => r.remove(user).await,
        }
    }

    /// Takes `user`'s refresh lease (one refresh per account in the whole
    /// fleet): `None` while another instance holds it. The file store has
    /// one gateway, whose per-account lock is the single flight: always
    /// granted.
    pub async fn try_lease(
        &self,
        user: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        match self {
            Store::File(_) => Ok(Some(Lease(None))),
            Store::Redis(r) => Ok(r.try_lease(user, ttl).await?.map(|l| Lease(Some(l)))),
        }
    }

    /// The Redis server that several gateways share, if this is one.
    pub fn shared(&self) -> Option<&crate::accounts::redis::RedisStore> {
        match self {
            Store::File(_) => None,
            Store::Redis(r) => Some(r),
        }
    }

    /// Every readable account, with the errors of unreadable ones.
    pub async fn list(&self) -> (Vec<TokenFile>, Vec<StoreError>) {
        match self {
            Store::File(f) => match off_worker(f, |f| Ok(f.list())).await {
                Ok(listed) => listed,
                Err(e) => (Vec::new(), vec![e]),
            },
            Store::Redis(r) => r.list().await,
        }
    }
}

/// Runs a file-store operation on tokio's blocking threads: its `fs`
/// calls, `flock` and `fsync` never hold one of the async workers that
/// every session shares.
async fn off_worker<T: Send + 'static>(
    store: &FileStore,
    op: impl FnOnce(&FileStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let f = store.clone();
    tokio::task::spawn_blocking(move || op(&f))
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Unavailable {
                action: "use",
                store: format!("the token files in {}", store.dir().display()),
                reason: e.to_string(),
            })
        })
}

/// An [`Expect`] that owns its file, to cross into a blocking task.
#[derive(Debug)]
enum OwnedExpect {
    Absent,
    Same(Box<TokenFile>),
    Any,
}

impl Expect<'_> {
    fn owned(self) -> OwnedExpect {
        match self {
            Expect::Absent => OwnedExpect::Absent,
            Expect::Same(f) => OwnedExpect::Same(Box::new(f.clone())),
            Expect::Any => OwnedExpect::Any,
        }
    }
}

impl OwnedExpect {
    fn borrowed(&self) -> Expect<'_> {
        match self {
            OwnedExpect::Absent => Expect::Absent,
            OwnedExpect::Same(f) => Expect::Same(f),
            OwnedExpect::Any => Expect::Any,
        }
    }
}

/// A held refresh lease (see [`Store::try_lease`]).
#[derive(Debug)]
pub struct Lease(Option<crate::accounts::redis::RedisLease>);

impl Lease {
    pub async fn release(self) {
        if let Some(l) = self.0 {
            l.release().await;
        }
    }
}

/// Parses a sealed token file read from `at`.
pub(crate) fn decode(bytes: &[u8], at: &Path) -> Result<TokenFile, StoreError> {
    let file: TokenFile = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: at.to_path_buf(),
        reason: format!("not a token file: {e}"),
    })?;
    if file.version != VERSION {
        return Err(StoreError::Corrupt {
            path: at.to_path_buf(),
            reason: format!("unknown format version {}", file.version),
        });
    }
    file.kdf.check().map_err(|reason| StoreError::Corrupt {
        path: at.to_path_buf(),
        reason,
    })?;
    Ok(file)
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
    /// still what `expected` says (compare and swap, under the store's
    /// lock): a cache never writes over a file that was replaced or removed
    /// behind it, and never brings a removed one back. The written file's
    /// generation is one above the one it replaces; it is returned.
    pub fn save(&self, file: &TokenFile, expected: Expect<'_>) -> Result<TokenFile, StoreError> {
        let _lock = self.lock()?;
        let current = self.load(&file.user)?;
        let fits = match (&expected, &current) {
            (Expect::Any, _) | (Expect::Absent, None) => true,
            (Expect::Same(want), Some(cur)) => *want == cur,
            _ => false,
        };
        if !fits {
            return Err(StoreError::Changed {
                user: file.user.clone(),
            });
        }
        let mut file = file.clone();
        file.generation = current.map_or(0, |c| c.generation).wrapping_add(1);
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

/// What a compare-and-swap write expects to replace.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// No file: the first tokens of an account.
    Absent,
    /// Exactly this file, as read or last written.
    Same(&'a TokenFile),
    /// Whatever is there: an explicit command (`mailgate login`, `token
    /// import`) that replaces the account's tokens on purpose.
    Any,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap_kdf() -> Kdf {
        Kdf {
            m_cost: 64,
            t_cost: 1,
            ..Kdf::generate()
        }
    }

    fn tokens() -> Tokens {
        Tokens {
            refresh_token: Some("rt-1".into()),
            access_token: Some("at-1".into()),
            expires_at: Some(123),
        }
    }

    #[test]
    fn seal_open_round_trip_and_wrong_password() {
        let kdf = cheap_kdf();
        let key = SealingKey::derive(&SecretString::from("pw"), &kdf).expect("derive");
        let file = TokenFile::seal("a@x.test", "p", &key, &tokens()).expect("seal");
        let path = Path::new("a.json");
        let t = file.open(&key, path).expect("open");
        assert_eq!(t.refresh_token.as_deref(), Some("rt-1"));
        let wrong = SealingKey::derive(&SecretString::from("pW"), &kdf).expect("derive");
        assert!(matches!(
            file.open(&wrong, path),
            Err(StoreError::WrongPassword)
        ));
        // The sealed file names no secret.
        let json = serde_json::to_string(&file).expect("json");
        assert!(!json.contains("rt-1") && !json.contains("at-1"));
        // Bound to the user: moving the ciphertext to another user fails.
        let mut moved = file.clone();
        moved.user = "b@x.test".into();
        assert!(matches!(
            moved.open(&key, path),
            Err(StoreError::WrongPassword)
        ));
    }

    #[test]
    fn atomic_private_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path());
        let key = SealingKey::derive(&SecretString::from("pw"), &cheap_kdf()).expect("derive");
        let file = TokenFile::seal("a@x.test", "p", &key, &tokens()).expect("seal");
        let file = store.save(&file, Expect::Absent).expect("save");
        assert_eq!(file.generation, 1);
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
        let v1 = store.save(&first, Expect::Absent).expect("first write");
        assert!(matches!(
            store.save(&first, Expect::Absent),
            Err(StoreError::Changed { .. })
        ));
        let v2 = store.save(&v1, Expect::Same(&v1)).expect("same file");
        assert_eq!(v2.generation, 2);
        // A writer that still holds v1 cannot overwrite v2.
        assert!(matches!(
            store.save(&v1, Expect::Same(&v1)),
            Err(StoreError::Changed { .. })
        ));
        // Nor bring a removed file back.
        assert!(store.remove("a@x.test").expect("remove"));
        assert!(matches!(
            store.save(&v2, Expect::Same(&v2)),
            Err(StoreError::Changed { .. })
        ));
        assert!(store.load("a@x.test").expect("load").is_none());
        // An explicit replacement always writes.
        let v = store.save(&first, Expect::Any).expect("any");
        assert_eq!(v.generation, 1);
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
