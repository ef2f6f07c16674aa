//! Account events by mail (`[notify] mail_from`): a short plain-text
//! message to the account's user (and `admins`), sent as one of the
//! gateway's own accounts — over its provider's SMTP server with XOAUTH2,
//! or through Microsoft Graph when that account sends through Graph.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailgate_config::{Preset, UpstreamSecurity};
use mailgate_proto::recipients::plain_address;
use mailgate_proto::upstream::smtp::Login;

use super::event::{Event, text};
use crate::accounts::store::Audience;
use crate::context::Context;
use crate::net::stream::Stream;
use crate::session::upstream::{log_in, within};

/// Sends `event` by mail from `from` to the event's user and `admins`.
pub async fn send(
    ctx: &Context,
    from: &str,
    admins: &[String],
    event: &Event,
) -> Result<(), String> {
    let mut to: Vec<String> = Vec::new();
    for a in std::iter::once(&event.user).chain(admins) {
        if plain_address(a) && !to.iter().any(|t| t.eq_ignore_ascii_case(a)) {
            to.push(a.clone());
        }
    }
    if to.is_empty() {
        return Err("no address to mail the event to".into());
    }
    let graph = ctx.accounts.sends_by_graph(from);
    let audience = if graph {
        Audience::Graph
    } else {
        Audience::Mail
    };
    let auth = ctx
        .accounts
        .token_of(from, audience)
        .await
        .map_err(|e| format!("no token for {from} (an app-only account, or one logged in to since the start, can send): {e}"))?;
    let hostname = ctx.config().gateway.hostname.clone();
    let mime = message(&auth.upstream_user, &to, event, &hostname);
    if graph {
        let http = ctx
            .accounts
            .http_for(&auth.provider)
            .map_err(|e| e.to_string())?;
        let g = crate::graph::Graph::new(
            http,
            auth.provider.graph.url.clone(),
            ctx.config().gateway.upstream_timeout * 4,
        );
        return g
            .send_mime(&auth.upstream_user, &auth.access_token, &mime)
            .await
            .map_err(|e| e.to_string());
    }
    let server = auth
        .provider
        .smtp
        .clone()
        .ok_or_else(|| format!("the provider of {from} has no SMTP server"))?;
    let tls = ctx
        .upstream_tls(&auth.provider.name)
        .map_err(|e| e.to_string())?;
    let limit = ctx.config().gateway.upstream_timeout;
    let login = Login::new(
        &auth.upstream_user,
        &auth.access_token,
        &hostname,
        auth.provider.preset == Preset::Gmail,
        server.security == UpstreamSecurity::ImplicitTls,
    );
    let logged = within(limit, &server, log_in(login, &server, tls))
        .await
        .map_err(|e| e.to_string())?;
    let mut s = Smtp {
        stream: logged.stream,
        buf: logged.leftover,
        limit,
    };
    s.command(&format!("MAIL FROM:<{}>\r\n", auth.upstream_user), "2")
        .await?;
    for t in &to {
        s.command(&format!("RCPT TO:<{t}>\r\n"), "2").await?;
    }
    s.command("DATA\r\n", "3").await?;
    let mut data = stuffed(&mime);
    data.extend_from_slice(b".\r\n");
    s.command_bytes(&data, "2").await?;
    let _ = s.command("QUIT\r\n", "2").await;
    Ok(())
}

/// The notice as a MIME message.
fn message(from: &str, to: &[String], e: &Event, hostname: &str) -> Vec<u8> {
    let subject = match e.kind {
        "needs_sign_in" => format!("Sign in again: mail for {} has stopped", e.user),
        "ready" => format!("Mail for {} flows again", e.user),
        "throttled" => format!("Mail from {} is held back by the provider", e.user),
        "credential_expiring" => "A client credential of mailgate expires soon".to_owned(),
        _ => format!("Test of mailgate's notices for {}", e.user),
    };
    let mut body = text(e);
    if e.kind == "needs_sign_in" {
        body = format!(
            "Your mail program cannot reach your mailbox until you sign in again.\r\n\r\n{body}\r\n\r\nWhy: {}\r\n",
            e.reason
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let id = format!("{}.{}", now.as_nanos(), std::process::id());
    format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: {subject}\r\nDate: {}\r\nMessage-ID: <{id}@{hostname}>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}\r\n",
        to.iter().map(|t| format!("<{t}>")).collect::<Vec<_>>().join(", "),
        rfc5322_date(now.as_secs()),
        body.replace("\r\n", "\n").replace('\n', "\r\n"),
    )
    .into_bytes()
}

/// Dot-stuffing (RFC 5321 §4.5.2).
fn stuffed(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + 16);
    let mut start = true;
    for &b in m {
        if start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `Thu, 03 Dec 2026 12:00:00 +0000` for Unix seconds `t`.
fn rfc5322_date(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        months[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A logged-in SMTP connection, one command and reply at a time.
struct Smtp {
    stream: Stream,
    buf: Vec<u8>,
    limit: Duration,
}

impl Smtp {
    async fn command(&mut self, line: &str, expect: &str) -> Result<String, String> {
        self.command_bytes(line.as_bytes(), expect).await
    }

    async fn command_bytes(&mut self, data: &[u8], expect: &str) -> Result<String, String> {
        self.stream.send(data).await.map_err(|e| e.to_string())?;
        let reply = tokio::time::timeout(self.limit, self.reply())
            .await
            .map_err(|_| "the SMTP server did not answer in time".to_owned())??;
        if reply.starts_with(expect) {
            Ok(reply)
        } else {
            Err(format!("the SMTP server answered: {}", reply.trim_end()))
        }
    }

    /// The next whole reply (its last line).
    async fn reply(&mut self) -> Result<String, String> {
        let mut chunk = [0u8; 2048];
        loop {
            while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).into_owned();
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(line);
                }
            }
            if self.buf.len() > 64 * 1024 {
                return Err("the SMTP server's reply is too long".into());
            }
            let n = self
                .stream
                .read_some(&mut chunk)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the SMTP server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_stuffing() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_796_299_200),
            "Thu, 03 Dec 2026 12:00:00 +0000"
        );
        assert_eq!(stuffed(b"a\r\n.b\r\n"), b"a\r\n..b\r\n");
    }
}
