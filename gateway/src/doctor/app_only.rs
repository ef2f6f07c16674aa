//! `mailgate doctor USER --app-only`: for an account served with the
//! organisation's own credentials, a login per protocol straight to the
//! provider with the app-only token (no local password: the gateway gets
//! that token by itself), ending at the server's success reply.

use mailgate_config::{Config, Protocol, Sending};

use super::report::{Line, Status};
use crate::accounts::store::Audience;
use crate::context::Context;
use crate::protocols::{imap::Imap, pop3::Pop3, smtp::Smtp};
use crate::session::Dialect;
use crate::session::login::Attempt;
use crate::session::upstream::{log_in, within};

pub(super) async fn log_in_upstream(ctx: &Context, config: &Config, user: &str) -> Vec<Line> {
    let Some(provider) = config
        .find_account(user)
        .and_then(|a| config.provider(&a.provider).cloned())
    else {
        return Vec::new();
    };
    if !provider.is_app_only() {
        return vec![Line::new(
            Status::Fail,
            "app-only logins",
            format!(
                "{user}'s provider signs users in (flow {}): give its local password instead of --app-only",
                provider.flow
            ),
        )];
    }
    let mut out = Vec::new();
    for p in [Protocol::Imap, Protocol::Pop3, Protocol::Smtp] {
        let check = format!("{p} login upstream as {user} (app-only)");
        if p == Protocol::Smtp && provider.sending != Sending::Smtp {
            out.push(match ctx.accounts.token_of(user, Audience::Graph).await {
                Ok(_) => Line::new(
                    Status::Ok,
                    check,
                    "a Microsoft Graph token for sending was issued",
                ),
                Err(e) => Line::new(Status::Fail, check, e.to_string()),
            });
            continue;
        }
        let Some(server) = provider.upstream(p).cloned() else {
            continue;
        };
        let auth = match ctx.accounts.token_of(user, Audience::Mail).await {
            Ok(a) => a,
            Err(e) => {
                out.push(Line::new(Status::Fail, check, e.to_string()));
                continue;
            }
        };
        let tls = match ctx.upstream_tls(&provider.name) {
            Ok(t) => t,
            Err(e) => {
                out.push(Line::new(
                    Status::Fail,
                    check,
                    format!("the provider's ca_file: {e}"),
                ));
                continue;
            }
        };
        let attempt = Attempt {
            server: server.clone(),
            tls: tls.clone(),
            user: auth.upstream_user.clone(),
            token: auth.access_token.clone(),
            provider: provider.clone(),
        };
        let limit = ctx.config().gateway.upstream_timeout;
        let logged = match p {
            Protocol::Imap => {
                within(
                    limit,
                    &server,
                    log_in(Imap::upstream(&(), &attempt), &server, tls),
                )
                .await
            }
            Protocol::Pop3 => {
                within(
                    limit,
                    &server,
                    log_in(Pop3::upstream(&(), &attempt), &server, tls),
                )
                .await
            }
            Protocol::Smtp => {
                let ehlo = "mailgate-doctor".to_owned();
                within(
                    limit,
                    &server,
                    log_in(Smtp::upstream(&ehlo, &attempt), &server, tls),
                )
                .await
            }
        };
        out.push(match logged {
            Ok(_) => Line::new(
                Status::Ok,
                check,
                format!(
                    "{server} accepted the app-only token for {}",
                    auth.upstream_user
                ),
            ),
            Err(e) => Line::new(Status::Fail, check, e.to_string()),
        });
    }
    out
}
