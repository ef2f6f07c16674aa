//! The command line's definition (clap): what `--help`, the man page and
//! the shell completions are made from.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// What `--version` prints after the name: the version and the git
/// revision it was built from (see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("MAILGATE_REVISION"),
    ")"
);

/// An OAuth 2.0 gateway for IMAP, POP3 and SMTP.
#[derive(Debug, Parser)]
#[command(name = "mailgate", version = VERSION, about)]
pub struct Cli {
    /// Configuration file (default: $MAILGATE_CONFIG, ./mailgate.toml,
    /// ~/.config/mailgate/mailgate.toml, /etc/mailgate/mailgate.toml).
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or directives such as
    /// `mailgate=debug,rustls=info` (overrides RUST_LOG).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve every listener until SIGTERM or SIGINT.
    Run,
    /// Validate the configuration and print what it resolved to.
    Check,
    /// Authorise an account interactively and store its tokens, sealed with
    /// a local password.
    Login {
        /// The account's login name.
        user: String,
        /// How to sign in (default: from the provider's `flow`).
        #[arg(long, value_enum)]
        flow: Option<LoginFlow>,
        /// Only print the URL; do not try to open a browser.
        #[arg(long)]
        no_browser: bool,
        /// How long to wait for the browser sign-in.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Manage stored tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the token store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Check the configuration, the network to every upstream, the token
    /// endpoint, an account's state and (with its local password, from
    /// `$MAILGATE_PASSWORD` or a prompt) a real login per protocol; each
    /// known failure comes with what to do.
    Doctor {
        /// The account to check (default: the configuration and every
        /// provider, without logins).
        user: Option<String>,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
        /// Check without logging in (no password asked).
        #[arg(long, conflicts_with = "app_only")]
        no_login: bool,
        /// For an app-only account: log in to the provider with the
        /// app-only token (no local password asked).
        #[arg(long)]
        app_only: bool,
    },
    /// Account events ([notify]).
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// List the accounts and the state of their tokens (needs no password):
    /// token state, expiry, last refresh, backoff, last error.
    Accounts {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete the stored tokens of one account.
    Forget {
        /// The account's login name.
        user: String,
    },
    /// Change an account's local password: the old one opens the tokens,
    /// the new one (asked twice) seals them; a running gateway uses it from
    /// the next login on. Reads `$MAILGATE_PASSWORD` and
    /// `$MAILGATE_NEW_PASSWORD` when set.
    Passwd {
        /// The account's login name.
        user: String,
    },
    /// Print an Argon2id PHC string for `password_hash`.
    HashPassword,
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell), e.g. `mailgate completions bash > /etc/bash_completion.d/mailgate`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g. `mailgate man > mailgate.1`.
    #[command(hide = true)]
    Man,
}

/// The ways `mailgate login` can sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoginFlow {
    /// Authorization code with PKCE; the browser redirects to a local listener.
    Browser,
    /// Device authorization: a URL and a code to enter on any device.
    Device,
    /// Authorization code; paste the final address from the browser.
    Paste,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Read a refresh token on stdin and store it sealed with a local password.
    Import {
        /// The account's login name.
        user: String,
        /// Store without checking the token with one refresh.
        #[arg(long)]
        no_verify: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send a test event for an account to every notifier of [notify]
    /// (the command and the webhook), and say what each did.
    Test {
        /// The account's login name.
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy every account's sealed tokens between the file store (under
    /// state_dir) and the Redis store of [store], without any password.
    /// Accounts the destination already has are left as they are.
    Migrate {
        /// Where to copy to: `redis` (from the files) or `file` (from Redis).
        #[arg(long, value_enum)]
        to: crate::accounts::store::migrate::Kind,
    },
}
