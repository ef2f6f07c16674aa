//! A real login per protocol, through a gateway of this process on
//! loopback ports: IMAP `LOGIN` then `LOGOUT`, POP3 `USER`/`PASS` then
//! `QUIT`, SMTP `AUTH PLAIN` then `QUIT` — no mailbox is selected, no
//! message listed or sent.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use mailgate_config::{Config, Protocol};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use super::report::{Line, Status};
use crate::server::Gateway;

/// The longest a login may take (the gateway's own limits are shorter).
const LIMIT: Duration = Duration::from_secs(90);

/// A gateway like `config`'s for checks ([`crate::server::start_for_checks`]):
/// one plain listener per protocol of `config` on a loopback port (so it
/// runs beside the serving gateway), no in-band authorisation, no portal,
/// no metrics.
pub async fn start(config: &Config) -> anyhow::Result<Gateway> {
    let mut c = config.clone();
    let mut protocols: Vec<Protocol> = c.listeners.iter().map(|l| l.protocol).collect();
    protocols.sort_by_key(|p| p.to_string());
    protocols.dedup();
    let template = c.listeners.first().cloned();
    c.listeners = protocols
        .into_iter()
        .filter_map(|p| {
            let mut l = template.clone()?;
            l.protocol = p;
            l.address = SocketAddr::from(([127, 0, 0, 1], 0));
            l.tls = mailgate_config::TlsMode::None;
            l.certificate = None;
            l.key = None;
            l.insecure_plaintext = false;
            l.in_band_authorization = false;
            l.proxy_protocol = false;
            Some(l)
        })
        .collect();
    c.portal = None;
    c.gateway.metrics = None;
    crate::server::start_for_checks(std::sync::Arc::new(c)).await
}

/// Logs `user` in once per protocol the configuration serves.
pub(super) async fn log_in(
    gateway: &Gateway,
    config: &Config,
    user: &str,
    password: &SecretString,
) -> Vec<Line> {
    let account = crate::accounts::split_shared_login(user).map_or(user, |(d, _)| d);
    let provider = config
        .find_account(account)
        .and_then(|a| config.provider(&a.provider).cloned());
    let mut out = Vec::new();
    for p in [Protocol::Imap, Protocol::Pop3, Protocol::Smtp] {
        let Some(addr) = gateway.address(p) else {
            continue;
        };
        let served = provider.as_ref().is_some_and(|pr| match p {
            Protocol::Imap => pr.imap.is_some(),
            Protocol::Pop3 => pr.pop3.is_some(),
            Protocol::Smtp => pr.smtp.is_some() || pr.sending != mailgate_config::Sending::Smtp,
        });
        if !served {
            continue;
        }
        let check = format!("{p} login as {user}");
        let said = tokio::time::timeout(LIMIT, dialogue(p, addr, user, password)).await;
        out.push(match said {
            Err(_) => Line::new(Status::Fail, check, "no answer within 90 s"),
            Ok(Err(e)) => Line::new(Status::Fail, check, format!("the check's gateway: {e}")),
            Ok(Ok((true, reply))) => Line::new(Status::Ok, check, reply),
            Ok(Ok((false, reply))) => Line::new(Status::Fail, check, reply),
        });
    }
    out
}

/// One login; whether it succeeded, and the server's reply.
async fn dialogue(
    p: Protocol,
    addr: SocketAddr,
    user: &str,
    password: &SecretString,
) -> std::io::Result<(bool, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let mut c = BufReader::new(tcp);
    let pw = password.expose_secret();
    match p {
        Protocol::Imap => {
            line(&mut c).await?;
            let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
            send(
                &mut c,
                &format!("a LOGIN {} {}\r\n", quote(user), quote(pw)),
            )
            .await?;
            let reply = until(&mut c, "a ").await?;
            let ok = reply.starts_with("a OK");
            send(&mut c, "b LOGOUT\r\n").await?;
            Ok((ok, reply))
        }
        Protocol::Pop3 => {
            line(&mut c).await?;
            send(&mut c, &format!("USER {user}\r\n")).await?;
            line(&mut c).await?;
            send(&mut c, &format!("PASS {pw}\r\n")).await?;
            let reply = line(&mut c).await?;
            send(&mut c, "QUIT\r\n").await?;
            Ok((reply.starts_with("+OK"), reply))
        }
        Protocol::Smtp => {
            until_final(&mut c).await?;
            send(&mut c, "EHLO mailgate-doctor\r\n").await?;
            until_final(&mut c).await?;
            let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pw}"));
            send(&mut c, &format!("AUTH PLAIN {plain}\r\n")).await?;
            let reply = until_final(&mut c).await?;
            send(&mut c, "QUIT\r\n").await?;
            Ok((reply.starts_with("235"), reply))
        }
    }
}

async fn send(c: &mut BufReader<TcpStream>, s: &str) -> std::io::Result<()> {
    c.get_mut().write_all(s.as_bytes()).await
}

async fn line(c: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut l = String::new();
    if c.read_line(&mut l).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed",
        ));
    }
    Ok(l.trim_end().to_owned())
}

/// Lines until one starts with `prefix` (an IMAP tagged reply).
async fn until(c: &mut BufReader<TcpStream>, prefix: &str) -> std::io::Result<String> {
    loop {
        let l = line(c).await?;
        if l.starts_with(prefix) {
            return Ok(l);
        }
    }
}

/// An SMTP reply's last line (`250 ...`, not `250-...`).
async fn until_final(c: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    loop {
        let l = line(c).await?;
        if l.as_bytes().get(3) != Some(&b'-') {
            return Ok(l);
        }
    }
}
