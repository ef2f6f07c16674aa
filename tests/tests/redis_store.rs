//! The Redis token store (SPEC §9) against a real `redis-server` on a free
//! loopback port: the gateway reads and writes sealed tokens there (never a
//! plaintext token), rotated refresh tokens are written there, the CLI
//! works against it, `store migrate` copies both ways, a damaged key spoils
//! one account only, a Redis that goes away leaves the logins that memory
//! can serve (and the gateway catches up when it is back), the fleet's
//! backoff counts every instance's failures, and a Redis that cannot be
//! reached stops `run` with a clear error.

#![allow(clippy::unwrap_used)]

use secrecy::ExposeSecret as _;
use std::path::Path;

use mailgate::accounts::store::{Audience, Expect, Kdf, SealingKey, Store, TokenFile, Tokens};
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{
    Env, PASSWORD, USER, eventually, imap_addr, logs, run_mailgate, start,
};
use mailgate_tests::redis::Redis;
use secrecy::SecretString;

const OTHER: &str = "bob@example.test";
const THIRD: &str = "carol@example.test";

fn config(env: &Env, imap: &FakeServer, redis: &Redis) -> String {
    format!(
        "{}\n[[account]]\nuser = \"{OTHER}\"\nprovider = \"test\"\n\n[[account]]\nuser = \"{THIRD}\"\nprovider = \"test\"\n\n[store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"t:\"\n",
        env.config_text(&imap.url(false), "", "", ""),
        redis.url()
    )
}

/// Seals a fresh refresh token for `user` with `password` into the store.
async fn seal(env: &Env, store: &Store, user: &str, password: &str) -> String {
    let rt = env.oauth.issue_refresh_token(user);
    let t = Tokens::refreshable(rt.clone().into());
    let key =
        SealingKey::derive(&SecretString::from(password.to_owned()), &Kdf::generate()).unwrap();
    let file = TokenFile::seal(user, "test", &key, &t).unwrap();
    store.save(&file, Expect::Absent).await.unwrap();
    rt
}

async fn open(store: &Store, user: &str, password: &str) -> Tokens {
    let file = store.load_fresh(user).await.unwrap().unwrap();
    let key = SealingKey::derive(&SecretString::from(password.to_owned()), &file.kdf).unwrap();
    file.open(&key, &store.location(user)).unwrap()
}

/// A Redis, the fake servers, a configuration on that Redis, its store.
async fn setup() -> (Redis, Env, FakeServer, mailgate_config::Config, Store) {
    logs();
    let redis = Redis::start().await;
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let cfg = env.load(&config(&env, &imap, &redis));
    let store = mailgate::accounts::store::open(&cfg).await.unwrap().0;
    (redis, env, imap, cfg, store)
}

async fn login(g: &mailgate::Gateway, user: &str, password: &str) -> String {
    let mut c = LineClient::greeted(imap_addr(g)).await;
    c.login("a", user, password).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_keeps_sealed_tokens_in_redis() {
    let (redis, env, _imap, cfg, store) = setup().await;
    let first = seal(&env, &store, USER, PASSWORD).await;
    env.oauth.set_rotate(true);

    let g = start(cfg.clone()).await;
    let r = login(&g, USER, PASSWORD).await;
    assert!(r.starts_with("a OK"), "{r}");

    // The rotated refresh token is in Redis, sealed; Redis holds no
    // plaintext token.
    let raw = redis
        .hget(&format!("t:account:{USER}"), "file")
        .await
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let now = open(&store, USER, PASSWORD).await;
    let rotated = now
        .refresh_token
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_owned();
    assert_ne!(rotated, first, "the provider rotated it");
    assert!(env.oauth.refresh_token_valid(&rotated));
    let access = now
        .access(Audience::Mail)
        .unwrap()
        .token
        .expose_secret()
        .to_owned();
    for secret in [&first, &rotated, &access] {
        assert!(!raw.contains(secret.as_str()), "a plaintext token in Redis");
    }
    let generation = redis
        .hget(&format!("t:account:{USER}"), "gen")
        .await
        .unwrap();
    assert_eq!(
        generation, b"3",
        "sealed, written once after the refresh, once to remember the owner's address"
    );
    let file: serde_json::Value = serde_json::from_slice(&raw.into_bytes()).unwrap_or_default();
    let familiar = store.load_fresh(USER).await.unwrap().unwrap().familiar;
    assert_eq!(familiar.len(), 1, "{file}");
    assert!(!familiar[0].contains("127.0.0.1"), "hashed, not spelt out");
    assert!(
        !env.state_dir()
            .join("tokens")
            .join(format!("{USER}.json"))
            .exists(),
        "nothing in the file store"
    );

    // A stale write is refused (compare-and-swap on the generation).
    let stale = store.load_fresh(USER).await.unwrap().unwrap();
    store.save(&stale, Expect::Same(&stale)).await.unwrap();
    assert!(matches!(
        store.save(&stale, Expect::Same(&stale)).await,
        Err(mailgate::accounts::store::StoreError::Changed { .. })
    ));

    // Forgotten in Redis: the running gateway's next login once its cache
    // has Redis's invalidation.
    assert!(store.remove(USER).await.unwrap());
    let r = eventually("the gateway sees the account forgotten", || async {
        Some(login(&g, USER, PASSWORD).await).filter(|r| r.starts_with("a NO"))
    })
    .await;
    assert!(
        r.starts_with("a NO [ALERT] alice@example.test is not authorised yet"),
        "the account has no tokens any more: {r}"
    );
    // Generations never repeat: after 1 (sealed), 2 (refreshed), 3 (the
    // familiar address) and 4 (the write above), the new first file is 5,
    // not 1.
    seal(&env, &store, USER, PASSWORD).await;
    assert_eq!(store.load_fresh(USER).await.unwrap().unwrap().generation, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_key_or_a_lost_redis_spoils_only_what_it_must() {
    let (mut redis, env, _imap, cfg, store) = setup().await;
    seal(&env, &store, USER, PASSWORD).await;
    seal(&env, &store, OTHER, PASSWORD).await;
    seal(&env, &store, THIRD, PASSWORD).await;
    let g = start(cfg.clone()).await;
    assert!(login(&g, USER, PASSWORD).await.starts_with("a OK"));

    // Garbage under one account's key: that account needs authorisation,
    // the other is untouched.
    redis
        .hset(&format!("t:account:{OTHER}"), "file", b"{not a token file")
        .await;
    let r = eventually("the gateway sees the damaged record", || async {
        Some(login(&g, OTHER, PASSWORD).await).filter(|r| r.starts_with("a NO"))
    })
    .await;
    assert!(
        r.starts_with("a NO [ALERT]") && r.contains("is damaged"),
        "{r}"
    );
    assert!(login(&g, USER, PASSWORD).await.starts_with("a OK"));

    // Argon2 parameters planted in a record (600 passes: seconds of CPU a
    // login) are a damaged record, not work to do.
    let key = format!("t:account:{THIRD}");
    let mut file: serde_json::Value =
        serde_json::from_slice(&redis.hget(&key, "file").await.unwrap()).unwrap();
    let original = file.clone();
    file["kdf"]["t_cost"] = 600.into();
    redis
        .hset(&key, "file", &serde_json::to_vec(&file).unwrap())
        .await;
    let r = eventually("the gateway sees the planted parameters", || async {
        Some(login(&g, THIRD, PASSWORD).await).filter(|r| r.starts_with("a NO"))
    })
    .await;
    assert!(r.starts_with("a NO") && r.contains("is damaged"), "{r}");
    redis
        .hset(&key, "file", &serde_json::to_vec(&original).unwrap())
        .await;

    // Redis goes away: a login whose key and fresh token are in memory goes
    // on; one that would need Redis is told the service is unavailable.
    redis.stop();
    let r = login(&g, USER, PASSWORD).await;
    assert!(r.starts_with("a OK"), "served from memory: {r}");
    let r = eventually("the gateway finds Redis gone", || async {
        Some(login(&g, THIRD, PASSWORD).await).filter(|r| !r.contains("is damaged"))
    })
    .await;
    assert!(r.starts_with("a NO [UNAVAILABLE]"), "{r}");
    // Back (with its data: it persists to disk): the gateway reconnects and
    // catches up.
    redis.restart().await;
    let mut r = String::new();
    for _ in 0..50 {
        r = login(&g, THIRD, PASSWORD).await;
        if r.starts_with("a OK") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(r.starts_with("a OK"), "after Redis came back: {r}");
    assert!(login(&g, USER, PASSWORD).await.starts_with("a OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_against_redis_and_migrates_both_ways() {
    let redis = Redis::start().await;
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let path = env.write_config(&config(&env, &imap, &redis));
    let cfg = env.load(&config(&env, &imap, &redis));
    let store = mailgate::accounts::store::open(&cfg).await.unwrap().0;
    let mg = |args: &[&str], stdin: &str, pw: Option<&str>, extra: &[(&str, &Path)]| {
        run_mailgate(&path, args, stdin, pw, extra)
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // token import seals into Redis.
    let rt = env.oauth.issue_refresh_token(USER);
    let out = mg(
        &["token", "import", USER, "--no-verify"],
        &rt,
        Some(PASSWORD),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(store.load_fresh(USER).await.unwrap().is_some());
    let out = mg(&["accounts", "--json"], "", None, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(USER));

    // passwd re-seals there.
    let new = Path::new("another long password");
    let out = mg(
        &["passwd", USER],
        "",
        Some(PASSWORD),
        &[("MAILGATE_NEW_PASSWORD", new)],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        open(&store, USER, new.to_str().unwrap())
            .await
            .refresh_token
            .as_ref()
            .map(|t| t.expose_secret()),
        Some(rt.as_str())
    );

    // Migrate to the files and back, without a password.
    let out = mg(&["store", "migrate", "--to", "file"], "", None, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("copied 1 account(s) from Redis to the files"),
        "{}",
        text(&out)
    );
    let file = env.token_file(USER);
    assert_eq!(file.user, USER);
    env.seal(OTHER, PASSWORD, Tokens::default());
    let out = mg(&["store", "migrate", "--to", "redis"], "", None, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("copied 1 account(s)") && text(&out).contains("1 already there"),
        "{}",
        text(&out)
    );
    assert!(store.load_fresh(OTHER).await.unwrap().is_some());

    // forget deletes it from Redis.
    let out = mg(&["forget", USER], "", None, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(store.load_fresh(USER).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_with_a_clear_error_when_redis_cannot_be_reached() {
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let port = mailgate_tests::harness::unused_port();
    let text = format!(
        "{}\n[store]\nbackend = \"redis\"\nurl = \"redis://:secret-in-url@127.0.0.1:{port}/0\"\n",
        env.config_text(&imap.url(false), "upstream_timeout = \"2s\"", "", "")
    );
    let path = env.write_config(&text);
    let out = run_mailgate(&path, &["run"], "", None, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("redis://127.0.0.1:{port}")), "{err}");
    assert!(
        !err.contains("secret-in-url"),
        "the password is never shown: {err}"
    );
    // check describes the store without its password.
    let out = run_mailgate(&path, &["check"], "", None, &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("store: redis"), "{shown}");
    assert!(!shown.contains("secret-in-url"), "{shown}");
}

/// Wrong passwords spread over two gateways count as one series: the
/// backoff counters live in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_counts_the_failures_of_every_instance() {
    let (redis, env, _imap, cfg, store) = setup().await;
    seal(&env, &store, USER, PASSWORD).await;
    let a = start(cfg.clone()).await;
    let b = start(cfg.clone()).await;
    // Five wrong passwords, alternating between the two instances: each
    // saw fewer than its own lock would need for a 2 s lock.
    for i in 0..5 {
        let g = if i % 2 == 0 { &a } else { &b };
        let r = login(g, USER, "wrong password").await;
        assert!(
            r.starts_with("a NO [AUTHENTICATIONFAILED]")
                || r.starts_with("a NO [UNAVAILABLE] Too many failed logins"),
            "{r}"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // B has seen two failures itself; the fleet has seen five: locked.
    let r = login(&b, USER, PASSWORD).await;
    assert!(
        r.starts_with("a NO [UNAVAILABLE] Too many failed logins for alice@example.test or from this address; try again in "),
        "refused during the fleet's backoff, and told so: {r}"
    );
    assert!(
        redis
            .hget(&format!("t:account:{USER}"), "gen")
            .await
            .is_some()
    );
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let r = login(&b, USER, PASSWORD).await;
    assert!(r.starts_with("a OK"), "after the lock: {r}");
}

/// `/healthz` says `ok` while the store answers, `degraded` (naming the
/// store, never its password) while it does not, and `ok` again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_degraded_while_the_store_is_away() {
    let mut redis = Redis::start().await;
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = format!(
        "{}\n[store]\nbackend = \"redis\"\nurl = \"{}\"\n",
        env.config_text(&imap.url(false), "metrics = \"127.0.0.1:0\"", "", ""),
        redis.url()
    );
    let g = start(env.load(&text)).await;
    let url = format!("http://{}/healthz", g.metrics_address().unwrap());
    let health = || async { reqwest::get(&url).await.unwrap().text().await.unwrap() };
    assert_eq!(health().await, "ok\n");
    let until = |want: &'static str| {
        let health = &health;
        async move {
            let mut said = String::new();
            for _ in 0..100 {
                said = health().await;
                if said.starts_with(want) {
                    return said;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("/healthz never said {want}: {said}");
        }
    };
    redis.stop();
    let said = until("degraded").await;
    assert!(
        said.contains(&format!("127.0.0.1:{}", redis.port)),
        "{said}"
    );
    assert!(!said.contains(mailgate_tests::redis::PASSWORD), "{said}");
    redis.restart().await;
    until("ok").await;
    g.shutdown().await;
}
