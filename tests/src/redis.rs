//! A real Redis server (Debian's `redis-server`, installed by `.ci/run`),
//! started on a free loopback port with a password, persisting to its own
//! temporary directory (so that a restart keeps the data); stopped on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const PASSWORD: &str = "test-redis-password";

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
    /// More `redis-server` arguments, kept for restarts.
    extra: Vec<String>,
}

impl Redis {
    pub async fn start() -> Redis {
        Self::start_with(&[]).await
    }

    /// A Redis started with `extra` arguments too (e.g. `--maxmemory`).
    pub async fn start_with(extra: &[&str]) -> Redis {
        let bin = "/usr/bin/redis-server";
        assert!(
            std::path::Path::new(bin).exists(),
            "the shared-store tests need Debian's redis-server package (apt-get install redis-server)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = crate::harness::unused_port();
        let mut r = Redis {
            child: None,
            port,
            _dir: dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let child = Command::new("/usr/bin/redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                self._dir.path().to_str().unwrap(),
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(mut c) = self.connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not come up on port {}", self.port);
    }

    /// `redis://:PASSWORD@127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://:{PASSWORD}@127.0.0.1:{}/0", self.port)
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// One field of a hash, as bytes.
    pub async fn hget(&self, key: &str, field: &str) -> Option<Vec<u8>> {
        let mut c = self.connection().await.unwrap();
        redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query_async(&mut c)
            .await
            .unwrap()
    }

    pub async fn hset(&self, key: &str, field: &str, value: &[u8]) {
        let mut c = self.connection().await.unwrap();
        let _: i64 = redis::cmd("HSET")
            .arg(key)
            .arg(field)
            .arg(value)
            .query_async(&mut c)
            .await
            .unwrap();
    }

    /// Every key with its bytes (a hash's fields and values joined), to
    /// look for what must never be there.
    pub async fn everything(&self) -> Vec<(String, Vec<u8>)> {
        let mut c = self.connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        let mut out = Vec::new();
        for k in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&k)
                .query_async(&mut c)
                .await
                .unwrap();
            let bytes = match kind.as_str() {
                "string" => redis::cmd("GET")
                    .arg(&k)
                    .query_async::<Option<Vec<u8>>>(&mut c)
                    .await
                    .unwrap()
                    .unwrap_or_default(),
                "hash" => redis::cmd("HGETALL")
                    .arg(&k)
                    .query_async::<Vec<Vec<u8>>>(&mut c)
                    .await
                    .unwrap()
                    .concat(),
                _ => Vec::new(),
            };
            out.push((k, bytes));
        }
        out
    }

    /// Stops the server (SIGTERM: it writes what it holds first).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            for _ in 0..100 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server with SIGKILL: what it had not handed on is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, with the data it had.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
