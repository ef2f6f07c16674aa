//! Logging in to an upstream SMTP server with XOAUTH2: the machine of
//! [`mailgate_proto::upstream::smtp`] driven by [`crate::upstream::log_in`].
//! The token goes inline on the `AUTH` line for Gmail (known to accept it;
//! it saves a round trip), after the `334` elsewhere.

use mailgate_config::{Preset, UpstreamSecurity};
use mailgate_proto::upstream::smtp::Login;

use crate::login::Attempt;
use crate::upstream::{LoggedIn, UpstreamError, log_in};

/// Connects, secures and logs in; `ehlo` is the client's EHLO name.
pub async fn login(a: &Attempt, ehlo: &str) -> Result<LoggedIn, UpstreamError> {
    let tls = a.server.security == UpstreamSecurity::ImplicitTls;
    let inline = a.provider.preset == Preset::Gmail;
    log_in(
        Login::new(&a.user, &a.token, ehlo, inline, tls),
        &a.server,
        a.tls.clone(),
    )
    .await
}
