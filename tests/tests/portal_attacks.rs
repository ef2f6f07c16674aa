//! The portal under anonymous load, against the real binary (issue 23):
//!
//! - visits make no sessions: 10,050 cookie-less `GET /` leave a person's
//!   sign-in under way intact, and write nothing to the fleet's Redis;
//! - a Redis that would evict keys when full is refused at start;
//! - behind a trusted reverse proxy each client has its own budget of
//!   sign-ins (one person's unknown addresses cost nobody else anything),
//!   and the forwarded address of an untrusted peer is not believed;
//! - connections are capped per address, so a slow-body flood from one
//!   address leaves the portal to everyone else, and each request has a
//!   deadline, body included.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::Duration;

use mailgate_tests::browser::PortalVisit;
use mailgate_tests::harness::{Env, PASSWORD, USER, run_mailgate};
use mailgate_tests::portal::Portal;
use mailgate_tests::redis::Redis;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client whose connections come from `from` (a loopback address).
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(from.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `n` cookie-less visits of the first page, 8 at a time (a browser opens
/// at most 6 connections to a host; the portal takes 16 from one address);
/// how many set a session cookie.
async fn anonymous_visits(base: &str, n: usize) -> usize {
    let http = client_from("127.0.0.3");
    let mut sessions = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let replies =
            futures_util::future::join_all(chunk.iter().map(|_| http.get(base).send())).await;
        for r in replies {
            let r = r.unwrap();
            assert_eq!(r.status(), 200);
            sessions += r
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter(|c| c.to_str().unwrap().starts_with("mailgate="))
                .count();
        }
    }
    sessions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visits_make_no_sessions_and_evict_no_sign_in() {
    let p = Portal::with("", "", "").await;
    // A person starts a sign-in (the provider's page is open)...
    let mut person = PortalVisit::new(&p.base);
    let csrf = person.csrf(&format!("?address={USER}")).await;
    let r = person
        .post("sign-in", &[("csrf", &csrf), ("address", USER)])
        .await;
    assert_eq!(r.status().as_u16(), 303);
    let authorize = r.headers()["location"].to_str().unwrap().to_owned();
    // ...while anonymous requests flood the first page.
    assert_eq!(
        anonymous_visits(&p.base, 10_050).await,
        0,
        "no visit made a session"
    );
    // The sign-in completes.
    let back = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&authorize)
        .send()
        .await
        .unwrap()
        .headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let r = person.get(&back).await;
    assert_eq!(r.headers()["location"], "/password", "the sign-in was kept");
    let csrf = person.csrf("password").await;
    let r = person
        .post(
            "password",
            &[
                ("csrf", &csrf),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status().as_u16(), 303);
    assert!(
        p.env
            .state_dir()
            .join("tokens")
            .join(format!("{USER}.json"))
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_visits_write_nothing_and_an_evicting_redis_is_refused() {
    // noeviction (Redis's default), a small memory: visits write nothing.
    let redis = Redis::start_with(&["--maxmemory", "4mb"]).await;
    let store = format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"t:\"\n",
        redis.url()
    );
    let p = Portal::with("", "", &store).await;
    let before = redis.everything().await.len();
    assert_eq!(anonymous_visits(&p.base, 500).await, 0);
    assert_eq!(redis.everything().await.len(), before, "no key per visit");
    drop(p);

    // A Redis that evicts keys when full could drop sealed tokens: `run`
    // and `check`'s store commands refuse it.
    let lru = Redis::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"]).await;
    let env = Env::new().await;
    let text = format!(
        "{}\n[store]\nbackend = \"redis\"\nurl = \"{}\"\n",
        env.config_text("imaps://127.0.0.1:1", "", "", ""),
        lru.url()
    );
    let cfg = env.write_config(&text);
    let out = run_mailgate(&cfg, &["run"], "", None, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("maxmemory-policy allkeys-lru") && err.contains("noeviction"),
        "{err}"
    );
}

/// The address form as a browser sends it through `client`, saying it
/// forwards for `visitor`: the page (its form cookie), then the form; the
/// status of the answer.
async fn start_as(client: &reqwest::Client, base: &str, visitor: &str, address: &str) -> u16 {
    let page = client
        .get(base)
        .header("x-forwarded-for", visitor)
        .send()
        .await
        .unwrap();
    let cookie = page.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let token = cookie.split_once('=').unwrap().1.to_owned();
    client
        .post(format!("{base}sign-in"))
        .header("x-forwarded-for", visitor)
        .header("cookie", cookie)
        .form(&[("csrf", token.as_str()), ("address", address)])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_behind_a_trusted_proxy_has_its_own_budget() {
    let p = Portal::with("trusted_proxies = [\"127.0.0.1/32\"]", "", "").await;
    // The reverse proxy (127.0.0.1) forwards for two people.
    let proxy = client_from("127.0.0.1");
    // One person mistypes their address again and again, then runs out.
    for i in 0..10 {
        let typo = format!("typo{i}@nowhere.test");
        assert_eq!(start_as(&proxy, &p.base, "198.51.100.1", &typo).await, 404);
    }
    assert_eq!(start_as(&proxy, &p.base, "198.51.100.1", USER).await, 429);
    // Another person behind the same proxy is not held back.
    assert_eq!(start_as(&proxy, &p.base, "198.51.100.2", USER).await, 303);
    // A peer that is not a trusted proxy cannot choose its address: its
    // own budget is spent whatever it claims to forward for.
    let direct = client_from("127.0.0.2");
    let mut last = 0;
    for i in 0..11 {
        last = start_as(&direct, &p.base, &format!("203.0.113.{i}"), USER).await;
    }
    assert_eq!(last, 429);
    // No password check ran, and nothing was counted against the account.
    assert!(!p.gateway.log().contains("backoff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_flood_from_one_address_leaves_the_portal_to_others() {
    let p = Portal::with("", "", "").await;
    let addr = p.gateway.address("portal listening", None);
    let host = format!("Host: {addr}\r\n");
    // 300 POSTs from one address whose bodies never come.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.4:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        let _ = s
            .write_all(
                format!("POST /sign-in HTTP/1.1\r\n{host}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\na").as_bytes(),
            )
            .await;
        slow.push(s);
    }
    // Someone else is served.
    let r = client_from("127.0.0.5").get(&p.base).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        p.gateway
            .log()
            .contains("too many connections from this address")
    );
    // Each slow request ends at its deadline (the body never came).
    let mut first = slow.swap_remove(0);
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), first.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "the slow request was not ended");
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
}

/// The portal behind a TCP load balancer: the PROXY header names the
/// browser (believed from trusted_proxies only), and each browser has its
/// own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_tcp_balancer_the_proxy_header_names_the_browser() {
    let p = Portal::with(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        "",
        "proxy_protocol = true\n",
    )
    .await;
    let addr = p.gateway.address("portal listening", None);
    // One exchange on a connection from 127.0.0.1 (the balancer) for
    // `browser`: the answer's head.
    let exchange = |browser: &'static str, request: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("PROXY TCP4 {browser} 127.0.0.1 40000 443\r\n{request}").as_bytes())
            .await
            .unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply)).await;
        String::from_utf8_lossy(&reply).into_owned()
    };
    let host = format!("Host: {addr}\r\nConnection: close\r\n");
    let start = |browser: &'static str| {
        let host = host.clone();
        async move {
            let page = exchange(browser, format!("GET / HTTP/1.1\r\n{host}\r\n")).await;
            assert!(page.starts_with("HTTP/1.1 200"), "{page}");
            let token = page
                .lines()
                .find_map(|l| l.strip_prefix("set-cookie: mailgate-form="))
                .and_then(|v| v.split(';').next())
                .unwrap()
                .to_owned();
            let body = format!("csrf={token}&address=typo%40nowhere.test");
            let r = exchange(
                browser,
                format!(
                    "POST /sign-in HTTP/1.1\r\n{host}Cookie: mailgate-form={token}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
            )
            .await;
            r.lines().next().unwrap_or_default().to_owned()
        }
    };
    for _ in 0..10 {
        assert!(start("198.51.100.1").await.starts_with("HTTP/1.1 404"));
    }
    assert!(start("198.51.100.1").await.starts_with("HTTP/1.1 429"));
    assert!(start("198.51.100.2").await.starts_with("HTTP/1.1 404"));
    // Without a header: closed unanswered.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\n{host}\r\n").as_bytes())
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut reply)).await;
    assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
}
