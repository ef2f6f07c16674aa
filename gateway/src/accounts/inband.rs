//! In-band authorisation (SPEC §4): a login for an account without a usable
//! token fails with what the person must do, in the client's own protocol.
//!
//! It starts nothing and seals nothing. Whoever typed a password in a mail
//! client is not necessarily the person who will sign in at the provider: a
//! sign-in URL shown to the client could be sent to the account's owner
//! (phishing), who would sign in as themselves and so seal their own tokens
//! with the sender's password. So the message names the portal's sign-in
//! for the account instead (a link that opens the address form filled in):
//! there the person who signs in at the provider, in that browser, chooses
//! the password (SPEC §8), and a `state` from another browser is refused.
//! Without a portal, it says how the administrator authorises the account.
//! Nothing is pending, so nobody can hold an account's sign-in for
//! themselves, and the message is the same whatever password was typed.

use std::net::IpAddr;

use mailgate_config::{Flow, Provider};
use secrecy::SecretString;
use tracing::info;

use super::errors::{LoginError, Unusable};
use super::names::account_name;
use super::service::{Accounts, Authorized};
use super::store::Audience;

/// A listener's in-band policy for accounts that need an authorisation.
#[derive(Debug, Clone, Copy)]
pub enum InBand<'a> {
    /// The client is told what a wrong password is told (the log says why).
    Off,
    /// The client is told where to authorise the account: the portal's
    /// address form at `portal` when it runs, else the administrator.
    On { portal: Option<&'a url::Url> },
}

impl Accounts {
    /// A mail client's login ([`Accounts::authenticate`]) under its
    /// listener's in-band policy: an account without a usable token fails
    /// with [`LoginError::AuthorizeAt`] (what to do, and where) when the
    /// policy is on. Such a failure counts against this connection only,
    /// never against the account or the address: it is not a wrong
    /// password.
    pub async fn log_in(
        &self,
        login: &str,
        password: &SecretString,
        peer: IpAddr,
        in_band: InBand<'_>,
        audience: Audience,
    ) -> Result<Authorized, LoginError> {
        let told = |accounts: &Accounts, portal, no_graph: bool| {
            let (Some(name), Some(provider)) = (account_name(login), accounts.provider_of(login))
            else {
                return LoginError::BadCredentials;
            };
            info!("the account needs authorisation; the client is told where to do it");
            let how = instructions(portal, &name, &provider);
            LoginError::AuthorizeAt(if no_graph {
                format!(
                    "The authorisation of {name} does not allow sending through Microsoft Graph; authorise it again to allow it. {how}"
                )
            } else {
                how
            })
        };
        let tried = self.authenticate_for(login, password, peer, audience).await;
        match (tried, in_band) {
            (Err(LoginError::NoToken), InBand::Off) => {
                // Nothing can check this password: it counts against no
                // one (it is not a wrong password).
                info!(
                    "login refused: the account has no token and in-band authorisation is off on this listener; run `mailgate login USER` on the gateway"
                );
                Err(LoginError::BadCredentials)
            }
            (Err(LoginError::NoToken), InBand::On { portal }) => Err(told(self, portal, false)),
            (
                Err(LoginError::NeedsAuthorization {
                    file: Some(_), why, ..
                }),
                InBand::On { portal },
            ) => Err(told(self, portal, why == Unusable::NoGraph)),
            (other, _) => other,
        }
    }
}

/// What a mail client is told about an account (`user`, its folded name)
/// that needs authorisation, with the portal at `portal` (when it runs).
pub fn instructions(portal: Option<&url::Url>, user: &str, provider: &Provider) -> String {
    match (portal, provider.flow) {
        (Some(base), Flow::AuthorizationCode | Flow::DeviceCode) => {
            let mut link = base.clone();
            link.query_pairs_mut().append_pair("address", user);
            format!(
                "To authorise {user}, open {link} in a browser, sign in there and choose the local password for your mail program; then log in with that password"
            )
        }
        (None, Flow::AuthorizationCode | Flow::DeviceCode) => format!(
            "{user} is not authorised yet: the administrator must run `mailgate login {user}` on the gateway (or turn on its web portal, [portal], where you can do it yourself)"
        ),
        (_, Flow::ClientCredentials | Flow::ServiceAccount) => format!(
            "{user} is served with the organisation's own credentials: ask the administrator for its password"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(flow: Flow) -> std::sync::Arc<Provider> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("mailgate.toml");
        std::fs::write(
            &file,
            format!(
                "[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:0\"\n[provider.p]\npreset = \"office365\"\nclient_id = \"x\"\ntenant = \"contoso.com\"\nflow = \"{flow}\"\n[[account]]\nuser = \"a@x.test\"\nprovider = \"p\"\n"
            ),
        )
        .expect("write");
        let config = mailgate_config::load_with_env(&file, Vec::new()).expect("config");
        config.provider("p").expect("p").clone()
    }

    #[test]
    fn the_message_names_the_portal_or_the_administrator() {
        let base = url::Url::parse("https://mail-gw.example.com/").expect("url");
        let browser = provider(Flow::AuthorizationCode);
        assert_eq!(
            instructions(Some(&base), "a+b@x.test", &browser),
            "To authorise a+b@x.test, open https://mail-gw.example.com/?address=a%2Bb%40x.test in a browser, sign in there and choose the local password for your mail program; then log in with that password"
        );
        let device = provider(Flow::DeviceCode);
        assert!(instructions(Some(&base), "a@x.test", &device).contains("?address=a%40x.test"));
        assert!(
            instructions(None, "a@x.test", &device)
                .contains("the administrator must run `mailgate login a@x.test`")
        );
    }
}
