//! Why a login could not be completed, as the account layer says it (the
//! session's login policy turns these into what a client is told).

use std::time::Duration;

use crate::accounts::store::TokenFile;

/// Why a login could not be completed: what failed. What the user is told
/// to do about it is written where the failure reaches them (the session's
/// login policy, for a mail client).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    /// Unknown user or wrong local password: the protocol's plain
    /// authentication failure (the two are not told apart).
    #[error("invalid credentials")]
    BadCredentials,
    /// The account has no token file at all: nothing can check the
    /// password. In-band authorisation may start a flow; otherwise the
    /// client is told what a wrong password is told.
    #[error("no token is stored for the account")]
    NoToken,
    /// The account has no usable token. `file` is the file that the
    /// password opened (a dead refresh token), which an in-band flow may
    /// replace.
    #[error("{why}")]
    NeedsAuthorization {
        why: Unusable,
        file: Option<Box<TokenFile>>,
    },
    /// The account needs an authorisation and the listener's in-band
    /// policy says where to get it ([`super::inband`]): the text for the
    /// client.
    #[error("{0}")]
    AuthorizeAt(String),
    /// The provider, its token endpoint or the gateway cannot serve the
    /// login now.
    #[error("{0}")]
    Unavailable(Unavailable),
    /// Refused without a check: too many wrong passwords for this account
    /// or from this address, for this long still.
    #[error("too many failed logins; try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// A shared-mailbox login (`DELEGATE\\SHARED`) refused: malformed, a
    /// mailbox the delegate may not open, one that is an account itself,
    /// a delegate without tokens. The text for the client.
    #[error("{0}")]
    Shared(String),
}

/// Why an account's stored token cannot serve a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// The authorisation does not allow sending through Microsoft Graph
    /// (signed in before the Graph scope was asked for, or consent
    /// withdrawn): authorise again.
    #[error("the authorisation does not allow sending through Microsoft Graph")]
    NoGraph,
    #[error("the stored token is damaged")]
    Damaged,
    #[error("the stored token cannot be opened")]
    Unopenable,
    /// The provider answered `invalid_grant` just now.
    #[error("the authorisation has expired or was revoked")]
    Expired,
    /// The account is marked as needing a new sign-in, or holds no refresh
    /// token.
    #[error("the account must be authorised again")]
    Marked,
}

/// What cannot serve a login now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("provider {0} is not configured")]
    NoProvider(String),
    #[error("the gateway cannot read its token store")]
    Store,
    #[error("too many login attempts at once for this account or from this address")]
    TooManyAtOnce,
    #[error("the gateway's password checks are all busy")]
    Busy,
    #[error("the token endpoint of {0} cannot be used now")]
    TokenEndpoint(String),
    #[error("the provider rejected the gateway's client credentials")]
    ClientRejected,
    #[error("the token endpoint of {0} refused or failed the app-only token request")]
    AppToken(String),
    #[error("the service account of {0} has no domain-wide delegation for this mailbox")]
    NotDelegated(String),
    /// The outbound proxy refused or failed a token request (its words
    /// are in the log, not here: they name the proxy and its user).
    #[error("the gateway's outbound proxy refused or failed the request to the token endpoint")]
    Proxy,
}
