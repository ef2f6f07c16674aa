//! Sending through Microsoft Graph: how a provider's SMTP sessions send,
//! and Graph's settings.

use std::fmt;

/// How a provider's SMTP sessions send (`smtp = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    /// Relayed to the `smtp` server after an XOAUTH2 login.
    Smtp,
    /// `smtp = "graph"`: received by the gateway and sent with Graph's
    /// `sendMail`.
    Graph,
    /// `smtp = "auto"`: relayed to the `smtp` server, and sent through
    /// Graph for an account whose tenant refuses SMTP AUTH.
    Auto,
}

impl fmt::Display for Sending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sending::Smtp => "smtp",
            Sending::Graph => "graph",
            Sending::Auto => "auto",
        })
    }
}

/// Microsoft Graph as a provider sends through it.
#[derive(Debug, Clone)]
pub struct GraphApi {
    /// `graph_url` (default `https://graph.microsoft.com/v1.0`).
    pub url: url::Url,
    /// `save_to_sent_items` (default true).
    pub save_to_sent_items: bool,
    /// `max_message_size` (default 35 MB, Exchange Online's default).
    pub max_message_size: usize,
    /// The scopes of a Graph token: `Mail.Send` (delegated) or `.default`
    /// (app-only). A token is for one resource, so a Graph token is asked
    /// for apart from the mail token.
    pub scopes: Vec<String>,
}

/// Graph's public endpoint.
pub const GRAPH_URL: &str = "https://graph.microsoft.com/v1.0";
/// The delegated scope that sends as the signed-in mailbox.
pub const GRAPH_MAIL_SEND: &str = "https://graph.microsoft.com/Mail.Send";

/// Graph's delegated permission to send as or on behalf of another
/// mailbox (a shared mailbox), asked for when an account has `shared`.
pub const GRAPH_MAIL_SEND_SHARED: &str = "https://graph.microsoft.com/Mail.Send.Shared";
