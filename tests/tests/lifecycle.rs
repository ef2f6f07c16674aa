//! Graceful shutdown, and a bounded soak: many clients logging in, fetching
//! and logging out while the access token keeps expiring.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, USER, imap_addr, logs, start};

/// Shutdown stops accepting at once, lets open sessions run for
/// `shutdown_grace`, then closes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_then_closes() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    env.seal_new_user_token();
    let g = start(env.load(&env.config_text(&imap.url(false), "shutdown_grace = \"2s\"", "", "")))
        .await;
    let addr = imap_addr(&g);
    let mut open = LineClient::greeted(addr).await;
    assert!(open.login("a", USER, PASSWORD).await.starts_with("a OK"));

    let started = Instant::now();
    let stopping = tokio::spawn(g.shutdown());
    // New connections are refused once the listener is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The open session still works during the grace period.
    open.send("n NOOP\r\n").await;
    assert_eq!(open.response_text("n").await, "n OK NOOP completed\r\n");
    // Then it is closed, and shutdown completes.
    assert!(open.closed().await);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed before the grace period ended"
    );
}

/// 200 clients log in, fetch and log out in a loop for 30 s while the access
/// token lives 3 s (min_token_life 1 s): no session fails, and each expiry
/// causes one refresh, never several at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_200_clients_with_expiring_tokens() {
    logs();
    let env = Env::new().await;
    env.oauth.set_lifetime(Duration::from_secs(3));
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    env.seal_new_user_token();
    let text = env
        .config_text(&imap.url(false), "upstream_timeout = \"20s\"", "", "")
        .replace("min_token_life = \"60s\"", "min_token_life = \"1s\"");
    let g = start(env.load(&text)).await;
    let addr = imap_addr(&g);
    let sessions = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (sessions, failures) = (sessions.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let mut c = LineClient::greeted(addr).await;
                let ok = c.login("a", USER, PASSWORD).await.starts_with("a OK");
                c.send("f FETCH 1 BODY[]\r\n").await;
                let fetched = c.response_text("f").await.contains("f OK FETCH completed");
                c.send("z LOGOUT\r\n").await;
                let out = c.response_text("z").await.contains("z OK LOGOUT");
                if ok && fetched && out {
                    sessions.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                // Spread the clients out a little.
                tokio::time::sleep(Duration::from_millis(50 + (i % 7) * 10)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let done = sessions.load(Ordering::Relaxed);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed sessions ({done} succeeded)"
    );
    assert!(done >= 200, "only {done} sessions in 30 s");
    let times = env.oauth.refresh_times();
    // Tokens live 3 s and are refreshed with less than 1 s left (whole
    // seconds): between 10 and 31 refreshes in 30 s, never two together.
    assert!(
        (10..=31).contains(&times.len()),
        "{} refreshes",
        times.len()
    );
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(500),
            "two refreshes {:?} apart: not single flight",
            w[1] - w[0]
        );
    }
    eprintln!(
        "soak: {done} sessions, {} refreshes, 0 failures",
        times.len()
    );
}

/// SIGHUP reload: a new account and a new host name apply to new sessions,
/// a relayed session goes on, and a broken file changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_to_new_sessions_only() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    env.seal_new_user_token();
    let bob = "bob@example.test";
    let t =
        mailgate::accounts::store::Tokens::refreshable(env.oauth.issue_refresh_token(bob).into());
    env.seal(bob, "bob pw", t);
    let before = env.config_text(&imap.url(false), "", "", "");
    let g = start(env.load(&before)).await;
    let mut open = LineClient::greeted(imap_addr(&g)).await;
    assert!(open.login("a", USER, PASSWORD).await.starts_with("a OK"));
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(
        c.login("b", bob, "bob pw")
            .await
            .starts_with("b NO [AUTHENTICATIONFAILED]"),
        "bob is unknown"
    );

    // Add bob and rename the host.
    let after = env.config_text(
        &imap.url(false),
        "hostname = \"gw.example.test\"",
        "",
        &format!("\n[[account]]\nuser = \"{bob}\"\nprovider = \"test\"\n"),
    );
    env.write_config(&after);
    g.reload().await.unwrap();
    let mut c = LineClient::connect(imap_addr(&g)).await;
    assert!(c.line().await.contains("gw.example.test mailgate ready"));
    assert!(c.login("c", bob, "bob pw").await.starts_with("c OK"));
    open.send("n NOOP\r\n").await;
    assert_eq!(
        open.response_text("n").await,
        "n OK NOOP completed\r\n",
        "the relayed session goes on"
    );

    // A broken file is refused; the running configuration stays.
    env.write_config("[gateway]\nbogus = 1\n");
    let errs = g.reload().await.unwrap_err();
    assert!(errs.to_string().contains("bogus"), "{errs}");
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(c.login("d", bob, "bob pw").await.starts_with("d OK"));
}
