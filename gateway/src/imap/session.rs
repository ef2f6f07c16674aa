//! One IMAP client connection: the pre-auth dialogue under a deadline, the
//! login, then the relay. Thin async glue around [`PreAuth`].

use std::net::SocketAddr;
use std::sync::Arc;

use mailgate_config::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use super::capabilities;
use super::preauth::{Event, Options, PreAuth};
use super::upstream::{self, LoggedIn};
use crate::login::{self, Failure};
use crate::server::Context;

pub async fn serve(mut client: TcpStream, peer: SocketAddr, ctx: Arc<Context>) {
    let gw = &ctx.config.gateway;
    let deadline = Instant::now() + gw.preauth_timeout;
    let mut m = PreAuth::new(Options::default());
    if client.write_all(&m.greeting(&gw.hostname)).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(event) = m.next_event() {
            match event {
                Event::Write(bytes) => {
                    if client.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Event::Close => {
                    let _ = client.shutdown().await;
                    return;
                }
                Event::Login {
                    tag,
                    user,
                    password,
                } => {
                    tracing::Span::current().record("user", user.as_str());
                    let result = login::login(
                        &ctx,
                        Protocol::Imap,
                        &user,
                        &password,
                        peer.ip(),
                        |server, tls, upstream_user, token| async move {
                            upstream::login(&server, tls, &upstream_user, &token).await
                        },
                    )
                    .await;
                    match result {
                        Ok(up) => return relay(client, m, &tag, up).await,
                        Err(f) => {
                            info!(failure = ?kind(&f), "login failed");
                            let (code, counts) = match &f {
                                Failure::BadCredentials => ("AUTHENTICATIONFAILED", true),
                                Failure::Refused(_) => ("AUTHENTICATIONFAILED", false),
                                Failure::NeedsAuthorization(_) => ("ALERT", false),
                                Failure::Unavailable(_) => ("UNAVAILABLE", false),
                            };
                            m.login_failed(code, f.text(), counts);
                        }
                    }
                }
            }
        }
        match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            Err(_) => {
                info!("closing: no login within the pre-auth timeout");
                let bye = format!(
                    "* BYE Autologout: no login within {}\r\n",
                    humantime::format_duration(gw.preauth_timeout)
                );
                let _ = client.write_all(bye.as_bytes()).await;
                return;
            }
            Ok(Ok(0)) => {
                debug!("client closed before login");
                return;
            }
            Ok(Ok(n)) => m.feed(&buf[..n]),
            Ok(Err(e)) => {
                debug!(error = %e, "client read failed");
                return;
            }
        }
    }
}

fn kind(f: &Failure) -> &'static str {
    match f {
        Failure::BadCredentials => "bad credentials",
        Failure::NeedsAuthorization(_) => "needs authorization",
        Failure::Refused(_) => "refused upstream",
        Failure::Unavailable(_) => "unavailable",
    }
}

async fn relay(mut client: TcpStream, m: PreAuth, tag: &str, mut up: LoggedIn) {
    let ok = match &up.capabilities {
        Some(c) => format!(
            "{tag} OK [CAPABILITY {}] Logged in\r\n",
            capabilities::post_login(c)
        ),
        None => format!("{tag} OK Logged in\r\n"),
    };
    if client.write_all(ok.as_bytes()).await.is_err() {
        return;
    }
    info!("logged in upstream; relaying");
    let residual = m.into_residual();
    match crate::relay::relay(&mut client, &mut up.stream, &residual, &up.leftover).await {
        Ok((sent, received)) => info!(bytes_up = sent, bytes_down = received, "session closed"),
        Err(e) => info!(error = %e, "session ended"),
    }
}
