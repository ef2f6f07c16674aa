//! Logging in to an upstream IMAP server with XOAUTH2.
//!
//! `imaps://`: TLS first. `imap://`: the greeting and capabilities in clear,
//! `STARTTLS` (required: a server that does not offer it is an error, never a
//! plaintext fallback), then capabilities again over TLS. XOAUTH2 goes as an
//! initial response when the server offers SASL-IR, else after the `+`. An
//! error challenge is answered with an empty line, its JSON logged, and the
//! final `NO` reported as a rejection.

use std::sync::Arc;

use mailgate_config::{Upstream, UpstreamSecurity};
use mailgate_proto::imap::{Code, Response, Status, decode_response};
use mailgate_proto::sasl::{decode_error_challenge, encode_xoauth2};
use mailgate_proto::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::upstream::{LineReader, UpstreamError, UpstreamStream, connect_tcp, handshake, send};

/// A logged-in upstream session.
#[derive(Debug)]
pub struct LoggedIn {
    pub stream: UpstreamStream,
    /// Post-login capabilities, from the tagged `OK` or an untagged line.
    pub capabilities: Option<Vec<String>>,
    /// Bytes the server sent after its tagged `OK`.
    pub leftover: Vec<u8>,
}

struct Conn<'a, S> {
    stream: S,
    reader: LineReader,
    up: &'a Upstream,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    async fn reply(&mut self) -> Result<Response, UpstreamError> {
        let line = self.reader.read_line(&mut self.stream, self.up).await?;
        match decode_response(&line) {
            Ok((_, r)) => Ok(r),
            Err(_) => Err(self.protocol(format!(
                "unexpected reply: {}",
                String::from_utf8_lossy(&line[..line.len().min(200)]).trim_end()
            ))),
        }
    }

    fn protocol(&self, reason: String) -> UpstreamError {
        UpstreamError::Protocol {
            server: self.up.to_string(),
            reason,
        }
    }

    /// Reads the greeting; returns the capabilities it carries, if any.
    async fn greeting(&mut self) -> Result<Option<Vec<String>>, UpstreamError> {
        match self.reply().await? {
            Response::Status {
                status: Status::Ok,
                code,
                ..
            } => Ok(match code {
                Some(Code::Capability(c)) => Some(c),
                _ => None,
            }),
            Response::Status {
                status: Status::Bye,
                text,
                ..
            } => Err(UpstreamError::Unavailable {
                server: self.up.to_string(),
                detail: format!("greeted with BYE: {text}"),
            }),
            other => Err(self.protocol(format!("unexpected greeting: {other:?}"))),
        }
    }

    /// Sends `tag CAPABILITY` and collects the answer.
    async fn capability(&mut self, tag: &str) -> Result<Vec<String>, UpstreamError> {
        send(
            &mut self.stream,
            format!("{tag} CAPABILITY\r\n").as_bytes(),
            self.up,
        )
        .await?;
        let mut caps = None;
        loop {
            match self.reply().await? {
                Response::Capability(c) => caps = Some(c),
                Response::Tagged {
                    tag: t,
                    status,
                    code,
                    text,
                } if t == tag => {
                    if status != Status::Ok {
                        return Err(self.protocol(format!("CAPABILITY failed: {text}")));
                    }
                    if let Some(Code::Capability(c)) = code {
                        caps = Some(c);
                    }
                    return caps.ok_or_else(|| self.protocol("no CAPABILITY in the reply".into()));
                }
                _ => {}
            }
        }
    }
}

fn has(caps: &[String], cap: &str) -> bool {
    caps.iter().any(|c| c.eq_ignore_ascii_case(cap))
}

/// Connects, secures and logs in to `up` as `user` with `token`.
pub async fn login(
    up: &Upstream,
    tls: Arc<rustls::ClientConfig>,
    user: &str,
    token: &SecretString,
) -> Result<LoggedIn, UpstreamError> {
    let tcp = connect_tcp(up).await?;
    let (mut conn, caps) = match up.security {
        UpstreamSecurity::ImplicitTls => {
            let stream = handshake(tcp, up, tls).await?;
            let mut conn = Conn {
                stream,
                reader: LineReader::default(),
                up,
            };
            let caps = conn.greeting().await?;
            (conn, caps)
        }
        UpstreamSecurity::StartTls => {
            let mut plain = Conn {
                stream: tcp,
                reader: LineReader::default(),
                up,
            };
            let caps = match plain.greeting().await? {
                Some(c) => c,
                None => plain.capability("mg0").await?,
            };
            if !has(&caps, "STARTTLS") {
                return Err(plain.protocol(
                    "the server does not offer STARTTLS; mailgate never sends a token in clear (use imaps:// if the server has implicit TLS)".into(),
                ));
            }
            send(&mut plain.stream, b"mg1 STARTTLS\r\n", up).await?;
            loop {
                match plain.reply().await? {
                    Response::Tagged {
                        tag, status, text, ..
                    } if tag == "mg1" => {
                        if status != Status::Ok {
                            return Err(plain.protocol(format!("STARTTLS refused: {text}")));
                        }
                        break;
                    }
                    _ => {}
                }
            }
            if !plain.reader.buffered().is_empty() {
                return Err(plain.protocol(
                    "the server sent data after its STARTTLS reply (possible injection); giving up"
                        .into(),
                ));
            }
            let stream = handshake(plain.stream, up, tls).await?;
            debug!("upstream STARTTLS done");
            (
                Conn {
                    stream,
                    reader: LineReader::default(),
                    up,
                },
                None,
            )
        }
    };
    let caps = match caps {
        Some(c) => c,
        None => conn.capability("mg2").await?,
    };
    if !has(&caps, "AUTH=XOAUTH2") {
        warn!(server = %up, "the server does not announce AUTH=XOAUTH2; trying it anyway");
    }

    let ir = encode_xoauth2(user, token);
    if has(&caps, "SASL-IR") {
        let line = Zeroizing::new(format!(
            "mg3 AUTHENTICATE XOAUTH2 {}\r\n",
            ir.expose_secret()
        ));
        send(&mut conn.stream, line.as_bytes(), up).await?;
    } else {
        send(&mut conn.stream, b"mg3 AUTHENTICATE XOAUTH2\r\n", up).await?;
        match conn.reply().await? {
            Response::Continuation(_) => {}
            Response::Tagged { text, .. } => {
                return Err(conn.protocol(format!("AUTHENTICATE XOAUTH2 refused: {text}")));
            }
            other => return Err(conn.protocol(format!("unexpected reply: {other:?}"))),
        }
        let line = Zeroizing::new(format!("{}\r\n", ir.expose_secret()));
        send(&mut conn.stream, line.as_bytes(), up).await?;
    }

    let mut challenge: Option<String> = None;
    let mut post_caps = None;
    loop {
        match conn.reply().await? {
            Response::Continuation(text) => {
                // An error challenge: answer with an empty response, then the
                // server sends the final NO.
                let decoded = decode_error_challenge(text.as_bytes())
                    .map(|c| c.json.to_string())
                    .unwrap_or_else(|_| format!("(undecodable challenge {text:?})"));
                info!(server = %up, challenge = %decoded, "upstream XOAUTH2 error challenge");
                challenge = Some(decoded);
                send(&mut conn.stream, b"\r\n", up).await?;
            }
            Response::Capability(c) => post_caps = Some(c),
            Response::Status {
                status: Status::Bye,
                text,
                ..
            } => {
                return Err(UpstreamError::Unavailable {
                    server: up.to_string(),
                    detail: format!("BYE during login: {text}"),
                });
            }
            Response::Tagged {
                tag,
                status,
                code,
                text,
            } if tag == "mg3" => {
                if status == Status::Ok {
                    let capabilities = match code {
                        Some(Code::Capability(c)) => Some(c),
                        _ => post_caps,
                    };
                    return Ok(LoggedIn {
                        leftover: conn.reader.into_buffered(),
                        stream: conn.stream,
                        capabilities,
                    });
                }
                let code_name = match &code {
                    Some(Code::Other { name, .. }) => Some(name.as_str()),
                    _ => None,
                };
                let mut detail = match code_name {
                    Some(n) => format!("[{n}] {text}"),
                    None => text,
                };
                if let Some(c) = challenge {
                    detail.push_str(&format!(" (challenge {c})"));
                }
                if code_name == Some("UNAVAILABLE") {
                    return Err(UpstreamError::Unavailable {
                        server: up.to_string(),
                        detail,
                    });
                }
                return Err(UpstreamError::Rejected {
                    server: up.to_string(),
                    detail,
                });
            }
            _ => {}
        }
    }
}
