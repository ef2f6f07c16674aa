//! `/metrics` and `/healthz` on `[gateway] metrics`, scraped over HTTP on
//! 127.0.0.1 during an end-to-end IMAP session: every documented series is
//! there and moves.

#![allow(clippy::unwrap_used)]

use mailgate_tests::client::LineClient;
use mailgate_tests::harness::{Env, PASSWORD, USER, imap_addr, logs, start, without_in_band};
use mailgate_tests::imap_server::{FakeImap, Options};

async fn scrape(url: &str) -> (u16, String, String) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, r.text().await.unwrap())
}

/// The value of one sample line (`name{labels} value`), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// A gateway with `metrics` on and `extra_gateway` (after the
/// `metrics` line), in front of a fake IMAP upstream, USER's token sealed.
async fn gateway_with_metrics(extra_gateway: &str) -> (Env, FakeImap, mailgate::Gateway) {
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    env.seal_new_user_token();
    let text = without_in_band(&env.config_text(
        &imap.url(false),
        &format!("metrics = \"127.0.0.1:0\"\n{extra_gateway}"),
        "",
        "",
    ));
    let g = start(env.load(&text)).await;
    (env, imap, g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_during_a_session() {
    logs();
    let (env, _imap, g) = gateway_with_metrics("shutdown_grace = \"1s\"").await;
    let base = format!("http://{}", g.metrics_address().unwrap());

    let (status, _, body) = scrape(&format!("{base}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, ctype, before) = scrape(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(before.ends_with("# EOF\n"), "{before}");

    // A wrong password, then a good login and a FETCH, scraped while the
    // session is still relaying.
    let mut bad = LineClient::greeted(imap_addr(&g)).await;
    let r = bad.login("b", USER, "wrong").await;
    assert!(
        r.starts_with("b NO [AUTHENTICATIONFAILED] Invalid credentials"),
        "{r}"
    );
    drop(bad);
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));
    c.send("f FETCH 1 BODY[]\r\n").await;
    let fetched = c.response("f").await;
    let (_, _, during) = scrape(&format!("{base}/metrics")).await;

    let imap_l = "protocol=\"imap\"";
    assert_eq!(
        value(
            &during,
            &format!("mailgate_connections_accepted_total{{{imap_l}}}")
        ),
        2.0
    );
    assert_eq!(
        value(
            &during,
            &format!("mailgate_connections{{{imap_l},state=\"relaying\"}}")
        ),
        1.0,
        "{during}"
    );
    assert_eq!(
        value(
            &during,
            &format!("mailgate_logins_total{{{imap_l},result=\"ok\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &during,
            &format!("mailgate_logins_total{{{imap_l},result=\"bad_credentials\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(&during, "mailgate_token_refreshes_total{result=\"ok\"}"),
        env.oauth.refresh_count() as f64
    );
    assert!(env.oauth.refresh_count() >= 1);
    assert_eq!(
        value(
            &during,
            &format!("mailgate_upstream_login_seconds_count{{{imap_l}}}")
        ),
        1.0
    );
    let down = value(
        &during,
        &format!("mailgate_relayed_bytes_total{{{imap_l},direction=\"to_client\"}}"),
    );
    assert!(down >= fetched.len() as f64, "{down} < {}", fetched.len());
    let up = value(
        &during,
        &format!("mailgate_relayed_bytes_total{{{imap_l},direction=\"to_upstream\"}}"),
    );
    assert_eq!(up, "f FETCH 1 BODY[]\r\n".len() as f64);

    // After LOGOUT the session leaves the gauge.
    c.send("z LOGOUT\r\n").await;
    c.response("z").await;
    assert!(c.closed().await);
    let mut after = String::new();
    for _ in 0..100 {
        after = scrape(&format!("{base}/metrics")).await.2;
        if value(
            &after,
            &format!("mailgate_connections{{{imap_l},state=\"relaying\"}}"),
        ) == 0.0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        value(
            &after,
            &format!("mailgate_connections{{{imap_l},state=\"relaying\"}}")
        ),
        0.0,
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            &format!("mailgate_connections{{{imap_l},state=\"preauth\"}}")
        ),
        0.0
    );
    g.shutdown().await;
}

/// Password checks are bounded work: a name without a token file costs a
/// (dummy) check like a wrong password; a user in backoff is refused
/// without any; a cached key costs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_are_counted_and_refused_during_backoff() {
    logs();
    let (_env, _imap, g) = gateway_with_metrics("").await;
    let url = format!("http://{}/metrics", g.metrics_address().unwrap());
    let checks = |text: &str, result: &str| {
        value(
            text,
            &format!("mailgate_password_checks_total{{result=\"{result}\"}}"),
        )
    };

    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(c.login("b", USER, PASSWORD).await.starts_with("b OK"));
    let (_, _, m) = scrape(&url).await;
    assert_eq!(checks(&m, "checked"), 1.0, "the cached key costs nothing");

    for tag in ["d", "e", "f"] {
        let mut c = LineClient::greeted(imap_addr(&g)).await;
        assert!(
            c.login(tag, USER, "wrong")
                .await
                .starts_with(&format!("{tag} NO"))
        );
    }
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(c.login("g", USER, "wrong-again").await.starts_with("g NO"));
    let (_, _, m) = scrape(&url).await;
    assert_eq!(checks(&m, "checked"), 4.0, "three wrong passwords checked");
    assert_eq!(
        checks(&m, "refused_backoff"),
        1.0,
        "the fourth refused without a check"
    );

    // Once the lock is over, a name without a file costs a check too.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("c", "nobody@example.test", "whatever").await;
    assert!(r.starts_with("c NO [AUTHENTICATIONFAILED]"), "{r}");
    let (_, _, m) = scrape(&url).await;
    assert_eq!(checks(&m, "dummy"), 1.0, "an unknown name costs a check");
}

/// Every session's dialogue before the login ends with a reason, counted
/// by protocol: logged in, the client leaving (LOGOUT or hanging up), too
/// many failures, the pre-auth timeout, and a refused HTTP request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_ends_with_a_counted_reason() {
    logs();
    let (_env, _imap, g) = gateway_with_metrics("preauth_timeout = \"1s\"").await;
    let url = format!("http://{}/metrics", g.metrics_address().unwrap());
    let ended = |text: &str, reason: &str| {
        value(
            text,
            &format!("mailgate_sessions_ended_total{{protocol=\"imap\",reason=\"{reason}\"}}"),
        )
    };

    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));
    let mut quits = LineClient::greeted(imap_addr(&g)).await;
    quits.send("q LOGOUT\r\n").await;
    assert!(quits.response_text("q").await.contains("q OK"));
    drop(LineClient::greeted(imap_addr(&g)).await);
    let mut fails = LineClient::greeted(imap_addr(&g)).await;
    for tag in ["b", "c", "d"] {
        let r = fails.login(tag, "nobody@example.test", "wrong").await;
        assert!(r.starts_with(&format!("{tag} NO")), "{r}");
    }
    assert!(fails.closed().await, "closed after three failures");
    let mut web = LineClient::greeted(imap_addr(&g)).await;
    web.send("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert!(web.closed().await, "an HTTP request is closed");
    let mut silent = LineClient::greeted(imap_addr(&g)).await;
    assert!(silent.closed().await, "closed by the pre-auth timeout");

    let want = [
        ("logged_in", 1.0),
        ("client_closed", 2.0),
        ("too_many_failures", 1.0),
        ("refused", 1.0),
        ("timeout", 1.0),
        ("tls_failed", 0.0),
    ];
    let mut m = String::new();
    for _ in 0..100 {
        m = scrape(&url).await.2;
        if want.iter().all(|(r, n)| ended(&m, r) == *n) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for (reason, n) in want {
        assert_eq!(ended(&m, reason), n, "{reason}: {m}");
    }
    drop(c);
    g.shutdown().await;
}
