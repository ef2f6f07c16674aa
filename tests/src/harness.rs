//! Configuration files, sealed tokens and an in-process gateway.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mailgate::accounts::store::file::FileStore;
use mailgate::accounts::store::{Kdf, SealingKey, TokenFile, Tokens};
use mailgate_config::{Config, Protocol};
use secrecy::SecretString;

use crate::ca::TestCa;
use crate::oauth::{CLIENT_ID, FakeOAuth};

pub const USER: &str = "alice@example.test";
pub const PASSWORD: &str = "correct horse battery staple";

/// A temporary directory with a test CA and a fake OAuth server.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub oauth: FakeOAuth,
}

impl Env {
    pub async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let oauth = FakeOAuth::start().await;
        Env { dir, ca, oauth }
    }

    /// Runs a real client `program` with `args` (no input, `HOME` in the
    /// test's directory, at most 60 s) and returns what it printed; fails
    /// the test when it exits unsuccessfully.
    pub async fn run_client(&self, program: &str, args: &[&str]) -> String {
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            tokio::process::Command::new(program)
                .args(args)
                .env("HOME", self.path())
                .stdin(std::process::Stdio::null())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("{program} did not start: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{program} failed: {text}");
        text
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A configuration with one IMAP listener on 127.0.0.1:0, one custom
    /// provider `test` whose IMAP server is `imap_url`, and account USER.
    /// `extra_gateway` goes into `[gateway]`, `extra_provider` into the
    /// provider, `extra` into the account.
    pub fn config_text(
        &self,
        imap_url: &str,
        extra_gateway: &str,
        extra_provider: &str,
        extra: &str,
    ) -> String {
        self.config_for(
            &[(Protocol::Imap, imap_url)],
            extra_gateway,
            extra_provider,
            extra,
        )
    }

    /// As [`Env::config_text`], with a listener and an upstream server for
    /// each `(protocol, url)`.
    pub fn config_for(
        &self,
        servers: &[(Protocol, &str)],
        extra_gateway: &str,
        extra_provider: &str,
        extra: &str,
    ) -> String {
        let mut gateway = String::from(extra_gateway);
        for (k, v) in [
            ("upstream_timeout", "\"5s\""),
            ("preauth_timeout", "\"10s\""),
        ] {
            if !extra_gateway.contains(k) {
                gateway.push_str(&format!("\n{k} = {v}"));
            }
        }
        let mut listeners = String::new();
        let mut upstreams = String::new();
        for (p, url) in servers {
            listeners.push_str(&format!(
                "[[listener]]\nprotocol = \"{p}\"\naddress = \"127.0.0.1:0\"\n\n"
            ));
            upstreams.push_str(&format!("{p} = \"{url}\"\n"));
        }
        let preset = if extra_provider.contains("preset") {
            ""
        } else {
            "preset = \"custom\"\n"
        };
        format!(
            r#"[gateway]
state_dir = "state"
{gateway}

{listeners}[provider.test]
{preset}client_id = "{CLIENT_ID}"
authorize_url = "{authorize_url}"
device_code_url = "{device_code_url}"
redirect_uri = "http://127.0.0.1/"
token_url = "{token_url}"
scopes = ["mail"]
{upstreams}ca_file = "test-ca.pem"
min_token_life = "60s"
{extra_provider}

[[account]]
user = "{USER}"
provider = "test"
{extra}
"#,
            token_url = self.oauth.token_url(),
            authorize_url = self.oauth.authorize_url(),
            device_code_url = self.oauth.device_code_url(),
        )
    }

    /// Starts the binary on `text` as instance `i` of a fleet (its own
    /// directory, with the test CA), ready once its log says `ready`.
    pub fn instance(&self, text: &str, i: usize, ready: &str) -> Running {
        let dir = self.path().join(format!("instance{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(self.path().join("test-ca.pem"), dir.join("test-ca.pem")).unwrap();
        let path = dir.join("mailgate.toml");
        std::fs::write(&path, text).unwrap();
        Running::start(&path, ready)
    }

    /// Starts a gateway in this process on the default configuration for
    /// `imap_url`.
    pub async fn gateway(&self, imap_url: &str) -> mailgate::Gateway {
        start(self.load(&self.config_text(imap_url, "", "", ""))).await
    }

    pub fn write_config(&self, text: &str) -> PathBuf {
        let p = self.dir.path().join("mailgate.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn load(&self, text: &str) -> Config {
        let p = self.write_config(text);
        mailgate_config::load_with_env(&p, Vec::new()).unwrap_or_else(|e| panic!("config:\n{e}"))
    }

    /// Seals a refresh token (and optionally a live access token) for `user`
    /// with `password`, as `mailgate token import` does. Returns the file.
    pub fn seal(&self, user: &str, password: &str, tokens: Tokens) -> PathBuf {
        let key =
            SealingKey::derive(&SecretString::from(password.to_owned()), &Kdf::generate()).unwrap();
        let file = TokenFile::seal(&user.to_lowercase(), "test", &key, &tokens).unwrap();
        let store = FileStore::new(&self.state_dir());
        store
            .save(&file, mailgate::accounts::store::Want::Any)
            .unwrap();
        store.path(&user.to_lowercase())
    }

    /// A fresh refresh token for USER, sealed with PASSWORD.
    pub fn seal_new_user_token(&self) -> (String, PathBuf) {
        let rt = self.oauth.issue_refresh_token(USER);
        let t = Tokens::refreshable(rt.clone().into());
        let p = self.seal(USER, PASSWORD, t);
        (rt, p)
    }

    /// Opens USER's sealed tokens with PASSWORD.
    pub fn open(&self, user: &str, password: &str) -> Tokens {
        let store = FileStore::new(&self.state_dir());
        let file = store.load(user).unwrap().unwrap();
        let key = SealingKey::derive(&SecretString::from(password.to_owned()), &file.kdf).unwrap();
        file.open(&key, &store.path(user)).unwrap()
    }

    pub fn token_file(&self, user: &str) -> TokenFile {
        FileStore::new(&self.state_dir())
            .load(user)
            .unwrap()
            .unwrap()
    }
}

/// `text` with in-band authorisation turned off on every listener.
pub fn without_in_band(text: &str) -> String {
    text.replace(
        "address = \"127.0.0.1:0\"\n",
        "address = \"127.0.0.1:0\"\nin_band_authorization = false\n",
    )
}

/// Starts the gateway in this process on the configuration.
pub async fn start(config: Config) -> mailgate::Gateway {
    mailgate::start(Arc::new(config)).await.unwrap()
}

pub fn imap_addr(g: &mailgate::Gateway) -> std::net::SocketAddr {
    g.address(Protocol::Imap).unwrap()
}

pub fn smtp_addr(g: &mailgate::Gateway) -> std::net::SocketAddr {
    g.address(Protocol::Smtp).unwrap()
}

pub fn pop3_addr(g: &mailgate::Gateway) -> std::net::SocketAddr {
    g.address(Protocol::Pop3).unwrap()
}

/// A loopback port nothing listens on (bound once, then released).
pub fn unused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Path of the `mailgate` binary next to the test executable. `cargo
/// test --workspace` builds it (the gateway package has an integration
/// test, so its binary is built with the tests, from the same sources);
/// `cargo test -p mailgate-tests` alone needs `cargo build -p mailgate`
/// first.
fn mailgate_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = dir.join("mailgate");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, or `cargo build -p mailgate` first",
        bin.display()
    );
    bin
}

/// The one way tests run the binary: `mailgate -c CONFIG` (no `-c` when
/// `None`), with no `MAILGATE_` variable, `RUST_LOG` or `BROWSER` inherited
/// from the test's environment (each test sets what it means to).
pub fn mailgate(config: Option<&Path>) -> std::process::Command {
    let mut cmd = std::process::Command::new(mailgate_bin());
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("MAILGATE_") || name == "RUST_LOG" || name == "BROWSER" {
            cmd.env_remove(&k);
        }
    }
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    cmd
}

/// Runs the `mailgate` binary on `config` with `args`, `stdin` as its
/// input, `$MAILGATE_PASSWORD` when given, and `env` added (no inherited
/// MAILGATE_ variables that would change the outcome).
pub fn run_mailgate(
    config: &Path,
    args: &[&str],
    stdin: &str,
    password: Option<&str>,
    env: &[(&str, &Path)],
) -> std::process::Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut cmd = mailgate(Some(config));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(p) = password {
        cmd.env("MAILGATE_PASSWORD", p);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may exit (a user error) before reading its input.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// The gateway's `/metrics` page (its `metrics` listener must be on).
pub async fn metrics(g: &mailgate::Gateway) -> String {
    let addr = g
        .metrics_address()
        .expect("metrics = \"127.0.0.1:0\" in [gateway]");
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Installs a test log subscriber once (RUST_LOG controls it).
pub fn logs() {
    mailgate::observe::logging::init_for_tests();
}

/// `mailgate run` (the real binary) on a configuration with
/// `log_format = "json"`; its addresses are read from its log. Stopped
/// with SIGTERM on drop.
pub struct Running {
    child: std::process::Child,
    /// Every log line so far.
    pub lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Running {
    /// Starts the binary and waits (up to 20 s) until it logged `ready` (a
    /// log message, e.g. "portal listening").
    pub fn start(config: &Path, ready: &str) -> Running {
        Self::start_in(mailgate(Some(config)), ready)
    }

    /// As [`Running::start`], under a descriptor limit (soft and hard) of
    /// `nofile`, set with util-linux's `prlimit`.
    pub fn start_with_fd_limit(config: &Path, ready: &str, nofile: u64) -> Running {
        let cmd = mailgate(Some(config));
        let bin = std::path::PathBuf::from(cmd.get_program());
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let mut limited = std::process::Command::new("prlimit");
        limited
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(bin)
            .args(args);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => limited.env(k, v),
                None => limited.env_remove(k),
            };
        }
        Self::start_in(limited, ready)
    }

    /// Runs `cmd`, a [`mailgate`] command with its configuration given.
    fn start_in(mut cmd: std::process::Command, ready: &str) -> Running {
        use std::io::BufRead as _;
        use std::process::Stdio;
        let mut child = cmd
            .args(["--log-level", "info", "run"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    if v["message"] == ready {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "mailgate did not log {ready:?}; its log:\n{}",
                        lines.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Running { child, lines }
    }

    /// The `address` of the first log line with `message` (and, when
    /// given, that `protocol`).
    pub fn address(&self, message: &str, protocol: Option<&str>) -> std::net::SocketAddr {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == message && protocol.is_none_or(|p| v["protocol"] == p))
            .and_then(|v| v["address"].as_str().and_then(|a| a.parse().ok()))
            .unwrap_or_else(|| panic!("no {message:?} line with an address in the log"))
    }

    /// Kills the process with SIGKILL (no drain, no cleanup).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log so far, one string.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `password_hash` of `pw` (Argon2id, a fixed salt: tests only).
pub fn password_hash(pw: &str) -> String {
    use argon2::PasswordHasher as _;
    let salt = argon2::password_hash::SaltString::encode_b64(b"fixed test salt!").unwrap();
    argon2::Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// Calls `f` until it gives `Some` (every 20 ms, for at most 3 s): for
/// what a gateway's record cache learns from Redis a moment after another
/// process changed the store (SPEC §9). Fails the test when it never does.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never within 3 s: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
