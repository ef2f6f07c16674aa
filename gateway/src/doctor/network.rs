//! The network to a provider: each mail server (DNS, TCP, TLS verified as
//! the sessions verify it), the token endpoint and Graph over HTTPS, and
//! this machine's clock against the token endpoint's `Date`.

use std::time::{Duration, SystemTime};

use mailgate_config::{Provider, Sending, Upstream, UpstreamSecurity};

use super::report::{Line, Status};
use crate::context::Context;
use crate::net::stream::Stream;
use crate::session::upstream::{connect_tcp, handshake, within};

/// More clock difference than this is a warning: tokens and certificates
/// are checked against the clock.
const MAX_SKEW: Duration = Duration::from_secs(120);

pub(super) async fn check(ctx: &Context, p: &Provider) -> Vec<Line> {
    let mut out = Vec::new();
    let servers = [
        ("IMAP", p.imap.as_ref()),
        ("POP3", p.pop3.as_ref()),
        (
            "SMTP",
            p.smtp.as_ref().filter(|_| p.sending != Sending::Graph),
        ),
    ];
    for (name, up) in servers {
        if let Some(up) = up {
            out.push(server(ctx, p, name, up).await);
        }
    }
    out.extend(https(ctx, p).await);
    out
}

/// DNS, TCP and (implicit) TLS to one mail server.
async fn server(ctx: &Context, p: &Provider, name: &str, up: &Upstream) -> Line {
    let check = format!("{name} server {up}");
    let limit = ctx.config().gateway.upstream_timeout;
    if up.proxy.is_none() {
        match tokio::time::timeout(limit, tokio::net::lookup_host((up.host.as_str(), up.port)))
            .await
            .map(|r| r.map(|mut a| a.next().is_some()))
        {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                return Line::new(
                    Status::Fail,
                    check,
                    format!("DNS has no address for {}", up.host),
                );
            }
            Ok(Err(e)) => {
                return Line::new(
                    Status::Fail,
                    check,
                    format!("DNS cannot resolve {}: {e}", up.host),
                );
            }
            Err(_) => return Line::new(Status::Fail, check, "DNS did not answer in time"),
        }
    }
    let tcp = match within(limit, up, connect_tcp(up)).await {
        Ok(t) => t,
        Err(e) => return Line::new(Status::Fail, check, e.to_string()),
    };
    if up.security == UpstreamSecurity::StartTls {
        return Line::new(
            Status::Ok,
            check,
            "resolves and accepts connections (STARTTLS: its certificate is checked by the login)",
        );
    }
    let tls = match ctx.upstream_tls(&p.name) {
        Ok(t) => t,
        Err(e) => return Line::new(Status::Fail, check, format!("the provider's ca_file: {e}")),
    };
    match within(limit, up, handshake(Stream::plain(tcp), up, tls)).await {
        Ok(_) => Line::new(
            Status::Ok,
            check,
            "resolves, accepts connections, and its certificate verifies",
        ),
        Err(e) => Line::new(Status::Fail, check, e.to_string()),
    }
}

/// The token endpoint (and Graph, when this provider sends through it)
/// over HTTPS, and the clock.
async fn https(ctx: &Context, p: &Provider) -> Vec<Line> {
    let http = match ctx.accounts.http_for(p) {
        Ok(h) => h,
        Err(e) => return vec![Line::new(Status::Fail, "outbound proxy", e.to_string())],
    };
    let mut urls = vec![("token endpoint host", p.token_url.clone())];
    if p.sending != Sending::Smtp {
        urls.push(("Microsoft Graph", p.graph.url.clone()));
    }
    let mut out = Vec::new();
    for (what, url) in urls {
        let check = format!("{what} {}", url.origin().ascii_serialization());
        match http.get(url.clone()).send().await {
            Ok(r) => {
                out.push(Line::new(
                    Status::Ok,
                    check.clone(),
                    format!(
                        "answers over {} (HTTP {})",
                        url.scheme(),
                        r.status().as_u16()
                    ),
                ));
                if what == "token endpoint host"
                    && let Some(date) = r
                        .headers()
                        .get(reqwest::header::DATE)
                        .and_then(|d| d.to_str().ok())
                        .and_then(httpdate_parse)
                {
                    out.push(clock(date));
                }
            }
            Err(e) => out.push(Line::new(
                Status::Fail,
                check,
                crate::accounts::oauth::chain(&e),
            )),
        }
    }
    out
}

/// The clock's line, from the server's `Date`.
fn clock(server: SystemTime) -> Line {
    let now = SystemTime::now();
    let skew = now
        .duration_since(server)
        .or_else(|_| server.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_SKEW {
        Line::new(
            Status::Warn,
            "clock",
            format!(
                "this machine's clock differs from the token endpoint's by {} s: tokens and certificates are checked against it; the certificate is not valid yet or expired on a wrong clock — enable NTP (timedatectl set-ntp true)",
                skew.as_secs()
            ),
        )
    } else {
        Line::new(
            Status::Ok,
            "clock",
            format!("within {} s of the token endpoint's", skew.as_secs().max(1)),
        )
    }
}

/// An HTTP date (RFC 9110 IMF-fixdate).
fn httpdate_parse(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(&imf_to_rfc3339(s)?).ok()
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → `1994-11-06 08:49:37`.
fn imf_to_rfc3339(s: &str) -> Option<String> {
    let mut w = s.split_whitespace().skip(1);
    let (day, month, year, time) = (w.next()?, w.next()?, w.next()?, w.next()?);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| x.eq_ignore_ascii_case(month))? + 1;
    Some(format!("{year}-{m:02}-{:0>2} {time}", day))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_and_skew() {
        let t = httpdate_parse("Sun, 06 Nov 1994 08:49:37 GMT").expect("parses");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after")
                .as_secs(),
            784_111_777
        );
        assert_eq!(clock(SystemTime::now()).status, Status::Ok);
        let late = clock(SystemTime::now() - Duration::from_secs(600));
        assert_eq!(late.status, Status::Warn);
        assert!(late.see.is_some(), "explained: {late:?}");
    }
}
