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
use std::time::{Duration, Instant, SystemTime};

use mailgate::accounts::store::{Expect, Kdf, SealingKey, Store, TokenFile, Tokens};
use mailgate_tests::fake::FakeServer;
use mailgate_tests::fleet::{Logins, Outcome};
use mailgate_tests::harness::{Env, PASSWORD, Running, USER};
use mailgate_tests::sentinel::{Replicated, follows};
use secrecy::{ExposeSecret as _, SecretString};

use super::{Bench, percentile, us};

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
    let waiting = open(&env, &format!("{base}{}", r.store_section(Some(1)))).await?;
    let bare = open(&env, &format!("{base}{}", r.store_section(Some(0)))).await?;
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
    let text = format!("{base}{}", r.store_section(Some(1)))
        .replace("min_token_life = \"60s\"", "min_token_life = \"1s\"");
    let store = open(&env, &text).await?;
    store
        .save(&TokenFile::seal(USER, "test", &key, &tokens)?, Expect::Any)
        .await?;
    let instances: Vec<Running> = (0..3)
        .map(|i| env.instance(&text, i, "listening"))
        .collect();
    let addrs: Vec<SocketAddr> = instances
        .iter()
        .map(|i| i.address("listening", Some("imap")))
        .collect();
    let logins = Logins::start(30, addrs.clone(), USER, PASSWORD, None);
    let (mut named, mut followed, mut first_ok) = (Vec::new(), Vec::new(), Vec::new());
    let mut lost_sign_ins = 0;
    for trial in 0..trials {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let seen_follows: Vec<usize> = instances.iter().map(|i| follows(i).len()).collect();
        let killed_at = logins.begin.elapsed();
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
        let so_far = logins.so_far();
        for a in &addrs {
            let first = so_far
                .iter()
                .find(|(t, at, o)| *t > killed_at && at == a && *o == Outcome::Ok)
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
    let all = logins.finish(true).await;
    let ok = all.iter().filter(|l| l.2 == Outcome::Ok).count();
    let cut = all.iter().filter(|l| l.2 == Outcome::Cut).count();
    let failed = all.len() - ok - cut;
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
        ok,
        cut,
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
