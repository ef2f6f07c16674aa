//! Logging in to an upstream SMTP server with XOAUTH2.
//!
//! `smtps://`: TLS first. `smtp://`: greeting and `EHLO` in clear, then
//! `STARTTLS` (required: never a plaintext fallback) and `EHLO` again over
//! TLS. The `EHLO` name is the client's own. XOAUTH2 is sent after the `334`
//! (both providers accept that form), or inline for Gmail, which is known to
//! accept it and saves a round trip. An error challenge (`334 <base64
//! JSON>`) is answered with an empty line and the final reply reported.

use mailgate_config::{Preset, UpstreamSecurity};
use mailgate_proto::ExposeSecret;
use mailgate_proto::sasl::{decode_error_challenge, encode_xoauth2};
use mailgate_proto::smtp::{Reply, decode_reply};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};
use zeroize::Zeroizing;

use crate::login::Attempt;
use crate::upstream::{LineReader, LoggedIn, UpstreamError, connect_tcp, handshake, send};

async fn reply<S: AsyncRead + Unpin>(
    s: &mut S,
    r: &mut LineReader,
    a: &Attempt,
) -> Result<Reply, UpstreamError> {
    r.read_message(s, &a.server, decode_reply).await
}

fn unexpected(a: &Attempt, what: &str, r: &Reply) -> UpstreamError {
    let detail = format!("{what}: {} {}", r.code, r.text());
    if (400..500).contains(&r.code) {
        UpstreamError::Unavailable {
            server: a.server.to_string(),
            detail,
        }
    } else {
        UpstreamError::Protocol {
            server: a.server.to_string(),
            reason: detail,
        }
    }
}

/// Reads the greeting and says EHLO; returns the EHLO reply.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    r: &mut LineReader,
    a: &Attempt,
    ehlo: &str,
    read_greeting: bool,
) -> Result<Reply, UpstreamError> {
    if read_greeting {
        let g = reply(s, r, a).await?;
        if g.code != 220 {
            return Err(unexpected(a, "greeting", &g));
        }
    }
    send(s, format!("EHLO {ehlo}\r\n").as_bytes(), &a.server).await?;
    let e = reply(s, r, a).await?;
    if e.code != 250 {
        return Err(unexpected(a, "EHLO", &e));
    }
    Ok(e)
}

/// Connects, secures and logs in; `ehlo` is the client's EHLO name.
pub async fn login(a: &Attempt, ehlo: &str) -> Result<LoggedIn, UpstreamError> {
    let tcp = connect_tcp(&a.server).await?;
    let (mut stream, mut reader) = match a.server.security {
        UpstreamSecurity::ImplicitTls => {
            let mut s = handshake(tcp, &a.server, a.tls.clone()).await?;
            let mut r = LineReader::default();
            greet(&mut s, &mut r, a, ehlo, true).await?;
            (s, r)
        }
        UpstreamSecurity::StartTls => {
            let mut tcp = tcp;
            let mut r = LineReader::default();
            let e = greet(&mut tcp, &mut r, a, ehlo, true).await?;
            if !e.ehlo_keywords().iter().any(|(k, _)| k == "STARTTLS") {
                return Err(UpstreamError::Protocol {
                    server: a.server.to_string(),
                    reason: "the server does not offer STARTTLS; mailgate never sends a token in clear (use smtps:// if the server has implicit TLS)".into(),
                });
            }
            send(&mut tcp, b"STARTTLS\r\n", &a.server).await?;
            let go = reply(&mut tcp, &mut r, a).await?;
            if go.code != 220 {
                return Err(unexpected(a, "STARTTLS", &go));
            }
            if !r.buffered().is_empty() {
                return Err(UpstreamError::Protocol {
                    server: a.server.to_string(),
                    reason: "the server sent data after its STARTTLS reply (possible injection); giving up".into(),
                });
            }
            let mut s = handshake(tcp, &a.server, a.tls.clone()).await?;
            debug!("upstream STARTTLS done");
            let mut r = LineReader::default();
            greet(&mut s, &mut r, a, ehlo, false).await?;
            (s, r)
        }
    };

    let ir = encode_xoauth2(&a.user, &a.token);
    let mut r = if a.provider.preset == Preset::Gmail {
        let line = Zeroizing::new(format!("AUTH XOAUTH2 {}\r\n", ir.expose_secret()));
        send(&mut stream, line.as_bytes(), &a.server).await?;
        reply(&mut stream, &mut reader, a).await?
    } else {
        send(&mut stream, b"AUTH XOAUTH2\r\n", &a.server).await?;
        let r = reply(&mut stream, &mut reader, a).await?;
        if r.code != 334 {
            return Err(rejection(a, &r, None));
        }
        let line = Zeroizing::new(format!("{}\r\n", ir.expose_secret()));
        send(&mut stream, line.as_bytes(), &a.server).await?;
        reply(&mut stream, &mut reader, a).await?
    };
    let mut challenge = None;
    if r.code == 334 {
        let text = r.text();
        let decoded = decode_error_challenge(text.as_bytes())
            .map(|c| c.json.to_string())
            .unwrap_or_else(|_| format!("(undecodable challenge {text:?})"));
        info!(server = %a.server, challenge = %decoded, "upstream XOAUTH2 error challenge");
        challenge = Some(decoded);
        send(&mut stream, b"\r\n", &a.server).await?;
        r = reply(&mut stream, &mut reader, a).await?;
    }
    if r.code == 235 {
        return Ok(LoggedIn {
            stream,
            leftover: reader.into_buffered(),
        });
    }
    Err(rejection(a, &r, challenge))
}

/// A failed `AUTH`: temporary (4xx) or a refusal of the token (5xx).
fn rejection(a: &Attempt, r: &Reply, challenge: Option<String>) -> UpstreamError {
    let mut detail = format!("{} {}", r.code, r.text());
    if let Some(c) = challenge {
        detail.push_str(&format!(" (challenge {c})"));
    }
    if (400..500).contains(&r.code) {
        UpstreamError::Unavailable {
            server: a.server.to_string(),
            detail,
        }
    } else {
        UpstreamError::Rejected {
            server: a.server.to_string(),
            detail,
        }
    }
}
