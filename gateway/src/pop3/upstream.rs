//! Logging in to an upstream POP3 server with XOAUTH2.
//!
//! `pop3s://`: TLS first. `pop3://`: greeting and `CAPA` in clear, `STLS`
//! (required: never a plaintext fallback), then TLS. XOAUTH2 goes as
//! `AUTH XOAUTH2`, wait for `+`, then the base64 line — the form Microsoft
//! requires. An error challenge (`+ <base64 JSON>`) is answered with an
//! empty line and the final `-ERR` reported.

use mailgate_config::UpstreamSecurity;
use mailgate_proto::ExposeSecret;
use mailgate_proto::pop3::{Reply, decode_multiline, decode_reply};
use mailgate_proto::sasl::{decode_error_challenge, encode_xoauth2};
use tokio::io::AsyncRead;
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

fn protocol(a: &Attempt, reason: String) -> UpstreamError {
    UpstreamError::Protocol {
        server: a.server.to_string(),
        reason,
    }
}

fn expect_ok(a: &Attempt, what: &str, r: Reply) -> Result<(), UpstreamError> {
    match r {
        Reply::Ok(_) => Ok(()),
        Reply::Err { code, text }
            if code
                .as_deref()
                .is_some_and(|c| c.starts_with("SYS/TEMP") || c == "IN-USE") =>
        {
            Err(UpstreamError::Unavailable {
                server: a.server.to_string(),
                detail: format!("{what}: {text}"),
            })
        }
        other => Err(protocol(a, format!("{what}: unexpected reply {other:?}"))),
    }
}

/// Connects, secures and logs in.
pub async fn login(a: &Attempt) -> Result<LoggedIn, UpstreamError> {
    let tcp = connect_tcp(&a.server).await?;
    let (mut stream, mut reader) = match a.server.security {
        UpstreamSecurity::ImplicitTls => {
            let mut s = handshake(tcp, &a.server, a.tls.clone()).await?;
            let mut r = LineReader::default();
            let g = reply(&mut s, &mut r, a).await?;
            expect_ok(a, "greeting", g)?;
            (s, r)
        }
        UpstreamSecurity::StartTls => {
            let mut tcp = tcp;
            let mut r = LineReader::default();
            let g = reply(&mut tcp, &mut r, a).await?;
            expect_ok(a, "greeting", g)?;
            send(&mut tcp, b"CAPA\r\n", &a.server).await?;
            let c = reply(&mut tcp, &mut r, a).await?;
            let caps = match c {
                Reply::Ok(_) => {
                    r.read_message(&mut tcp, &a.server, decode_multiline)
                        .await?
                }
                _ => Vec::new(),
            };
            if !caps.iter().any(|c| c.trim().eq_ignore_ascii_case("STLS")) {
                return Err(protocol(
                    a,
                    "the server does not offer STLS; mailgate never sends a token in clear (use pop3s:// if the server has implicit TLS)".into(),
                ));
            }
            send(&mut tcp, b"STLS\r\n", &a.server).await?;
            let go = reply(&mut tcp, &mut r, a).await?;
            expect_ok(a, "STLS", go)?;
            if !r.buffered().is_empty() {
                return Err(protocol(
                    a,
                    "the server sent data after its STLS reply (possible injection); giving up"
                        .into(),
                ));
            }
            let s = handshake(tcp, &a.server, a.tls.clone()).await?;
            debug!("upstream STLS done");
            (s, LineReader::default())
        }
    };

    send(&mut stream, b"AUTH XOAUTH2\r\n", &a.server).await?;
    match reply(&mut stream, &mut reader, a).await? {
        Reply::Continuation(_) => {}
        Reply::Err { text, .. } => {
            return Err(protocol(a, format!("AUTH XOAUTH2 refused: {text}")));
        }
        Reply::Ok(text) => return Err(protocol(a, format!("AUTH XOAUTH2 answered +OK {text}"))),
    }
    let ir = encode_xoauth2(&a.user, &a.token);
    let line = Zeroizing::new(format!("{}\r\n", ir.expose_secret()));
    send(&mut stream, line.as_bytes(), &a.server).await?;
    let mut r = reply(&mut stream, &mut reader, a).await?;
    let mut challenge = None;
    if let Reply::Continuation(text) = &r {
        let decoded = decode_error_challenge(text.as_bytes())
            .map(|c| c.json.to_string())
            .unwrap_or_else(|_| format!("(undecodable challenge {text:?})"));
        info!(server = %a.server, challenge = %decoded, "upstream XOAUTH2 error challenge");
        challenge = Some(decoded);
        send(&mut stream, b"\r\n", &a.server).await?;
        r = reply(&mut stream, &mut reader, a).await?;
    }
    match r {
        Reply::Ok(_) => Ok(LoggedIn {
            stream,
            leftover: reader.into_buffered(),
        }),
        Reply::Err { code, text } => {
            let mut detail = match &code {
                Some(c) => format!("[{c}] {text}"),
                None => text,
            };
            if let Some(c) = challenge {
                detail.push_str(&format!(" (challenge {c})"));
            }
            if code.as_deref().is_some_and(|c| c.starts_with("SYS")) {
                Err(UpstreamError::Unavailable {
                    server: a.server.to_string(),
                    detail,
                })
            } else {
                Err(UpstreamError::Rejected {
                    server: a.server.to_string(),
                    detail,
                })
            }
        }
        Reply::Continuation(_) => Err(protocol(
            a,
            "a second challenge after the empty response".into(),
        )),
    }
}
