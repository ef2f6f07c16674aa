//! The upstream proof login of the identity check
//! ([`crate::accounts::identity`]): a token is shown to open the account's
//! mailbox by logging in with it, as a client of the protocol would.

use mailgate_config::Protocol;

use super::{Imap, Pop3, Smtp};
use crate::session::upstream_login;

/// One upstream login over `protocol`, as a client of that protocol would
/// make it (greeting with `hostname` where a name is said): the proof that
/// a token opens the account's mailbox ([`crate::accounts::identity`]).
pub async fn upstream_login_over(
    protocol: Protocol,
    a: &crate::session::login::Attempt,
    hostname: &str,
) -> Result<crate::session::upstream::LoggedIn, crate::session::upstream::UpstreamError> {
    match protocol {
        Protocol::Imap => upstream_login::<Imap>(&(), a).await,
        Protocol::Smtp => upstream_login::<Smtp>(&hostname.to_owned(), a).await,
        Protocol::Pop3 => upstream_login::<Pop3>(&(), a).await,
    }
}

/// The upstream proof login of [`crate::accounts::identity`]: IMAP, else
/// POP3, else SMTP, whichever the provider has, under the timeout; the
/// connection is closed at once.
pub fn prove(
    req: crate::accounts::identity::ProofRequest,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::accounts::identity::Proof> + Send>> {
    use crate::accounts::identity::Proof;
    Box::pin(async move {
        let Some((protocol, server)) = [Protocol::Imap, Protocol::Pop3, Protocol::Smtp]
            .into_iter()
            .find_map(|p| req.provider.upstream(p).map(|s| (p, s.clone())))
        else {
            return Proof::Failed(
                "the provider sends no ID token and has no mail server to log in to".into(),
            );
        };
        let tls = match mailgate_certs::upstream_client_config(req.provider.ca_file.as_deref()) {
            Ok(t) => t,
            Err(e) => return Proof::Failed(e.to_string()),
        };
        let attempt = crate::session::login::Attempt {
            server: server.clone(),
            tls,
            user: req.user.clone(),
            token: req.token.clone(),
            provider: req.provider.clone(),
        };
        let login = upstream_login_over(protocol, &attempt, &req.hostname);
        match crate::session::upstream::within(req.timeout, &server, login).await {
            Ok(_) => Proof::Opened {
                server: server.to_string(),
            },
            Err(crate::session::upstream::UpstreamError::Rejected { detail, .. }) => {
                Proof::Refused {
                    server: server.to_string(),
                    detail,
                }
            }
            Err(e) => Proof::Failed(e.to_string()),
        }
    })
}
