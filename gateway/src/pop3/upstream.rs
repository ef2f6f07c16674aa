//! Logging in to an upstream POP3 server with XOAUTH2: the machine of
//! [`mailgate_proto::upstream::pop3`] driven by [`crate::upstream::log_in`].

use mailgate_config::UpstreamSecurity;
use mailgate_proto::upstream::pop3::Login;

use crate::login::Attempt;
use crate::upstream::{LoggedIn, UpstreamError, log_in};

/// Connects, secures and logs in as the attempt's user.
pub async fn login(a: &Attempt) -> Result<LoggedIn, UpstreamError> {
    let tls = a.server.security == UpstreamSecurity::ImplicitTls;
    log_in(Login::new(&a.user, &a.token, tls), &a.server, a.tls.clone()).await
}
