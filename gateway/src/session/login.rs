//! The login shared by every protocol: the account's login under the
//! listener's in-band policy (account policy, in [`crate::accounts`]), a
//! fresh token, the upstream login; when the upstream rejects the token, drop it,
//! refresh once and retry the upstream login once, without dropping the
//! client (SPEC §5).

use std::future::Future;
use std::sync::Arc;

use mailgate_config::{Protocol, Provider, Upstream};
use secrecy::SecretString;
use tracing::{info, warn};

use crate::accounts::LoginError;
use crate::accounts::store::Audience;
use crate::context::Context;
use crate::session::established::Established;
use crate::session::upstream::LoggedIn;
use crate::session::upstream::{UpstreamError, within};

/// Why a login failed, as each protocol reports it to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Unknown user or wrong local password. Counts towards the limit.
    BadCredentials,
    /// No usable token; the text tells the user what to do.
    NeedsAuthorization(String),
    /// The provider refused even a freshly refreshed token.
    Refused(String),
    /// The provider or its token endpoint cannot be reached or used now.
    Unavailable(String),
    /// Refused without a check after too many wrong passwords (backoff);
    /// the text says for how long.
    Throttled(String),
}

impl Failure {
    /// A short name for logs and the `result` label of `mailgate_logins_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::BadCredentials => "bad_credentials",
            Failure::NeedsAuthorization(_) => "needs_authorization",
            Failure::Refused(_) => "refused",
            Failure::Unavailable(_) => "unavailable",
            Failure::Throttled(_) => "throttled",
        }
    }

    /// Whether the failure counts towards the per-connection limit: wrong
    /// credentials, and logins that need an authorisation (in-band flows
    /// count, SPEC §4), not a provider that is down.
    pub fn counts(&self) -> bool {
        matches!(
            self,
            Failure::BadCredentials | Failure::NeedsAuthorization(_) | Failure::Throttled(_)
        )
    }

    /// The message shown to the client.
    pub fn text(&self) -> &str {
        match self {
            Failure::BadCredentials => "Invalid credentials",
            Failure::NeedsAuthorization(t)
            | Failure::Refused(t)
            | Failure::Unavailable(t)
            | Failure::Throttled(t) => t,
        }
    }
}

impl Failure {
    /// What a mail client is told of an account's failure, with what to do
    /// about it: the one place where the account layer's errors get their
    /// advice.
    pub fn of(e: LoginError, user: &str) -> Failure {
        use crate::accounts::{Unavailable as U, Unusable};
        let user = crate::accounts::account_name(user).unwrap_or_default();
        let run_login = format!("on the gateway run `mailgate login {user}`");
        match e {
            LoginError::BadCredentials | LoginError::NoToken => Failure::BadCredentials,
            LoginError::AuthorizeAt(text) => Failure::NeedsAuthorization(text),
            LoginError::Shared(text) => Failure::Refused(text),
            LoginError::Throttled(d) => Failure::Throttled(format!(
                "Too many failed logins for {user} or from this address; try again in {} s",
                d.as_secs().max(1)
            )),
            LoginError::NeedsAuthorization { why, .. } => Failure::NeedsAuthorization(match why {
                Unusable::Damaged => format!("The stored token of {user} is damaged; {run_login}"),
                Unusable::Unopenable => {
                    format!("The stored token of {user} cannot be used; {run_login}")
                }
                Unusable::Expired => {
                    format!("The authorisation of {user} has expired or was revoked; {run_login}")
                }
                Unusable::Marked => format!("{user} must be authorised again; {run_login}"),
                Unusable::NoGraph => format!(
                    "The authorisation of {user} does not allow sending through Microsoft Graph; authorise it again to allow it: {run_login}"
                ),
            }),
            LoginError::Unavailable(u) => {
                let advice = match &u {
                    U::NoProvider(_) => "",
                    U::Store | U::AppToken(_) => "; see the gateway's log",
                    U::TooManyAtOnce | U::Busy => "; try again shortly",
                    U::TokenEndpoint(_) => "; try again later",
                    U::Proxy => "; the administrator must check the gateway's proxy settings",
                    U::NotDelegated(_) => {
                        "; the administrator must grant it in the Google Admin console (Security → API controls → Domain-wide delegation; the gateway's log names the client ID and scopes)"
                    }
                    U::ClientRejected => {
                        "; the administrator must check the provider's client_id and its client secret or certificate"
                    }
                };
                Failure::Unavailable(format!("Cannot log in now: {u}{advice}"))
            }
        }
    }
}

/// Who is logging in, and how their listener is set up.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub peer: std::net::SocketAddr,
    /// In-band authorisation is on for the listener.
    pub in_band: bool,
}

/// One upstream login attempt's inputs.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub server: Upstream,
    pub tls: Arc<rustls::ClientConfig>,
    /// The SASL identity upstream.
    pub user: String,
    pub token: SecretString,
    pub provider: Arc<Provider>,
}

/// Authenticates `user` locally and logs in to the provider's server for
/// `protocol` with `attempt`; or, for SMTP and an account that sends
/// through Microsoft Graph, gets its Graph token instead (with `smtp =
/// "auto"`, once the tenant refused SMTP AUTH).
pub async fn run<F, Fut>(
    ctx: &Context,
    protocol: Protocol,
    user: &str,
    password: &SecretString,
    client: Client,
    attempt: F,
) -> Result<Established, Failure>
where
    F: Fn(Attempt) -> Fut,
    Fut: Future<Output = Result<LoggedIn, UpstreamError>>,
{
    let result = async {
        let accounts = &ctx.accounts;
        let peer = client.peer.ip();
        let in_band = if client.in_band {
            crate::accounts::inband::InBand::On {
                portal: ctx.portal_url(),
            }
        } else {
            crate::accounts::inband::InBand::Off
        };
        let graph = protocol == Protocol::Smtp && accounts.sends_by_graph(user);
        let audience = if graph { Audience::Graph } else { Audience::Mail };
        let auth = accounts
            .log_in(user, password, peer, in_band, audience)
            .await
            .map_err(|e| Failure::of(e, user))?;
        if graph {
            return Ok(Established::Graph(auth));
        }
        let provider = auth.provider.clone();
        let Some(server) = provider.upstream(protocol).cloned() else {
            warn!(provider = %provider.name, %protocol, "the provider has no server for this protocol");
            return Err(Failure::Unavailable(format!(
                "The provider of {} has no {protocol} server configured",
                auth.user
            )));
        };
        let tls = ctx.upstream_tls(&provider.name).map_err(|e| {
            warn!(error = %e, "upstream TLS configuration");
            Failure::Unavailable(
                "The gateway's TLS configuration for the provider is broken; see its log".into(),
            )
        })?;
        let limit = ctx.config().gateway.upstream_timeout;
        // A delegate opens a shared mailbox over IMAP and POP3 (XOAUTH2
        // `user=` the shared mailbox, the delegate's token); over SMTP it
        // logs in as itself and the client's MAIL FROM says who it sends
        // as.
        let upstream_user = if protocol == Protocol::Smtp {
            auth.upstream_user.clone()
        } else {
            auth.mailbox().to_owned()
        };
        let make = |token: SecretString| Attempt {
            server: server.clone(),
            tls: tls.clone(),
            user: upstream_user.clone(),
            token,
            provider: provider.clone(),
        };
        let timed = |fut| async {
            let started = std::time::Instant::now();
            let r = within(limit, &server, fut).await;
            ctx.metrics.upstream_login(protocol, started.elapsed());
            r
        };
        let first = timed(attempt(make(auth.access_token.clone()))).await;
        let rejection = match first {
            Ok(t) => return Ok(Established::Upstream(t)),
            Err(UpstreamError::Rejected { detail, .. }) => detail,
            Err(e) => return Err(unavailable(e)),
        };
        // `smtp = "auto"`: a tenant with SMTP AUTH off sends through Graph
        // from now on.
        if protocol == Protocol::Smtp
            && auth.provider.sending == mailgate_config::Sending::Auto
            && smtp_auth_disabled(&rejection)
        {
            accounts.send_by_graph(&auth.user, &rejection);
            let graph = accounts
                .token_for(&auth, Audience::Graph)
                .await
                .map_err(|e| Failure::of(e, user))?;
            return Ok(Established::Graph(graph));
        }
        info!(detail = %rejection, "upstream rejected the token; refreshing and retrying once");
        let token = accounts
            .token_rejected(&auth)
            .await
            .map_err(|e| Failure::of(e, user))?;
        match timed(attempt(make(token))).await {
            Ok(t) => Ok(Established::Upstream(t)),
            Err(UpstreamError::Rejected { detail, .. }) => {
                warn!(%detail, "upstream rejected a freshly refreshed token");
                if let Some(shared) = &auth.shared {
                    return Err(Failure::Refused(format!(
                        "{} has no access to {shared} ({detail}): an administrator grants FullAccess (Add-MailboxPermission) for IMAP and POP3, Send As (Add-RecipientPermission) for sending",
                        auth.user
                    )));
                }
                // A refusal `mailgate doctor` knows is said in its words.
                let what_to_do = crate::doctor::table::explain(&detail).map_or(
                    "check that the mailbox allows this protocol",
                    |k| k.what_to_do,
                );
                Err(Failure::Refused(format!(
                    "The provider refused the login of {} ({detail}); {what_to_do}",
                    auth.upstream_user
                )))
            }
            Err(e) => Err(unavailable(e)),
        }
    }
    .await;
    ctx.metrics.login_result(
        protocol,
        match &result {
            Ok(_) => "ok",
            Err(f) => f.kind(),
        },
    );
    result
}

/// Whether an SMTP server's refusal says that the tenant (or the mailbox)
/// has SMTP AUTH turned off (Office 365: `535 5.7.139 ...
/// SmtpClientAuthentication is disabled`).
pub fn smtp_auth_disabled(detail: &str) -> bool {
    detail.contains("5.7.139") || detail.contains("SmtpClientAuthentication is disabled")
}

/// The client is told what happened and what to do, in one line; the
/// detail (server and proxy names, certificate names, error chains) is
/// for the administrator, in the log.
fn unavailable(e: UpstreamError) -> Failure {
    warn!(error = %e, "upstream login failed");
    Failure::Unavailable(format!("{}; {}", e.summary(), e.advice()))
}
