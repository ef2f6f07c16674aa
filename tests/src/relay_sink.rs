//! Where Dovecot's submission service relays to in the interop tests: a
//! plain SMTP receiver on 127.0.0.1 that delivers each message into the
//! Dovecot mailbox with `dovecot-lda`, so that what is sent through the
//! gateway's SMTP can be read back through its IMAP and POP3.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tokio::net::TcpListener;

use crate::fake::Lines;

pub struct RelaySink {
    pub port: u16,
}

fn lda() -> PathBuf {
    PathBuf::from("/usr/lib/dovecot/dovecot-lda")
}

fn deliver(config: &PathBuf, from: &str, to: &str, message: &[u8]) -> bool {
    let Ok(mut child) = Command::new(lda())
        .arg("-c")
        .arg(config)
        .arg("-f")
        .arg(from)
        .arg("-d")
        .arg(to)
        .stdin(Stdio::piped())
        .spawn()
    else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(message);
    }
    child.wait().is_ok_and(|s| s.success())
}

fn addr_of(line: &str) -> String {
    line.split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}

impl RelaySink {
    /// Starts the sink; `dovecot_config` is the configuration `dovecot-lda`
    /// delivers with.
    pub async fn start(dovecot_config: PathBuf) -> RelaySink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let config = dovecot_config.clone();
                tokio::spawn(async move {
                    let mut c = Lines::new(tcp);
                    c.send(b"220 sink ESMTP\r\n").await?;
                    let (mut from, mut rcpts) = (String::new(), Vec::new());
                    loop {
                        let line = String::from_utf8_lossy(&c.line().await?).to_string();
                        let verb = line
                            .split([' ', '\r', '\n'])
                            .next()
                            .unwrap_or("")
                            .to_ascii_uppercase();
                        match verb.as_str() {
                            "EHLO" | "LHLO" => c.send(b"250-sink\r\n250 8BITMIME\r\n").await?,
                            "HELO" => c.send(b"250 sink\r\n").await?,
                            "MAIL" => {
                                from = addr_of(&line);
                                rcpts.clear();
                                c.send(b"250 2.1.0 OK\r\n").await?;
                            }
                            "RCPT" => {
                                rcpts.push(addr_of(&line));
                                c.send(b"250 2.1.5 OK\r\n").await?;
                            }
                            "DATA" => {
                                c.send(b"354 go\r\n").await?;
                                let mut msg = Vec::new();
                                loop {
                                    let l = c.line().await?;
                                    if l == b".\r\n" {
                                        break;
                                    }
                                    msg.extend_from_slice(l.strip_prefix(b".").unwrap_or(&l));
                                }
                                let (config, from, rcpts) =
                                    (config.clone(), from.clone(), rcpts.clone());
                                let ok = tokio::task::spawn_blocking(move || {
                                    rcpts.iter().all(|r| deliver(&config, &from, r, &msg))
                                })
                                .await
                                .unwrap_or(false);
                                let reply: &[u8] = if ok {
                                    b"250 2.0.0 delivered\r\n"
                                } else {
                                    b"451 4.3.0 delivery failed\r\n"
                                };
                                c.send(reply).await?;
                            }
                            "QUIT" => {
                                c.send(b"221 bye\r\n").await?;
                                return Some(());
                            }
                            _ => c.send(b"250 OK\r\n").await?,
                        }
                    }
                });
            }
        });
        RelaySink { port }
    }
}
