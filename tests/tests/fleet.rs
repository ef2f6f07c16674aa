//! Several gateways, one Redis (SPEC §9): three `mailgate` processes on one
//! real `redis-server`, strict refresh-token rotation (the fake OAuth server
//! rejects an old refresh token at once), access tokens living 3 seconds,
//! 30 clients logging in round-robin across the instances for a bounded
//! time; one instance killed with SIGKILL halfway and a fourth started.
//! Every answered login succeeds, no refresh is refused, refreshes never
//! overlap (one per account in the whole fleet), and the account never
//! needs a new sign-in.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailgate::accounts::store::{Expect, Kdf, SealingKey, TokenFile, Tokens};
use mailgate_tests::fake::FakeServer;
use mailgate_tests::fleet::{self, Login, Logins, Outcome};
use mailgate_tests::harness::{Env, PASSWORD, USER};
use mailgate_tests::redis::Redis;
use secrecy::ExposeSecret as _;
use secrecy::SecretString;

const CLIENTS: usize = 30;
const RUN: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_one_redis_strict_rotation_one_killed() {
    let redis = Redis::start().await;
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    env.oauth.set_rotate(true);
    env.oauth.set_lifetime(Duration::from_secs(3));
    let text = format!(
        "{}\n[store]\nbackend = \"redis\"\nurl = \"{}\"\n",
        env.config_text(&imap.url(false), "log_format = \"json\"", "", "")
            .replace("min_token_life = \"60s\"", "min_token_life = \"1s\""),
        redis.url()
    );
    // The account's first tokens, sealed into Redis.
    let cfg = env.load(&text);
    let store = mailgate::accounts::store::open(&cfg).await.unwrap().0;
    let t = Tokens::refreshable(env.oauth.issue_refresh_token(USER).into());
    let key = SealingKey::derive(&SecretString::from(PASSWORD), &Kdf::generate()).unwrap();
    store
        .save(
            &TokenFile::seal(USER, "test", &key, &t).unwrap(),
            Expect::Absent,
        )
        .await
        .unwrap();

    let mut instances = fleet::instances(&env, &text, 3);
    let addr = fleet::imap_address;
    let logins = Logins::for_a_while(&instances, CLIENTS, RUN);

    // Halfway: one instance is killed; a fourth joins.
    tokio::time::sleep(RUN / 2).await;
    let victim = instances[0].take().unwrap();
    logins.remove(addr(&victim));
    victim.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fourth = env.instance(&text, 3, "listening");
    logins.add(addr(&fourth));
    instances.push(Some(fourth));
    let all = logins.finish(false).await;

    let ok = all.iter().filter(|l| l.2 == Outcome::Ok).count();
    let cut = all.iter().filter(|l| l.2 == Outcome::Cut).count();
    let failures: Vec<&Login> = all
        .iter()
        .filter(|l| matches!(l.2, Outcome::Failed(_)))
        .collect();
    let failed = failures.len();
    let refreshes = env.oauth.refresh_times();
    let closest = refreshes
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .min()
        .unwrap_or(RUN);
    println!(
        "fleet: {ok} logins ok, {failed} failed, {cut} cut by the kill; {} refreshes, closest two {closest:?} apart",
        refreshes.len()
    );
    assert!(ok > 100, "the clients ran: {ok}");
    assert_eq!(failed, 0, "answered logins that failed: {failures:?}");
    // No instance ever refreshed with a spent refresh token: every rotated
    // token was in Redis before anyone used the access token beside it.
    assert_eq!(env.oauth.refused_refresh_count(), 0, "refused refreshes");
    // One refresh per token lifetime for the whole fleet, never two at once
    // (with strict rotation the second would have failed anyway).
    assert!(refreshes.len() >= 3, "{}", refreshes.len());
    assert!(
        refreshes.len() <= (RUN.as_secs() as usize) + 2,
        "{}",
        refreshes.len()
    );
    // A token is refreshed once it has less than min_token_life (1 s) of
    // its 3 s left: refreshes about 2 s apart, never two for one expiry.
    assert!(closest > Duration::from_millis(1500), "{closest:?}");
    // The account still opens: its newest refresh token is in Redis.
    let file = store.load_fresh(USER).await.unwrap().unwrap();
    let tokens = file.open(&key, &store.location(USER)).unwrap();
    assert!(
        env.oauth
            .refresh_token_valid(tokens.refresh_token.as_ref().unwrap().expose_secret())
    );
    assert!(!file.needs_authorization);
}
