//! Behind a TCP load balancer: a listener with `proxy_protocol = true`
//! believes the PROXY v1/v2 header only from `trusted_proxies`, and uses
//! the client address it names for the limits; a connection from elsewhere,
//! or without a header, is closed.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, USER, imap_addr, logs, start};

fn config(env: &Env, imap: &FakeServer, trusted: &str) -> String {
    env.config_text(
        &imap.url(false),
        &format!("trusted_proxies = [\"{trusted}\"]\nmax_connections_per_ip = 1\npreauth_timeout = \"2s\""),
        "",
        "",
    )
    .replace(
        "address = \"127.0.0.1:0\"\n",
        "address = \"127.0.0.1:0\"\nproxy_protocol = true\n",
    )
}

async fn through_proxy(addr: std::net::SocketAddr, client: &str) -> LineClient {
    let mut c = LineClient::connect(addr).await;
    c.send(format!("PROXY TCP4 {client} 127.0.0.1 51000 143\r\n"))
        .await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_names_the_client_for_the_limits() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    env.seal_new_user_token();
    let g = start(env.load(&config(&env, &imap, "127.0.0.0/8"))).await;
    let addr = imap_addr(&g);

    let mut first = through_proxy(addr, "192.0.2.7").await;
    assert!(first.line().await.starts_with("* OK"));
    // One connection per client address: the same client again is refused,
    // another client behind the same balancer is not.
    let mut again = through_proxy(addr, "192.0.2.7").await;
    let busy = again.line().await;
    assert!(busy.starts_with("* BYE"), "{busy}");
    let mut other = through_proxy(addr, "192.0.2.8").await;
    assert!(other.line().await.starts_with("* OK"));
    let r = first.login("a", USER, PASSWORD).await;
    assert!(r.starts_with("a OK"), "{r}");

    // No header: closed without a greeting.
    let mut bare = LineClient::connect(addr).await;
    bare.send("a1 LOGIN alice pw\r\n").await;
    assert!(
        tokio::time::timeout(Duration::from_secs(5), bare.closed())
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_untrusted_addresses_are_closed() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let g = start(env.load(&config(&env, &imap, "192.0.2.0/24"))).await;
    let mut c = through_proxy(imap_addr(&g), "192.0.2.7").await;
    assert!(
        tokio::time::timeout(Duration::from_secs(5), c.closed())
            .await
            .unwrap()
    );
}

#[test]
fn proxy_protocol_needs_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.toml");
    std::fs::write(
        &p,
        "[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n[provider.p]\npreset = \"office365\"\nclient_id = \"x\"\n",
    )
    .unwrap();
    let e = mailgate_config::load_with_env(&p, Vec::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("listener[0].proxy_protocol"), "{e}");
    std::fs::write(
        &p,
        "[gateway]\ntrusted_proxies = [\"not an address\"]\n[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:0\"\n[provider.p]\npreset = \"office365\"\nclient_id = \"x\"\n",
    )
    .unwrap();
    let e = mailgate_config::load_with_env(&p, Vec::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("gateway.trusted_proxies[0]"), "{e}");
}

/// A loopback listener behind a balancer serves the network: it gets the
/// defaults of a listener that is not on loopback (no in-band
/// authorisation, no password before STARTTLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_listener_behind_a_balancer_has_network_defaults() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let loaded = env.load(&config(&env, &imap, "127.0.0.0/8"));
    assert!(!loaded.listeners[0].in_band_authorization);
    let g = start(loaded).await;
    // USER has no token: a remote client is not told how to authorise it.
    let mut c = through_proxy(imap_addr(&g), "203.0.113.66").await;
    assert!(c.line().await.starts_with("* OK"));
    let r = c.login("a", USER, PASSWORD).await;
    assert!(
        r.starts_with("a NO [AUTHENTICATIONFAILED] Invalid credentials"),
        "{r}"
    );

    // STARTTLS on the same kind of listener: passwords wait for TLS.
    let text = config(&env, &imap, "127.0.0.0/8").replace(
        "proxy_protocol = true\n",
        "proxy_protocol = true\ntls = \"starttls\"\n",
    );
    let g = start(env.load(&text)).await;
    let mut c = through_proxy(imap_addr(&g), "203.0.113.66").await;
    let greeting = c.line().await;
    assert!(greeting.contains("LOGINDISABLED"), "{greeting}");
    assert!(!greeting.contains("AUTH=PLAIN"), "{greeting}");
}
