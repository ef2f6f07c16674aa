//! The `mailgate` command line (SPEC §2). Exit codes: 0 success, 1 user
//! error, 2 internal error; every error is one line saying what to do.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use mailgate_config::{Config, LogFormat, UserPattern};
use secrecy::{ExposeSecret, SecretString};

use crate::accounts::oauth::OAuth;
use crate::accounts::store::{Store, TokenFile, now};

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
pub enum StoreCommand {
    /// Copy every account's sealed tokens between the file store (under
    /// state_dir) and the Redis store of [store], without any password.
    /// Accounts the destination already has are left as they are.
    Migrate {
        /// Where to copy to: `redis` (from the files) or `file` (from Redis).
        #[arg(long, value_enum)]
        to: StoreKind,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    File,
    Redis,
}

/// A failed command: exit 1 for the user's errors, 2 for internal ones.
#[derive(Debug)]
pub enum CliError {
    User(String),
    Internal(String),
    /// Standard output was closed by its reader (`mailgate accounts | head -1`):
    /// the command stops quietly with exit 0 (as ripgrep does), so a
    /// `pipefail` script does not fail on it.
    OutputClosed,
}

impl CliError {
    fn stdout(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::OutputClosed
        } else {
            CliError::User(format!("cannot write to standard output: {e}"))
        }
    }
}

/// Writes bytes to standard output; a closed pipe is [`CliError::OutputClosed`],
/// never a panic (unlike `println!`).
fn emit(bytes: &[u8]) -> CliResult {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(CliError::stdout)
}

/// `println!` that returns [`CliError`] instead of panicking when standard
/// output is gone.
macro_rules! out {
    ($($arg:tt)*) => {
        emit(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

type CliResult = Result<(), CliError>;

mod accounts;
mod login;
mod man;
mod serve;

pub use man::man_page;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) | Err(CliError::OutputClosed) => ExitCode::SUCCESS,
        Err(CliError::User(m)) => {
            eprintln!("mailgate: {m}");
            ExitCode::from(1)
        }
        Err(CliError::Internal(m)) => {
            eprintln!("mailgate: internal error: {m}");
            ExitCode::from(2)
        }
    }
}

/// `mailgate store migrate --to KIND`.
fn migrate(cfg: &Config, to: StoreKind) -> CliResult {
    if matches!(cfg.store, mailgate_config::Store::File) {
        return Err(CliError::User(
            "[store] is not backend = \"redis\": set its url first; migrate copies between the files and that Redis".into(),
        ));
    }
    let runtime = serve::runtime()?;
    let redis = open_store(&runtime, cfg)?;
    let files = crate::accounts::store::files(&cfg.gateway.state_dir);
    let (from, into, names) = match to {
        StoreKind::Redis => (&files, &redis, ("the files", "Redis")),
        StoreKind::File => (&redis, &files, ("Redis", "the files")),
    };
    let (accounts, errors) = runtime.block_on(from.list());
    for e in &errors {
        eprintln!("warning: not copied: {e}");
    }
    let (mut copied, mut kept) = (0, 0);
    for f in &accounts {
        match runtime.block_on(into.save(f, crate::accounts::store::Expect::Absent)) {
            Ok(_) => copied += 1,
            Err(crate::accounts::store::StoreError::Changed { .. }) => {
                eprintln!(
                    "warning: {} is already in {}; left as it is",
                    f.user, names.1
                );
                kept += 1;
            }
            Err(e) => return Err(CliError::User(format!("copying {}: {e}", f.user))),
        }
    }
    out!(
        "copied {copied} account(s) from {} to {}; {kept} already there; {} unreadable",
        names.0,
        names.1,
        errors.len()
    )
}

/// The configured token store (connected, for Redis).
fn open_store(runtime: &tokio::runtime::Runtime, cfg: &Config) -> Result<Store, CliError> {
    let warnings = crate::accounts::store::secure_dirs(&cfg.gateway.state_dir)
        .map_err(|e| CliError::User(e.to_string()))?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    runtime
        .block_on(crate::accounts::store::open(cfg))
        .map(|(store, _fleet)| store)
        .map_err(|e| CliError::User(e.to_string()))
}

fn load(explicit: Option<&Path>) -> Result<Config, CliError> {
    let path = mailgate_config::locate(explicit).map_err(CliError::User)?;
    mailgate_config::load(&path).map_err(|e| CliError::User(e.to_string()))
}

fn run(cli: Cli) -> CliResult {
    let path = cli.config.as_deref();
    let level = cli.log_level.clone();
    // A bad --log-level is reported before anything else is read.
    crate::observe::logging::filter(level.as_deref(), "info").map_err(CliError::User)?;
    let log_filter = |default: &str| {
        crate::observe::logging::filter(level.as_deref(), default).map_err(CliError::User)
    };
    match cli.command {
        Command::Check => {
            let path = mailgate_config::locate(path).map_err(CliError::User)?;
            match mailgate_config::load(&path) {
                Ok(cfg) => {
                    emit(cfg.describe().as_bytes())?;
                    for w in permission_warnings(&cfg).into_iter().chain(cfg.warnings()) {
                        eprintln!("warning: {w}");
                    }
                    for w in crate::server::certificate_warnings(&cfg, std::time::SystemTime::now())
                    {
                        eprintln!("warning: {w}");
                    }
                    certificates(&cfg)?;
                    out!("configuration is valid")
                }
                Err(errs) => {
                    for e in &errs.0 {
                        eprintln!("{e}");
                    }
                    Err(CliError::User(format!(
                        "{} error(s) in the configuration; fix them and run `mailgate check` again",
                        errs.0.len()
                    )))
                }
            }
        }
        Command::Run => {
            let cfg = load(path)?;
            crate::observe::logging::init(cfg.gateway.log_format, log_filter("info")?);
            serve::runtime()?.block_on(serve::serve(cfg))
        }
        Command::Login {
            user,
            flow,
            no_browser,
            timeout,
        } => {
            let cfg = load(path)?;
            crate::observe::logging::init(LogFormat::Text, log_filter("warn")?);
            login::sign_in(&cfg, &user, flow, no_browser, timeout)
        }
        Command::Token(TokenCommand::Import { user, no_verify }) => {
            let cfg = load(path)?;
            crate::observe::logging::init(LogFormat::Text, log_filter("warn")?);
            login::token_import(&cfg, &user, no_verify)
        }
        Command::Accounts { json } => accounts::accounts(&load(path)?, json),
        Command::Forget { user } => {
            let cfg = load(path)?;
            let user = user.trim().to_lowercase();
            let runtime = serve::runtime()?;
            let store = open_store(&runtime, &cfg)?;
            match runtime.block_on(crate::accounts::changes::Changes::new(store).forget(&user)) {
                Ok(true) => {
                    out!("deleted the stored tokens of {user}")
                }
                Ok(false) => {
                    out!("no tokens were stored for {user}")
                }
                Err(e) => Err(CliError::User(e.to_string())),
            }
        }
        Command::Passwd { user } => login::passwd(&load(path)?, &user),
        Command::Store(StoreCommand::Migrate { to }) => migrate(&load(path)?, to),
        Command::Completions { shell } => {
            // Generated into memory first: clap_complete panics on a write error.
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "mailgate", &mut script);
            emit(&script)
        }
        Command::Man => {
            let mut out = Vec::new();
            man_page(&mut out).map_err(|e| CliError::Internal(e.to_string()))?;
            emit(&out)
        }
        Command::HashPassword => {
            let pw = login::read_password("New local password", true)?;
            let salt = argon2::password_hash::SaltString::generate(&mut rand_core::OsRng);
            use argon2::PasswordHasher;
            let hash = argon2::Argon2::default()
                .hash_password(pw.expose_secret().as_bytes(), &salt)
                .map_err(|e| CliError::Internal(e.to_string()))?;
            out!("{hash}")
        }
    }
}

/// Prints each TLS listener's certificate and SHA-256 fingerprint
/// (generating the self-signed one on first use).
/// Secret files that every user of the machine can read.
pub fn permission_warnings(cfg: &Config) -> Vec<String> {
    cfg.readable_secret_files()
        .into_iter()
        .map(|(key, path, mode)| {
            format!(
                "{} ({key}) is readable by every user of this machine (mode {mode:04o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            )
        })
        .collect()
}

fn certificates(cfg: &Config) -> CliResult {
    for l in cfg
        .listeners
        .iter()
        .filter(|l| l.tls != mailgate_config::TlsMode::None)
    {
        let what = format!("{} {}", l.protocol, l.address);
        let source = crate::net::tls::CertSource::for_listener(l, &cfg.gateway)
            .map_err(|e| CliError::User(format!("TLS certificate for {what}: {e}")))?;
        let tls = crate::net::tls::ListenerTls::load(source)
            .map_err(|e| CliError::User(format!("TLS certificate for {what}: {e}")))?;
        print_certificate(&what, &tls)?;
    }
    if let Some(p) = cfg.portal.as_ref().filter(|p| p.tls) {
        let what = format!("portal {}", p.address);
        let source =
            crate::net::tls::CertSource::new(p.certificate.as_ref(), p.key.as_ref(), &cfg.gateway)
                .map_err(|e| CliError::User(format!("TLS certificate for the {what}: {e}")))?;
        let tls = crate::net::tls::ListenerTls::load(source)
            .map_err(|e| CliError::User(format!("TLS certificate for the {what}: {e}")))?;
        print_certificate(&what, &tls)?;
    }
    Ok(())
}

fn print_certificate(what: &str, tls: &crate::net::tls::ListenerTls) -> CliResult {
    out!(
        "tls {what}: {}{} sha256 {}",
        tls.source.cert.display(),
        if tls.source.generated {
            " (self-signed)"
        } else {
            ""
        },
        tls.fingerprint()
    )
}
