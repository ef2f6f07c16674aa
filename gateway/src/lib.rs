//! mailgate: an OAuth 2.0 gateway for IMAP, POP3 and SMTP.
//!
//! Mail clients log in locally with a plain password; mailgate maps the user
//! to an account, keeps its OAuth tokens sealed and fresh, logs in upstream
//! with XOAUTH2 over verified TLS and then relays the session untouched.
//!
//! The modules by concern, each using only those listed after it:
//!
//! - [`cli`]: the commands (`run`, `login`, `token import`, ...);
//! - [`server`]: the listeners; the one place that turns a protocol into
//!   its [`session::Dialect`];
//! - [`tasks`]: the background tasks of a running gateway;
//! - [`protocols`]: IMAP, SMTP and POP3, each a dialect: its client-side
//!   pre-auth machine and its upstream login machine (from
//!   `mailgate-proto`), and the upstream proof login of the identity check;
//! - [`portal`]: the web portal (sign-in, accounts, passwords);
//! - [`session`]: the one session of every dialect (pre-auth driver, login
//!   policy, the step after the login: relay), its end reasons, and the
//!   upstream login driver;
//! - [`graph`]: Microsoft Graph's `sendMail` (issue 25, in progress): its
//!   client and what each of its answers tells an SMTP client;
//! - [`context`]: the application's root state (configuration in force,
//!   metrics, accounts, the portal's address, upstream TLS settings),
//!   shared by the sessions and the portal;
//! - [`net`]: sockets, the one upgradeable stream of both legs and its
//!   on-demand buffer, per-address connection counts, listeners'
//!   certificates, the PROXY header, and outbound proxy tunnels;
//! - [`accounts`]: accounts, the sealed store, backoff, bounded password
//!   checks, OAuth, sign-in flows, in-band authorisation, the identity
//!   check (which is handed its upstream proof login, never a protocol);
//! - [`observe`]: metrics and logs.

pub mod accounts;
pub mod cli;
pub mod context;
pub mod doctor;
pub mod graph;
pub mod net;
pub mod notify;
pub mod observe;
pub mod portal;
pub mod protocols;
pub mod server;
pub mod session;
pub mod tasks;

pub use server::{Gateway, start};
