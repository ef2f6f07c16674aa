//! The part `failover`: three gateways on a Sentinel-managed store (one
//! primary, two replicas, three sentinels: Debian's `redis-server` and
//! `redis-sentinel`), 30 clients logging in round-robin under strict
//! refresh-token rotation with 3-second access tokens, and the primary
//! killed with SIGKILL again and again (the killed server comes back as a
//! replica before the next kill). Per failover: the time until the
//! sentinels name a new primary, until each gateway follows it, and until
//! each serves its first login after the kill; over all of them: refused
//! refreshes and accounts needing a new sign-in. Before that, the window in
//! which only the primary holds a rotated token: a record write with and
//! without the `WAIT` for a replica.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mailgate::accounts::store::{Expect, Kdf, SealingKey, Store, TokenFile, Tokens};
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, Running, USER};
use mailgate_tests::redis::PASSWORD as REDIS_PASSWORD;
use mailgate_tests::sentinel::{Replicated, SERVICE};
use secrecy::{ExposeSecret as _, SecretString};

use super::{Bench, percentile, us};

fn store_section(r: &Replicated, wait: u32) -> String {
    let urls: Vec<String> = r.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "\n[store]\nbackend = \"redis\"\nurl = \"redis://:{REDIS_PASSWORD}@primary/0\"\nsentinels = [{}]\nservice = \"{SERVICE}\"\nwait_replicas = {wait}\n",
        urls.join(", ")
    )
}

/// When (wall clock) each gateway logged that it follows a new primary.
fn follows(i: &Running) -> Vec<SystemTime> {
    i.lines
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default()
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

pub async fn failover(b: &mut Bench, trials: usize) -> anyhow::Result<()> {
    if !std::path::Path::new("/usr/bin/redis-sentinel").exists() {
        println!("\n9. failover: skipped (no /usr/bin/redis-sentinel)");
        return Ok(());
    }
    println!(
        "\n9. failover: a Sentinel-managed store (1 primary, 2 replicas, 3 sentinels), 3 gateways, 30 clients, strict rotation, 3 s tokens; the primary killed {trials} times"
    );
    let mut r = Replicated::start().await;
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;

    // The window: a record write that waits for a replica against one
    // that does not, alternating.
    let base = env.config_text(&imap.url(false), "log_format = \"json\"", "", "");
    let key = SealingKey::derive(&SecretString::from(PASSWORD), &Kdf::generate())?;
    let waiting = open(&env, &format!("{base}{}", store_section(&r, 1))).await?;
    let bare = open(&env, &format!("{base}{}", store_section(&r, 0))).await?;
    let tokens = Tokens::refreshable(env.oauth.issue_refresh_token(USER).into());
    let file = TokenFile::seal(USER, "test", &key, &tokens)?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        for (store, out) in [(&waiting, &mut with), (&bare, &mut without)] {
            let t0 = Instant::now();
            store.save(&file, Expect::Any).await?;
            out.push(t0.elapsed());
        }
    }
    with.sort();
    without.sort();
    b.say(format!(
        "record write p50/p99: {:.0}/{:.0} us with WAIT for 1 replica, {:.0}/{:.0} us without: a rotated token is on the primary alone for about {:.0} us (p50) before the login goes on",
        us(percentile(&with, 0.5)),
        us(percentile(&with, 0.99)),
        us(percentile(&without, 0.5)),
        us(percentile(&without, 0.99)),
        us(percentile(&with, 0.5)) - us(percentile(&without, 0.5)),
    ));
    drop((waiting, bare));

    env.oauth.set_rotate(true);
    env.oauth.set_lifetime(Duration::from_secs(3));
    let text = format!("{base}{}", store_section(&r, 1))
        .replace("min_token_life = \"60s\"", "min_token_life = \"1s\"");
    let store = open(&env, &text).await?;
    store
        .save(&TokenFile::seal(USER, "test", &key, &tokens)?, Expect::Any)
        .await?;
    let instances: Vec<Running> = (0..3)
        .map(|i| env.instance(&text, i, "listening"))
        .collect();
    let addrs: Arc<Vec<SocketAddr>> = Arc::new(
        instances
            .iter()
            .map(|i| i.address("listening", Some("imap")))
            .collect(),
    );
    // Every login: when (since `begin`), through which gateway, whether it
    // succeeded.
    let logins = Arc::new(Mutex::new(Vec::<(Duration, usize, bool)>::new()));
    let (stop, cut) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let begin = Instant::now();
    let mut clients = Vec::new();
    for c in 0..30 {
        let (addrs, logins, stop, cut) = (addrs.clone(), logins.clone(), stop.clone(), cut.clone());
        clients.push(tokio::spawn(async move {
            let mut n = c;
            while !stop.load(Ordering::Relaxed) {
                let g = n % addrs.len();
                n += 1;
                let target = addrs[g];
                let one = tokio::spawn(async move {
                    let mut c = LineClient::greeted(target).await;
                    c.login("a", USER, PASSWORD).await
                });
                match tokio::time::timeout(Duration::from_secs(10), one).await {
                    Ok(Ok(r)) => logins
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((begin.elapsed(), g, r.starts_with("a OK"))),
                    _ => {
                        cut.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    let (mut named, mut followed, mut first_ok) = (Vec::new(), Vec::new(), Vec::new());
    let mut lost_sign_ins = 0;
    for trial in 0..trials {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let seen_follows: Vec<usize> = instances.iter().map(|i| follows(i).len()).collect();
        let killed_at = begin.elapsed();
        let killed_wall = SystemTime::now();
        let old = r.kill_primary().await;
        let killed = Instant::now();
        r.wait_for_new_primary(old).await;
        named.push(killed.elapsed());
        // Each gateway follows, then serves a login.
        let deadline = Instant::now() + Duration::from_secs(20);
        for (g, i) in instances.iter().enumerate() {
            loop {
                let f = follows(i);
                if f.len() > seen_follows[g] {
                    followed.push(
                        f[f.len() - 1]
                            .duration_since(killed_wall)
                            .unwrap_or_default(),
                    );
                    break;
                }
                if Instant::now() > deadline {
                    anyhow::bail!("gateway {g} did not follow failover {trial}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for g in 0..instances.len() {
            let first = logins
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .find(|(t, at, ok)| *t > killed_at && *at == g && *ok)
                .map(|(t, _, _)| *t - killed_at);
            if let Some(f) = first {
                first_ok.push(f);
            }
        }
        // The killed server comes back; the sentinels make it a replica.
        let server = r.server(old);
        server.restart().await;
        wait_replica(server).await?;
        // Does the account still open with its newest refresh token?
        let file = store
            .load(USER)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no record"))?;
        let tokens = file.open(&key, &store.location(USER))?;
        let valid = tokens
            .refresh_token
            .as_ref()
            .is_some_and(|t| env.oauth.refresh_token_valid(t.expose_secret()));
        if file.needs_authorization || !valid {
            lost_sign_ins += 1;
        }
        println!(
            "  failover {}: new primary named after {:?}",
            trial + 1,
            named[trial]
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let all = logins
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let failed = all.iter().filter(|(_, _, ok)| !ok).count();
    for v in [&mut named, &mut followed, &mut first_ok] {
        v.sort();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let percentile = |v: &[Duration], p: f64| {
        if v.is_empty() {
            Duration::ZERO
        } else {
            percentile(v, p)
        }
    };
    b.say(format!(
        "failover x{trials}: sentinels named a new primary after p50 {:.0} ms (max {:.0}); each gateway followed after p50 {:.0} ms (max {:.0}); first login through each gateway after the kill p50 {:.1} ms (max {:.1}); {} logins ok, {failed} answered logins failed, {} cut; {} refreshes, {} refused; accounts needing a new sign-in: {lost_sign_ins}",
        ms(percentile(&named, 0.5)),
        ms(percentile(&named, 1.0)),
        ms(percentile(&followed, 0.5)),
        ms(percentile(&followed, 1.0)),
        ms(percentile(&first_ok, 0.5)),
        ms(percentile(&first_ok, 1.0)),
        all.len() - failed,
        cut.load(Ordering::Relaxed),
        env.oauth.refresh_times().len(),
        env.oauth.refused_refresh_count(),
    ));
    drop(instances);
    Ok(())
}

async fn open(env: &Env, text: &str) -> anyhow::Result<Store> {
    Ok(mailgate::accounts::store::open(&env.load(text)).await?.0)
}

/// Waits until `server` replicates the primary.
async fn wait_replica(server: &mailgate_tests::redis::Redis) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = server.connection().await
            && let Ok(info) = redis::cmd("INFO")
                .arg("replication")
                .query_async::<String>(&mut c)
                .await
            && info.contains("role:slave")
            && info.contains("master_link_status:up")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the killed server did not come back as a replica");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
