//! `mailgate doctor [USER]`: checks, in order and with a line each, the
//! configuration, the network to every upstream (DNS, TCP, TLS with the
//! certificate's validity, this machine's clock against the token
//! endpoint's), the token endpoint, the account's state and — with the
//! account's local password — a real login per protocol, which ends
//! before any mail is touched. Every failure it knows ([`table`]) comes
//! with what to do and its section of `docs/troubleshooting.md`.
//!
//! The logins go through a gateway of this process, started on loopback
//! ports with the same configuration, store and accounts (whether or not
//! another gateway runs): the password check, the refresh, the upstream
//! login or the Graph token are exactly what a mail client would meet.

mod app_only;
mod logins;

pub use logins::start as checks_gateway;
mod network;
mod report;
pub mod table;

pub use report::{Line, Status};

use std::sync::Arc;

use mailgate_config::{Config, Provider};
use secrecy::SecretString;

use crate::accounts::store::Audience;
use crate::context::Context;

/// The providers a run looks at: `user`'s, or every one.
fn providers(config: &Config, user: Option<&str>) -> Result<Vec<Arc<Provider>>, String> {
    match user {
        Some(u) => {
            let account = config
                .find_account(u)
                .ok_or_else(|| format!("{u} is not an account of the configuration"))?;
            Ok(config
                .provider(&account.provider)
                .cloned()
                .into_iter()
                .collect())
        }
        None => Ok(config.providers.values().cloned().collect()),
    }
}

/// How the logins are checked.
#[derive(Debug)]
pub enum Logins {
    /// Not at all.
    None,
    /// Through the checks' gateway, with the account's local password.
    Password(SecretString),
    /// Straight to the provider with the app-only token.
    AppOnly,
}

/// Runs every check: the configuration `config` (already loaded; `warnings`
/// are its warnings), then the network, the token endpoint, `user`'s state
/// and its logins.
pub async fn run(
    config: Config,
    warnings: Vec<String>,
    user: Option<&str>,
    logins: Logins,
) -> Vec<Line> {
    let mut lines = vec![Line::new(
        Status::Ok,
        "configuration",
        format!("{} loads", config.file.display()),
    )];
    lines.extend(
        warnings
            .into_iter()
            .map(|w| Line::new(Status::Warn, "configuration", w)),
    );
    let account = match user.map(crate::accounts::split_shared_login) {
        Some(Err(why)) => {
            lines.push(Line::new(Status::Fail, "account", why));
            return lines;
        }
        Some(Ok((delegate, _))) => Some(delegate),
        None => None,
    };
    let providers = match providers(&config, account) {
        Ok(p) => p,
        Err(e) => {
            lines.push(Line::new(Status::Fail, "account", e));
            return lines;
        }
    };
    let gateway = match logins::start(&config).await {
        Ok(g) => g,
        Err(e) => {
            lines.push(Line::new(
                Status::Fail,
                "gateway",
                format!("cannot start the checks' gateway: {e:#}"),
            ));
            return lines;
        }
    };
    let ctx = gateway.context().clone();
    for p in &providers {
        lines.extend(network::check(&ctx, p).await);
        lines.push(token_endpoint(&ctx, p).await);
    }
    if let Some(login) = user {
        // `DELEGATE\\SHARED`: the delegate's account, and the login as typed.
        let u = account.unwrap_or(login).trim().to_lowercase();
        let login = login.trim().to_lowercase();
        lines.extend(account_state(&ctx, &config, &u).await);
        match &logins {
            Logins::AppOnly => lines.extend(app_only::log_in_upstream(&ctx, &config, &u).await),
            Logins::Password(pw) => {
                let tried = logins::log_in(&gateway, &config, &login, pw).await;
                let failed = tried.iter().any(|l| l.status == Status::Fail);
                lines.extend(tried);
                // A login may have learnt something (a refresh refused):
                // the state as it is now.
                if failed {
                    lines.extend(
                        account_state(&ctx, &config, &u)
                            .await
                            .into_iter()
                            .filter(|l| l.status != Status::Ok)
                            .map(|mut l| {
                                l.check = format!("{} after the logins", l.check);
                                l
                            }),
                    );
                }
            }
            Logins::None => lines.push(Line::new(
                Status::Skip,
                "logins",
                "not asked for (--no-login): without it, doctor logs in once per protocol with the local password (MAILGATE_PASSWORD or a prompt), or with --app-only",
            )),
        }
    }
    gateway.shutdown().await;
    lines
}

/// The token endpoint answers and knows the client: a refresh with a
/// refresh token that cannot be valid must be refused as `invalid_grant`
/// (anything about the client is a failure); an app-only provider gets a
/// real token.
async fn token_endpoint(ctx: &Context, p: &Provider) -> Line {
    let check = format!("token endpoint {}", p.token_url);
    if p.is_app_only() {
        return match ctx.accounts.probe_app_token(p, Audience::Mail).await {
            Ok(()) => Line::new(Status::Ok, check, "an app-only token was issued"),
            Err(e) => Line::new(Status::Fail, check, e),
        };
    }
    match ctx
        .accounts
        .probe_refresh(p, &SecretString::from("mailgate-doctor-not-a-token"))
        .await
    {
        Ok(None) => Line::new(
            Status::Ok,
            check,
            "answers, and knows the client (a made-up refresh token was refused as invalid_grant)",
        ),
        Ok(Some(unexpected)) => Line::new(Status::Warn, check, unexpected),
        Err(e) => Line::new(Status::Fail, check, e),
    }
}

/// What the store says of `user`.
async fn account_state(ctx: &Context, config: &Config, user: &str) -> Vec<Line> {
    let check = format!("account {user}");
    let app_only = config
        .find_account(user)
        .and_then(|a| config.provider(&a.provider))
        .is_some_and(|p| p.is_app_only());
    if app_only {
        return vec![Line::new(
            Status::Ok,
            check,
            "served with the organisation's own credentials (no stored tokens)",
        )];
    }
    match ctx.accounts.record(user).await {
        Err(e) => vec![Line::new(
            Status::Fail,
            check,
            format!("the store cannot be read: {e}"),
        )],
        Ok(None) => vec![Line::new(
            Status::Fail,
            check,
            format!("not signed in yet: run `mailgate login {user}` or use the portal"),
        )],
        Ok(Some(f)) if f.needs_authorization => vec![Line::new(
            Status::Fail,
            check,
            format!(
                "needs a new sign-in (`mailgate login {user}` or the portal): {}",
                f.last_error.unwrap_or_default()
            ),
        )],
        Ok(Some(f)) if f.graph_refused => vec![Line::new(
            Status::Fail,
            check,
            format!(
                "reads mail, but its sign-in does not allow sending through Microsoft Graph (AADSTS65001): sign in again. {}",
                f.last_error.unwrap_or_default()
            ),
        )],
        Ok(Some(f)) => {
            let mut out = vec![Line::new(
                Status::Ok,
                check.clone(),
                format!(
                    "signed in; last refresh {}",
                    f.last_refresh
                        .map(|t| humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)
                        )
                        .to_string())
                        .unwrap_or_else(|| "never".into())
                ),
            )];
            if let Some(e) = f.last_error {
                out.push(Line::new(Status::Warn, check, format!("last error: {e}")));
            }
            out
        }
    }
}
