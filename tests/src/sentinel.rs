//! A Sentinel-managed Redis on loopback (Debian's `redis-server` and
//! `redis-sentinel`, installed by `.ci/run`): one primary, two replicas,
//! three sentinels (quorum 2, a primary down after 1 s), each on a free
//! port of its own; stopped on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::{PASSWORD, Redis};

pub const SERVICE: &str = "mymaster";

pub struct Replicated {
    /// The servers, the first started as the primary.
    pub servers: Vec<Redis>,
    sentinels: Vec<(Child, u16)>,
    _dir: tempfile::TempDir,
}

impl Replicated {
    /// Starts the servers and the sentinels, and waits until every
    /// sentinel knows both replicas and the other sentinels.
    pub async fn start() -> Replicated {
        let bin = "/usr/bin/redis-sentinel";
        assert!(
            std::path::Path::new(bin).exists(),
            "the Sentinel tests need Debian's redis-sentinel package (apt-get install redis-sentinel)"
        );
        let auth = ["--masterauth", PASSWORD];
        let primary = Redis::start_with(&auth).await;
        let p = primary.port.to_string();
        let mut servers = vec![primary];
        for _ in 0..2 {
            let mut args = vec!["--replicaof", "127.0.0.1", &p];
            args.extend(auth);
            servers.push(Redis::start_with(&args).await);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = crate::harness::unused_port();
            let conf = dir.path().join(format!("sentinel{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {p} 2\n\
                     sentinel auth-pass {SERVICE} {PASSWORD}\n\
                     sentinel down-after-milliseconds {SERVICE} 1000\n\
                     sentinel failover-timeout {SERVICE} 4000\n\
                     sentinel parallel-syncs {SERVICE} 2\n",
                    dir = dir.path().display()
                ),
            )
            .unwrap();
            let child = Command::new(bin)
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel starts");
            sentinels.push((child, port));
        }
        let r = Replicated {
            servers,
            sentinels,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(40);
        // The replicas hold the primary's data (their first sync is done).
        for s in &r.servers[1..] {
            loop {
                let mut c = s.connection().await.unwrap();
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                if info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "a replica did not sync: {info}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for (_, port) in &r.sentinels {
            loop {
                let known = Self::master_info(*port).await.unwrap_or_default();
                let field = |k: &str| {
                    known
                        .windows(2)
                        .find(|w| w[0] == k)
                        .map(|w| w[1].clone())
                        .unwrap_or_default()
                };
                if field("num-slaves") == "2" && field("num-other-sentinels") == "2" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the sentinel on {port} did not learn the replicas and the other sentinels: {known:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        r
    }

    async fn sentinel(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))?
            .get_multiplexed_async_connection()
            .await
    }

    /// `SENTINEL MASTER`, as a flat list of names and values.
    async fn master_info(port: u16) -> redis::RedisResult<Vec<String>> {
        let mut c = Self::sentinel(port).await?;
        redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(SERVICE)
            .query_async(&mut c)
            .await
    }

    /// `redis-sentinel://127.0.0.1:PORT` of each sentinel.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(_, p)| format!("redis-sentinel://127.0.0.1:{p}"))
            .collect()
    }

    /// A `[store]` section on these sentinels; each record write waits
    /// for `wait_replicas` replicas (the default, 1, when `None`).
    pub fn store_section(&self, wait_replicas: Option<u32>) -> String {
        let urls: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        let wait = wait_replicas
            .map(|n| format!("wait_replicas = {n}\n"))
            .unwrap_or_default();
        format!(
            "\n[store]\nbackend = \"redis\"\nurl = \"redis://:{PASSWORD}@primary/0\"\nsentinels = [{}]\nservice = \"{SERVICE}\"\n{wait}",
            urls.join(", ")
        )
    }

    /// The port of the primary the first answering sentinel names.
    pub async fn primary_port(&self) -> u16 {
        for (_, port) in &self.sentinels {
            if let Ok(mut c) = Self::sentinel(*port).await
                && let Ok(Some((_, p))) = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(SERVICE)
                    .query_async::<Option<(String, String)>>(&mut c)
                    .await
            {
                return p.parse().unwrap();
            }
        }
        panic!("no sentinel names a primary");
    }

    /// Asks a sentinel for a failover with every server alive (`SENTINEL
    /// FAILOVER`): the primary is demoted to a replica, not killed.
    pub async fn force_failover(&self) {
        let mut c = Self::sentinel(self.sentinels[0].1).await.unwrap();
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SERVICE)
            .query_async(&mut c)
            .await
            .unwrap();
    }

    /// The server on `port`.
    pub fn server(&mut self, port: u16) -> &mut Redis {
        self.servers.iter_mut().find(|s| s.port == port).unwrap()
    }

    /// Kills the primary with SIGKILL; its port.
    pub async fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port().await;
        self.server(port).kill();
        port
    }

    /// Waits (up to 30 s) until the sentinels name a primary other than
    /// `old`, and it accepts writes; its port.
    pub async fn wait_for_new_primary(&self, old: u16) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let port = self.primary_port().await;
            if port != old
                && let Some(s) = self.servers.iter().find(|s| s.port == port)
                && let Ok(mut c) = s.connection().await
                && let Ok(role) = redis::cmd("ROLE")
                    .query_async::<Vec<redis::Value>>(&mut c)
                    .await
                && matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master")
            {
                return port;
            }
            assert!(Instant::now() < deadline, "no failover within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        for (c, _) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// When (wall clock) the instance logged each time it followed a new
/// primary of the store.
pub fn follows(instance: &crate::harness::Running) -> Vec<std::time::SystemTime> {
    instance
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("the store's primary changed"))
        })
        .filter_map(|v| humantime::parse_rfc3339_weak(v["timestamp"].as_str()?).ok())
        .collect()
}
