//! The login policy shared by every protocol: check the local password, get a
//! fresh token, log in upstream; when the upstream rejects the token, drop it,
//! refresh once and retry the upstream login once, without dropping the
//! client (SPEC §5).

use std::future::Future;
use std::sync::Arc;

use mailgate_config::{Protocol, Provider, Upstream};
use secrecy::SecretString;
use tracing::{info, warn};

use crate::accounts::LoginError;
use crate::server::Context;
use crate::upstream::{UpstreamError, within};

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
}

impl Failure {
    /// A short name for logs and the `result` label of `mailgate_logins_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::BadCredentials => "bad_credentials",
            Failure::NeedsAuthorization(_) => "needs_authorization",
            Failure::Refused(_) => "refused",
            Failure::Unavailable(_) => "unavailable",
        }
    }

    /// Whether the failure counts towards the per-connection limit (only
    /// wrong credentials do).
    pub fn counts(&self) -> bool {
        matches!(self, Failure::BadCredentials)
    }

    /// The message shown to the client.
    pub fn text(&self) -> &str {
        match self {
            Failure::BadCredentials => "Invalid credentials",
            Failure::NeedsAuthorization(t) | Failure::Refused(t) | Failure::Unavailable(t) => t,
        }
    }
}

impl From<LoginError> for Failure {
    fn from(e: LoginError) -> Failure {
        match e {
            LoginError::BadCredentials => Failure::BadCredentials,
            LoginError::NeedsAuthorization(t) => Failure::NeedsAuthorization(t),
            LoginError::Unavailable(t) => Failure::Unavailable(format!("Cannot log in now: {t}")),
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
/// `protocol` with `attempt`.
pub async fn login<T, F, Fut>(
    ctx: &Context,
    protocol: Protocol,
    user: &str,
    password: &SecretString,
    client: Client,
    attempt: F,
) -> Result<T, Failure>
where
    F: Fn(Attempt) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let result = login_once(ctx, protocol, user, password, client, attempt).await;
    ctx.metrics.login(
        protocol,
        match &result {
            Ok(_) => "ok",
            Err(f) => f.kind(),
        },
    );
    result
}

async fn login_once<T, F, Fut>(
    ctx: &Context,
    protocol: Protocol,
    user: &str,
    password: &SecretString,
    client: Client,
    attempt: F,
) -> Result<T, Failure>
where
    F: Fn(Attempt) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let accounts = &ctx.accounts;
    let auth = match accounts.login(user, password, client.peer.ip()).await {
        Err(LoginError::NeedsAuthorization(text)) if client.in_band => {
            return Err(Failure::NeedsAuthorization(
                in_band(ctx, user, password).await.unwrap_or(text),
            ));
        }
        other => other?,
    };
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
    let make = |token: SecretString| Attempt {
        server: server.clone(),
        tls: tls.clone(),
        user: auth.upstream_user.clone(),
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
        Ok(t) => return Ok(t),
        Err(UpstreamError::Rejected { detail, .. }) => detail,
        Err(e) => return Err(unavailable(e)),
    };
    info!(detail = %rejection, "upstream rejected the token; refreshing and retrying once");
    let token = accounts.token_rejected(&auth).await?;
    match timed(attempt(make(token))).await {
        Ok(t) => Ok(t),
        Err(UpstreamError::Rejected { detail, .. }) => {
            warn!(%detail, "upstream rejected a freshly refreshed token");
            Err(Failure::Refused(format!(
                "The provider refused the login of {} ({detail}); check that the mailbox allows this protocol",
                auth.upstream_user
            )))
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// Starts or finds the in-band flow of `user`; `None` when none can run
/// (the reason is logged and the plain instructions are shown instead).
async fn in_band(ctx: &Context, user: &str, password: &SecretString) -> Option<String> {
    let provider = ctx.accounts.provider_of(user)?;
    let user = user.trim().to_lowercase();
    match ctx.inband.authorize(&user, provider, password).await {
        Ok(text) => Some(text),
        Err(e) => {
            warn!(error = %e, "in-band authorisation could not start");
            None
        }
    }
}

fn unavailable(e: UpstreamError) -> Failure {
    warn!(error = %e, "upstream login failed");
    Failure::Unavailable(format!("The mail server cannot be reached now: {e}"))
}
