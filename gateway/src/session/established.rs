//! What a login established, for the step after it.

use crate::session::upstream::LoggedIn;

/// What a login established: an upstream session to relay to, or (SMTP
/// for an account that sends through Microsoft Graph) the account and its
/// Graph token, with no upstream connection.
#[derive(Debug)]
pub enum Established {
    Upstream(LoggedIn),
    Graph(crate::accounts::Authorized),
}
