//! The store behind Redis Sentinel (SPEC §9): real `redis-server`s (one
//! primary, two replicas) and three real `redis-sentinel`s on loopback.
//! The gateway finds the primary through the sentinels, keeps a cache of
//! account records that Redis keeps true (a change by anyone takes effect
//! at the next login), repairs from memory a store that lost its newest
//! record, follows a failover (SIGKILL of the primary) under strict
//! rotation across three gateways without a refused refresh or a new
//! sign-in, and `mailgate check` shows the primary the sentinels name.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mailgate::accounts::store::{Expect, Kdf, SealingKey, Store, TokenFile, Tokens};
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::fleet::{self, Logins, Outcome};
use mailgate_tests::harness::{
    Env, PASSWORD, Running, USER, eventually, imap_addr, metrics, run_mailgate, start,
};
use mailgate_tests::redis::PASSWORD as REDIS_PASSWORD;
use mailgate_tests::sentinel::{Replicated, SERVICE, follows};
use secrecy::{ExposeSecret as _, SecretString};

/// Seals `password`'s tokens for USER into `store`.
async fn seal(env: &Env, store: &Store, password: &str, expect: Expect<'_>) -> SealingKey {
    let t = Tokens::refreshable(env.oauth.issue_refresh_token(USER).into());
    let key = SealingKey::derive(&SecretString::from(password), &Kdf::generate()).unwrap();
    store
        .save(&TokenFile::seal(USER, "test", &key, &t).unwrap(), expect)
        .await
        .unwrap();
    key
}

async fn login(addr: SocketAddr, password: &str) -> String {
    let mut c = LineClient::greeted(addr).await;
    c.login("a", USER, password).await
}

/// The value of the series `name` (labels included) on a /metrics page.
fn series(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// The Sentinel-managed servers, the fake servers, a configuration on
/// them (`gateway` added to `[gateway]`), and its store holding USER's
/// first tokens.
async fn setup(
    gateway: &str,
) -> (
    Replicated,
    Env,
    FakeServer,
    String,
    mailgate_config::Config,
    Store,
) {
    let r = Replicated::start().await;
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = format!(
        "{}{}",
        env.config_text(&imap.url(false), gateway, "", ""),
        r.store_section(None)
    );
    let cfg = env.load(&text);
    let store = mailgate::accounts::store::open(&cfg).await.unwrap().0;
    seal(&env, &store, PASSWORD, Expect::Absent).await;
    (r, env, imap, text, cfg, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_follows_every_change_and_a_lost_record_is_repaired() {
    let (r, env, _imap, text, cfg, _store) = setup("metrics = \"127.0.0.1:0\"").await;

    // check names the sentinels and the primary they agree on.
    let path = env.write_config(&text);
    let out = run_mailgate(&path, &["check"], "", None, &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    let primary = r.primary_port().await;
    for url in r.urls() {
        let plain = url.replace("redis-sentinel://", "redis://");
        assert!(
            shown.contains(&format!(
                "sentinel {plain}: the primary of \"{SERVICE}\" is 127.0.0.1:{primary}"
            )),
            "{shown}"
        );
    }
    assert!(!shown.contains(REDIS_PASSWORD), "{shown}");

    let g = start(cfg.clone()).await;
    for _ in 0..5 {
        assert!(login(imap_addr(&g), PASSWORD).await.starts_with("a OK"));
    }
    let page = metrics(&g).await;
    assert!(
        series(&page, "mailgate_store_cache_total{result=\"hit\"}") >= 3,
        "{page}"
    );

    // Another writer (as `mailgate passwd` in another process would): the
    // gateway's next login once Redis's invalidation is in.
    let other = mailgate::accounts::store::open(&cfg).await.unwrap().0;
    seal(&env, &other, "a new password", Expect::Any).await;
    eventually("the old password stops working", || async {
        login(imap_addr(&g), PASSWORD)
            .await
            .contains("a NO")
            .then_some(())
    })
    .await;
    assert!(
        login(imap_addr(&g), "a new password")
            .await
            .starts_with("a OK")
    );
    let page = metrics(&g).await;
    assert!(
        series(&page, "mailgate_store_invalidations_total") >= 1,
        "{page}"
    );

    // A store that went back (as after a failover that lost the newest
    // write) is repaired from the gateway's memory at the next read.
    let before = other.load_fresh(USER).await.unwrap().unwrap();
    g.shutdown().await;
    let g = start(env.load(&text)).await;
    // The gateway refreshes and writes the account itself: its memory.
    env.oauth.revoke_access_tokens();
    assert!(
        login(imap_addr(&g), "a new password")
            .await
            .starts_with("a OK")
    );
    let newest = other.load_fresh(USER).await.unwrap().unwrap();
    assert!(newest.generation > before.generation);
    // Put the older record back, behind the gateway's back.
    let primary = r.primary_port().await;
    let server = r.servers.iter().find(|s| s.port == primary).unwrap();
    let key = "mailgate:account:".to_owned() + USER;
    server
        .hset(&key, "file", &serde_json::to_vec(&before).unwrap())
        .await;
    server
        .hset(&key, "gen", before.generation.to_string().as_bytes())
        .await;
    let repaired = eventually("the store is repaired", || async {
        assert!(
            login(imap_addr(&g), "a new password")
                .await
                .starts_with("a OK")
        );
        Some(other.load_fresh(USER).await.unwrap().unwrap())
            .filter(|f| f.generation == newest.generation)
    })
    .await;
    assert_eq!(
        serde_json::to_value(&repaired).unwrap(),
        serde_json::to_value(&newest).unwrap()
    );
    let page = metrics(&g).await;
    assert_eq!(series(&page, "mailgate_store_repairs_total"), 1, "{page}");
    assert_eq!(series(&page, "mailgate_store_up"), 1, "{page}");

    // forget, from another process: the gateway's next login once the
    // invalidation is in.
    other.remove(USER).await.unwrap();
    eventually("the forgotten account stops working", || async {
        login(imap_addr(&g), "a new password")
            .await
            .contains("a NO")
            .then_some(())
    })
    .await;
    g.shutdown().await;
}

const CLIENTS: usize = 30;
const RUN: Duration = Duration::from_secs(16);

/// What the fleet test saw.
struct Seen {
    ok: usize,
    /// Answered logins that failed, with when (since the start).
    failed: Vec<(Duration, String)>,
    cut: usize,
    /// When the primary was killed (since the start).
    killed_at: Duration,
    /// How long after the kill the sentinels named a new primary.
    failover: Duration,
    /// How long after the kill each surviving gateway logged that it
    /// follows the new primary, and served its first login (from its
    /// cache, the store's primary being away or not).
    followed: Vec<Option<Duration>>,
    first_login: Vec<Option<Duration>>,
}

/// Three gateways on the Sentinel-managed store, strict rotation, access
/// tokens of 3 s, 30 clients round-robin for [`RUN`]; at a third of the
/// run the primary is killed with SIGKILL (with the instance that just
/// refreshed, when `with_refresher`).
async fn fleet_through_a_failover(
    with_refresher: bool,
) -> (Replicated, Env, Store, SealingKey, Seen) {
    let mut r = Replicated::start().await;
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    env.oauth.set_rotate(true);
    env.oauth.set_lifetime(Duration::from_secs(3));
    let text = format!(
        "{}{}",
        env.config_text(&imap.url(false), "log_format = \"json\"", "", "")
            .replace("min_token_life = \"60s\"", "min_token_life = \"1s\""),
        r.store_section(None)
    );
    let cfg = env.load(&text);
    let store = mailgate::accounts::store::open(&cfg).await.unwrap().0;
    let key = seal(&env, &store, PASSWORD, Expect::Absent).await;

    let mut instances = fleet::instances(&env, &text, 3);
    let addr = fleet::imap_address;
    let logins = Logins::for_a_while(&instances, CLIENTS, RUN);

    tokio::time::sleep(RUN / 3).await;
    if with_refresher {
        // Wait for a refresh, and kill the instance that made it with the
        // primary, once the login it served has gone on.
        let refreshes = env.oauth.refresh_times().len();
        while env.oauth.refresh_times().len() == refreshes {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let last = |r: &Running| {
            r.lines
                .lock()
                .unwrap()
                .iter()
                .rev()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["message"] == "access token refreshed")
                .and_then(|v| v["timestamp"].as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let refresher = (0..instances.len())
            .max_by_key(|i| instances[*i].as_ref().map(last))
            .unwrap();
        let victim = instances[refresher].take().unwrap();
        logins.remove(addr(&victim));
        victim.kill();
    }
    let killed_at = logins.begin.elapsed();
    let killed_wall = std::time::SystemTime::now();
    let old = r.kill_primary().await;
    let killed = Instant::now();
    r.wait_for_new_primary(old).await;
    let failover = killed.elapsed();
    let all = logins.finish(false).await;

    // When each surviving gateway logged that it follows the new primary.
    let followed = instances
        .iter()
        .map(|i| {
            let at = *follows(i.as_ref()?).first()?;
            Some(at.duration_since(killed_wall).unwrap_or_default())
        })
        .collect::<Vec<_>>();
    let first_login = instances
        .iter()
        .map(|i| {
            let a = addr(i.as_ref()?);
            all.iter()
                .find(|(t, s, o)| *s == a && *t > killed_at && *o == Outcome::Ok)
                .map(|(t, _, _)| *t - killed_at)
        })
        .collect();
    let seen = Seen {
        ok: all.iter().filter(|l| l.2 == Outcome::Ok).count(),
        failed: all
            .iter()
            .filter_map(|(t, _, o)| match o {
                Outcome::Failed(r) => Some((*t, r.clone())),
                _ => None,
            })
            .collect(),
        cut: all.iter().filter(|l| l.2 == Outcome::Cut).count(),
        killed_at,
        failover,
        followed,
        first_login,
    };
    drop(instances);
    (r, env, store, key, seen)
}

/// The checks both failover tests share: the fleet went on, answered
/// logins failed only inside the failover window, no refresh was refused,
/// and the account still opens with its newest refresh token.
async fn assert_fleet_survived(env: &Env, store: &Store, key: &SealingKey, seen: &Seen) {
    println!(
        "sentinel fleet: {} logins ok, {} failed, {} cut; sentinels named a new primary {:?} after the kill; first login through each gateway after the kill: {:?}; followed: {:?}",
        seen.ok,
        seen.failed.len(),
        seen.cut,
        seen.failover,
        seen.first_login,
        seen.followed
    );
    assert!(seen.ok > 100, "the clients ran: {}", seen.ok);
    let window = seen.killed_at..seen.killed_at + seen.failover + Duration::from_secs(3);
    let outside: Vec<_> = seen
        .failed
        .iter()
        .filter(|(t, _)| !window.contains(t))
        .collect();
    assert!(
        outside.is_empty(),
        "answered logins failed outside the failover window {window:?}: {outside:?}"
    );
    for (i, f) in seen.first_login.iter().enumerate() {
        if seen.followed[i].is_some() || f.is_some() {
            assert!(
                f.is_some(),
                "gateway {i} served no login after the failover"
            );
        }
    }
    assert_eq!(env.oauth.refused_refresh_count(), 0, "refused refreshes");
    let file = store.load_fresh(USER).await.unwrap().unwrap();
    let tokens = file.open(key, &store.location(USER)).unwrap();
    assert!(
        env.oauth
            .refresh_token_valid(tokens.refresh_token.as_ref().unwrap().expose_secret()),
        "the store lost the newest refresh token: the account would need a new sign-in"
    );
    assert!(!file.needs_authorization);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_follows_a_failover_without_losing_a_token() {
    let (_r, env, store, key, seen) = fleet_through_a_failover(false).await;
    assert!(
        seen.followed.iter().all(Option::is_some),
        "every gateway follows the new primary: {:?}",
        seen.followed
    );
    assert_fleet_survived(&env, &store, &key, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_primary_and_the_refreshing_instance_die_together() {
    let (_r, env, store, key, seen) = fleet_through_a_failover(true).await;
    assert_eq!(
        seen.followed.iter().flatten().count(),
        2,
        "{:?}",
        seen.followed
    );
    assert_fleet_survived(&env, &store, &key, &seen).await;
}

/// With no primary at all (every server dead), a login that needs the
/// store is told UNAVAILABLE (after at most one wait for a failover, not
/// one per login in a queue), and `/healthz` says degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_primary_logins_are_told_unavailable() {
    let (mut r, _env, _imap, _text, cfg, _store) =
        setup("metrics = \"127.0.0.1:0\"\nupstream_timeout = \"2s\"").await;
    let g = start(cfg).await;
    for s in &mut r.servers {
        s.kill();
    }
    let logins: Vec<_> = (0..6)
        .map(|_| {
            let a = imap_addr(&g);
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(30), login(a, PASSWORD)).await
            })
        })
        .collect();
    for l in logins {
        let r = l.await.unwrap().expect("an answer, not a hang");
        assert!(r.starts_with("a NO [UNAVAILABLE]"), "{r}");
    }
    let url = format!("http://{}/healthz", g.metrics_address().unwrap());
    let said = eventually("/healthz says degraded", || async {
        let said = reqwest::get(&url).await.ok()?.text().await.ok()?;
        said.starts_with("degraded").then_some(said)
    })
    .await;
    assert!(said.contains("the primary of \"mymaster\""), "{said}");
    assert!(!said.contains(REDIS_PASSWORD), "{said}");
    g.shutdown().await;
}

/// A primary demoted to a replica while alive (`SENTINEL FAILOVER`): the
/// gateway notices on its own (its watch asks `ROLE`), follows, and its
/// next write goes to the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_demoted_while_alive_is_followed() {
    let (r, env, _imap, _text, cfg, store) = setup("metrics = \"127.0.0.1:0\"").await;
    let g = start(cfg).await;
    assert!(login(imap_addr(&g), PASSWORD).await.starts_with("a OK"));

    let old = r.primary_port().await;
    r.force_failover().await;
    let new = r.wait_for_new_primary(old).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page = metrics(&g).await;
        if series(&page, "mailgate_store_failovers_total") == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not follow: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A refresh writes the account: on the new primary.
    let before = store.load_fresh(USER).await.unwrap().unwrap().generation;
    env.oauth.revoke_access_tokens();
    assert!(login(imap_addr(&g), PASSWORD).await.starts_with("a OK"));
    let key = format!("mailgate:account:{USER}");
    let server = r.servers.iter().find(|s| s.port == new).unwrap();
    let generation: u64 = String::from_utf8(server.hget(&key, "gen").await.unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert!(generation > before, "{generation} after {before}");
    g.shutdown().await;
}

/// A record write waits for a replica (`WAIT`); with no replica left to
/// acknowledge it, the write is logged and counted after `wait_timeout`,
/// and the login that refreshed goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_no_replica_acknowledges_is_counted_and_the_login_goes_on() {
    let (mut r, env, _imap, text, _cfg, _store) = setup("metrics = \"127.0.0.1:0\"").await;
    let text = format!("{text}wait_timeout = \"300ms\"\n");
    let g = start(env.load(&text)).await;
    assert!(login(imap_addr(&g), PASSWORD).await.starts_with("a OK"));
    let page = metrics(&g).await;
    assert_eq!(
        series(&page, "mailgate_store_unreplicated_writes_total"),
        0,
        "{page}"
    );
    let primary = r.primary_port().await;
    for s in r.servers.iter_mut().filter(|s| s.port != primary) {
        s.kill();
    }
    // The next login refreshes and writes the account.
    env.oauth.revoke_access_tokens();
    assert!(login(imap_addr(&g), PASSWORD).await.starts_with("a OK"));
    let page = metrics(&g).await;
    assert!(
        series(&page, "mailgate_store_unreplicated_writes_total") >= 1,
        "{page}"
    );
    g.shutdown().await;
}
