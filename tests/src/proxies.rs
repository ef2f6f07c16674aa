//! Small outbound proxies for the tests, on 127.0.0.1: an HTTP proxy
//! (`CONNECT` tunnels, and absolute-form requests such as a token request
//! to an `http://` endpoint) and a SOCKS5 proxy (RFC 1928, with RFC 1929
//! user/password). Each logs what it forwarded, can require credentials,
//! can refuse everything, and forwards only to loopback addresses.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Forward,
    /// HTTP 403, or SOCKS5 reply 0x02 (not allowed by ruleset).
    Refuse,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Http,
    Socks5,
}

#[derive(Debug)]
struct State {
    answer: Mutex<Answer>,
    credentials: Option<(String, String)>,
    /// One line per request: what was asked and what was done.
    log: Mutex<Vec<String>>,
}

/// A running test proxy.
#[derive(Debug, Clone)]
pub struct TestProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl TestProxy {
    /// An HTTP proxy; with `credentials`, requests without the right
    /// `Proxy-Authorization` get 407.
    pub async fn http(credentials: Option<(&str, &str)>) -> TestProxy {
        Self::start(credentials, Kind::Http).await
    }

    /// A SOCKS5 proxy; with `credentials`, only user/password
    /// authentication with them is accepted.
    pub async fn socks5(credentials: Option<(&str, &str)>) -> TestProxy {
        Self::start(credentials, Kind::Socks5).await
    }

    async fn start(credentials: Option<(&str, &str)>, kind: Kind) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            answer: Mutex::new(Answer::Forward),
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            log: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((c, _)) = listener.accept().await {
                let _ = c.set_nodelay(true);
                match kind {
                    Kind::Http => tokio::spawn(http_client(st.clone(), c)),
                    Kind::Socks5 => tokio::spawn(socks_client(st.clone(), c)),
                };
            }
        });
        TestProxy { addr, state }
    }

    pub fn set_answer(&self, a: Answer) {
        *self.state.answer.lock().unwrap() = a;
    }

    /// Every request so far, e.g. `CONNECT 127.0.0.1:993 forwarded`.
    pub fn log(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    fn note(state: &State, line: String) {
        state.log.lock().unwrap().push(line);
    }
}

/// Connects to `host:port` if it is a loopback address (a name is resolved
/// and must resolve to loopback).
async fn loopback(host: &str, port: u16) -> Option<TcpStream> {
    let addrs = tokio::net::lookup_host((host, port)).await.ok()?;
    for a in addrs.filter(|a| a.ip().is_loopback()) {
        if let Ok(s) = TcpStream::connect(a).await {
            let _ = s.set_nodelay(true);
            return Some(s);
        }
    }
    None
}

async fn http_client(state: Arc<State>, mut c: TcpStream) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || c.read(&mut b).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut first = text.lines().next().unwrap_or("").split(' ');
    let (method, target) = (
        first.next().unwrap_or("").to_owned(),
        first.next().unwrap_or("").to_owned(),
    );
    let asked = format!("{method} {target}");
    let reply =
        |code: &str| format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if let Some((user, password)) = &state.credentials {
        let want = format!(
            "proxy-authorization: basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
        .to_ascii_lowercase();
        if !text.to_ascii_lowercase().lines().any(|l| l.trim() == want) {
            TestProxy::note(&state, format!("{asked} 407"));
            let _ = c
                .write_all(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
                )
                .await;
            return;
        }
    }
    if *state.answer.lock().unwrap() == Answer::Refuse {
        TestProxy::note(&state, format!("{asked} refused"));
        let _ = c.write_all(reply("403 Forbidden").as_bytes()).await;
        return;
    }
    let authority = if method == "CONNECT" {
        target.clone()
    } else {
        match url::Url::parse(&target) {
            Ok(u) => format!(
                "{}:{}",
                u.host_str().unwrap_or(""),
                u.port_or_known_default().unwrap_or(80)
            ),
            Err(_) => {
                let _ = c.write_all(reply("400 Bad Request").as_bytes()).await;
                return;
            }
        }
    };
    let Some((host, port)) = authority
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?)))
    else {
        let _ = c.write_all(reply("400 Bad Request").as_bytes()).await;
        return;
    };
    let Some(mut up) = loopback(&host, port).await else {
        TestProxy::note(&state, format!("{asked} unreachable"));
        let _ = c.write_all(reply("502 Bad Gateway").as_bytes()).await;
        return;
    };
    TestProxy::note(&state, format!("{asked} forwarded"));
    if method == "CONNECT" {
        if c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    } else if up.write_all(&head).await.is_err() {
        // The absolute-form request goes on as it is (servers accept it).
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
}

async fn socks_client(state: Arc<State>, mut c: TcpStream) {
    let _ = socks(&state, &mut c).await;
}

async fn socks(state: &State, c: &mut TcpStream) -> std::io::Result<()> {
    let mut hello = [0u8; 2];
    c.read_exact(&mut hello).await?;
    let mut methods = vec![0u8; hello[1] as usize];
    c.read_exact(&mut methods).await?;
    if hello[0] != 5 {
        return Ok(());
    }
    let want = if state.credentials.is_some() { 2 } else { 0 };
    if !methods.contains(&want) {
        TestProxy::note(state, "SOCKS5 no acceptable method".into());
        c.write_all(&[5, 0xff]).await?;
        return Ok(());
    }
    c.write_all(&[5, want]).await?;
    if let Some((user, password)) = &state.credentials {
        let mut v = [0u8; 2];
        c.read_exact(&mut v).await?;
        let mut u = vec![0u8; v[1] as usize];
        c.read_exact(&mut u).await?;
        let mut l = [0u8; 1];
        c.read_exact(&mut l).await?;
        let mut p = vec![0u8; l[0] as usize];
        c.read_exact(&mut p).await?;
        if u != user.as_bytes() || p != password.as_bytes() {
            TestProxy::note(state, "SOCKS5 wrong password".into());
            c.write_all(&[1, 1]).await?;
            return Ok(());
        }
        c.write_all(&[1, 0]).await?;
    }
    let mut req = [0u8; 4];
    c.read_exact(&mut req).await?;
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            c.read_exact(&mut a).await?;
            format!("ip {}", std::net::Ipv4Addr::from(a))
        }
        3 => {
            let mut l = [0u8; 1];
            c.read_exact(&mut l).await?;
            let mut d = vec![0u8; l[0] as usize];
            c.read_exact(&mut d).await?;
            format!("name {}", String::from_utf8_lossy(&d))
        }
        4 => {
            let mut a = [0u8; 16];
            c.read_exact(&mut a).await?;
            format!("ip {}", std::net::Ipv6Addr::from(a))
        }
        _ => return Ok(()),
    };
    let mut p = [0u8; 2];
    c.read_exact(&mut p).await?;
    let port = u16::from_be_bytes(p);
    let asked = format!("SOCKS5 {host}:{port}");
    let reply = |code: u8| [5, code, 0, 1, 127, 0, 0, 1, 0, 0];
    if req[1] != 1 {
        c.write_all(&reply(7)).await?;
        return Ok(());
    }
    if *state.answer.lock().unwrap() == Answer::Refuse {
        TestProxy::note(state, format!("{asked} refused"));
        c.write_all(&reply(2)).await?;
        return Ok(());
    }
    let target = host.split_once(' ').map(|(_, h)| h).unwrap_or("");
    let Some(mut up) = loopback(target, port).await else {
        TestProxy::note(state, format!("{asked} unreachable"));
        c.write_all(&reply(4)).await?;
        return Ok(());
    };
    TestProxy::note(state, format!("{asked} forwarded"));
    c.write_all(&reply(0)).await?;
    let _ = tokio::io::copy_bidirectional(c, &mut up).await;
    Ok(())
}
