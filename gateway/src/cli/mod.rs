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

/// An OAuth 2.0 gateway for IMAP, POP3 and SMTP.
#[derive(Debug, Parser)]
#[command(name = "mailgate", version, about)]
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
    /// Print an Argon2id PHC string for `password_hash`.
    HashPassword,
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell), e.g. `mailgate completions bash > /etc/bash_completion.d/mailgate`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g. `mailgate man > mailgate.1`.
    #[command(hide = true)]
    Man,
}

/// Writes the man page (roff), generated from the CLI definition: clap's
/// page for `mailgate`, then a section per command with its arguments.
pub fn man_page(out: &mut Vec<u8>) -> std::io::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd.clone()).render(out)?;
    let esc = |s: &str| s.replace('\\', "\\\\").replace('-', "\\-");
    let section = |path: &str, c: &clap::Command, out: &mut Vec<u8>| -> std::io::Result<()> {
        writeln!(out, ".SH \"{}\"", esc(&path.to_uppercase()))?;
        if let Some(about) = c.get_long_about().or(c.get_about()) {
            writeln!(out, "{}", esc(&about.to_string()))?;
        }
        for a in c
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set())
        {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let name = match (a.get_short(), a.get_long()) {
                (Some(s), Some(l)) => format!("\\fB\\-{s}\\fR, \\fB\\-\\-{}\\fR", esc(l)),
                (None, Some(l)) => format!("\\fB\\-\\-{}\\fR", esc(l)),
                (Some(s), None) => format!("\\fB\\-{s}\\fR"),
                (None, None) => format!("\\fI{}\\fR", esc(&id.to_uppercase())),
            };
            writeln!(out, ".TP\n{name}")?;
            if let Some(h) = a.get_long_help().or(a.get_help()) {
                writeln!(out, "{}", esc(&h.to_string()))?;
            }
            let values: Vec<String> = a
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| esc(v.get_name()))
                .collect();
            if !values.is_empty() {
                writeln!(out, "One of: {}.", values.join(", "))?;
            }
        }
        Ok(())
    };
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let path = format!("mailgate {}", sub.get_name());
        if sub.has_subcommands() {
            for inner in sub.get_subcommands().filter(|s| s.get_name() != "help") {
                section(&format!("{path} {}", inner.get_name()), inner, out)?;
            }
        } else {
            section(&path, sub, out)?;
        }
    }
    Ok(())
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
                    for w in permission_warnings(&cfg) {
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
            runtime()?.block_on(serve(cfg))
        }
        Command::Login {
            user,
            flow,
            no_browser,
            timeout,
        } => {
            let cfg = load(path)?;
            crate::observe::logging::init(LogFormat::Text, log_filter("warn")?);
            login(&cfg, &user, flow, no_browser, timeout)
        }
        Command::Token(TokenCommand::Import { user, no_verify }) => {
            let cfg = load(path)?;
            crate::observe::logging::init(LogFormat::Text, log_filter("warn")?);
            token_import(&cfg, &user, no_verify)
        }
        Command::Accounts { json } => accounts(&load(path)?, json),
        Command::Forget { user } => {
            let cfg = load(path)?;
            let user = user.trim().to_lowercase();
            let store = Store::new(&cfg.gateway.state_dir);
            match store.remove(&user) {
                Ok(true) => {
                    out!("deleted the stored tokens of {user}")
                }
                Ok(false) => {
                    out!("no tokens were stored for {user}")
                }
                Err(e) => Err(CliError::User(e.to_string())),
            }
        }
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
            let pw = read_password("New local password", true)?;
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
        let source = crate::session::tls::CertSource::for_listener(l, &cfg.gateway)
            .map_err(|e| CliError::User(format!("TLS certificate for {what}: {e}")))?;
        let tls = crate::session::tls::ListenerTls::load(source)
            .map_err(|e| CliError::User(format!("TLS certificate for {what}: {e}")))?;
        out!(
            "tls {what}: {}{} sha256 {}",
            tls.source.cert.display(),
            if tls.source.generated {
                " (self-signed)"
            } else {
                ""
            },
            tls.fingerprint()
        )?;
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(format!("cannot start the runtime: {e}")))
}

/// Raises the soft descriptor limit to the hard one (often 1,024 against
/// 500,000+): each relayed session holds two descriptors. Warns when the
/// limit still cannot hold `max_connections` sessions.
fn raise_fd_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let sessions = limit.saturating_sub(64) / 2;
            if sessions < max_connections as u64 {
                tracing::warn!(
                    limit,
                    max_connections,
                    "the descriptor limit holds only about {sessions} sessions (two descriptors each); raise it (LimitNOFILE= in the unit, ulimit -n) or lower max_connections"
                );
            } else {
                tracing::debug!(limit, "descriptor limit");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the descriptor limit"),
    }
}

async fn serve(cfg: Config) -> CliResult {
    use tokio::signal::unix::{SignalKind, signal};
    raise_fd_limit(cfg.gateway.max_connections);
    for w in permission_warnings(&cfg) {
        tracing::warn!("{w}");
    }
    let gateway = crate::server::start(Arc::new(cfg))
        .await
        .map_err(|e| CliError::User(format!("{e:#}")))?;
    let sig = |k| {
        signal(k).map_err(|e| CliError::Internal(format!("cannot install a signal handler: {e}")))
    };
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut hup = sig(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration and certificates");
                if let Err(errs) = gateway.reload() {
                    for e in &errs.0 {
                        tracing::error!(error = %e, "configuration not reloaded");
                    }
                }
            }
        }
    }
    tracing::info!("shutting down: no new connections; open sessions may finish");
    gateway.shutdown().await;
    Ok(())
}

/// The local password: `$MAILGATE_PASSWORD`, or a prompt (twice when
/// `confirm`).
fn read_password(prompt: &str, confirm: bool) -> Result<SecretString, CliError> {
    if let Ok(p) = std::env::var("MAILGATE_PASSWORD") {
        if p.is_empty() {
            return Err(CliError::User(
                "MAILGATE_PASSWORD is empty; set a non-empty password".into(),
            ));
        }
        return Ok(SecretString::from(p));
    }
    if !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal() {
        return Err(CliError::User(
            "no terminal to ask for the local password; set MAILGATE_PASSWORD".into(),
        ));
    }
    let ask = |p: &str| {
        rpassword::prompt_password(format!("{p}: "))
            .map(SecretString::from)
            .map_err(|e| {
                CliError::User(format!(
                    "cannot read the password ({e}); set MAILGATE_PASSWORD instead"
                ))
            })
    };
    let first = ask(prompt)?;
    if first.expose_secret().is_empty() {
        return Err(CliError::User("the password must not be empty".into()));
    }
    if confirm {
        let second = ask("Repeat it")?;
        if first.expose_secret() != second.expose_secret() {
            return Err(CliError::User("the two passwords differ; try again".into()));
        }
    }
    Ok(first)
}

/// The account and provider of `user`, or a user error.
fn account_provider(cfg: &Config, user: &str) -> Result<Arc<mailgate_config::Provider>, CliError> {
    let account = cfg.find_account(user).ok_or_else(|| {
        CliError::User(format!(
            "{user} matches no [[account]] in {}; add it first",
            cfg.file.display()
        ))
    })?;
    cfg.provider(&account.provider)
        .cloned()
        .ok_or_else(|| CliError::Internal("account without provider".into()))
}

fn login(
    cfg: &Config,
    user: &str,
    flow: Option<LoginFlow>,
    no_browser: bool,
    timeout: std::time::Duration,
) -> CliResult {
    use mailgate_config::Flow;
    let user = user.trim().to_lowercase();
    let provider = account_provider(cfg, &user)?;
    let flow = match (flow, provider.flow) {
        (_, Flow::ClientCredentials) => {
            return Err(CliError::User(format!(
                "provider {} uses client_credentials: its accounts need no login; their local password is the account's password_hash",
                provider.name
            )));
        }
        (Some(f), _) => f,
        (None, Flow::DeviceCode) => LoginFlow::Device,
        (None, Flow::AuthorizationCode) => LoginFlow::Browser,
    };
    if flow == LoginFlow::Device && provider.device_code_url.is_none() {
        return Err(CliError::User(format!(
            "provider {} has no device_code_url (Google does not allow the device flow for mail); use --flow browser or --flow paste",
            provider.name
        )));
    }
    let password = read_password(&format!("Local password for {user}"), true)?;
    let oauth =
        OAuth::new(cfg.gateway.upstream_timeout).map_err(|e| CliError::Internal(e.to_string()))?;
    let failed = |e: crate::accounts::flows::FlowError| {
        let e = e.to_string();
        if e.contains("nothing was stored") {
            CliError::User(e)
        } else {
            CliError::User(format!("{e}; nothing was stored"))
        }
    };
    // The sign-in instructions must reach the user: a closed standard output
    // ends the login (nothing is stored) instead of panicking.
    let say = |text: String| {
        out!("{text}").map_err(|_| {
            crate::accounts::flows::FlowError::Input(
                "cannot write the sign-in instructions to standard output".into(),
            )
        })
    };
    let rt = runtime()?;
    let (grant, nonce) = rt.block_on(async {
        match flow {
            LoginFlow::Browser => {
                let server = crate::accounts::redirect::RedirectServer::bind(&provider.redirect_uri).await?;
                let sign_in = crate::accounts::flows::browser_request(&oauth, &provider, &server, &user)?;
                let url = sign_in.request.url.clone();
                let nonce = sign_in.request.nonce.clone();
                say(format!("Open this URL in a browser and sign in as {user}:\n\n{url}\n"))?;
                let _page = if no_browser {
                    None
                } else {
                    let state_dir = std::path::absolute(&cfg.gateway.state_dir)
                        .unwrap_or_else(|_| cfg.gateway.state_dir.clone());
                    match crate::accounts::flows::open_browser(&url, &state_dir) {
                        Ok(page) => Some(page),
                        Err(_) => {
                            eprintln!("(no browser could be opened; open the URL yourself)");
                            None
                        }
                    }
                };
                eprintln!(
                    "Waiting for the sign-in at {} (up to {})...",
                    server.redirect_uri,
                    humantime::format_duration(timeout)
                );
                let grant =
                    crate::accounts::flows::browser_finish(&oauth, &provider, &server, sign_in, timeout).await?;
                Ok((grant, Some(nonce)))
            }
            LoginFlow::Device => {
                let d = oauth.start_device(&provider).await?;
                say(crate::accounts::flows::device_instructions(&d))?;
                eprintln!("Waiting for the sign-in...");
                Ok((oauth.poll_device(&provider, &d).await?, None))
            }
            LoginFlow::Paste => {
                let req = oauth.authorization_request(&provider, &provider.redirect_uri, &user)?;
                say(format!(
                    "Open this URL in a browser and sign in as {user}:\n\n{}\n\nThe browser then ends on an address starting with {} (the page may not load).\nCopy that whole address from the address bar and paste it here:",
                    req.url, provider.redirect_uri
                ))?;
                let line = tokio::task::spawn_blocking(|| {
                    let mut l = String::new();
                    std::io::stdin().read_line(&mut l).map(|_| l)
                })
                .await
                .map_err(|e| crate::accounts::flows::FlowError::Input(e.to_string()))?
                .map_err(|e| crate::accounts::flows::FlowError::Input(format!("cannot read the address: {e}")))?;
                let grant = crate::accounts::flows::paste_finish(&oauth, &provider, &req, &line).await?;
                Ok((grant, Some(req.nonce.clone())))
            }
        }
    })
    .map_err(failed)?;
    let identity = confirm_identity(&rt, cfg, &provider, &user, &grant, nonce.as_ref())
        .map_err(|e| failed(e.into()))?;
    crate::accounts::flows::store_grant(
        &Store::new(&cfg.gateway.state_dir),
        &user,
        &provider.name,
        &grant,
        &password,
        crate::accounts::store::Expect::Any,
    )
    .map_err(failed)?;
    out!(
        "stored the tokens of {user} (provider {}, signed in as {identity})",
        provider.name
    )
}

/// Checks that `grant` is `user`'s account (its ID token, else one
/// upstream login as its upstream user); the identity that signed in.
fn confirm_identity(
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    provider: &Arc<mailgate_config::Provider>,
    user: &str,
    grant: &crate::accounts::oauth::Grant,
    nonce: Option<&SecretString>,
) -> Result<String, crate::accounts::identity::IdentityError> {
    let upstream_user = cfg
        .find_account(user)
        .and_then(|a| a.upstream_user.clone())
        .unwrap_or_else(|| user.to_owned());
    rt.block_on(crate::accounts::identity::confirm(
        provider,
        grant,
        crate::accounts::identity::Expected {
            user,
            upstream_user: &upstream_user,
            nonce,
        },
        &crate::accounts::identity::Prover {
            timeout: cfg.gateway.upstream_timeout,
            hostname: cfg.gateway.hostname.clone(),
            prove: crate::server::prove,
        },
    ))
}

fn token_import(cfg: &Config, user: &str, no_verify: bool) -> CliResult {
    let user = user.trim().to_lowercase();
    let provider = account_provider(cfg, &user)?;
    if std::io::stdin().is_terminal() {
        eprintln!("Paste the refresh token and press Enter:");
    }
    let mut input = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| CliError::User(format!("cannot read the refresh token from stdin: {e}")))?;
    let rt = input.trim();
    if rt.is_empty() || rt.contains(char::is_whitespace) {
        return Err(CliError::User(
            "stdin must hold exactly one refresh token (no spaces); e.g. `mailgate token import USER < token.txt`".into(),
        ));
    }
    let rt = SecretString::from(rt.to_owned());
    let grant = if no_verify {
        None
    } else {
        let oauth = OAuth::new(cfg.gateway.upstream_timeout)
            .map_err(|e| CliError::Internal(e.to_string()))?;
        let runtime = runtime()?;
        let grant = runtime
            .block_on(oauth.refresh(&provider, &rt))
            .map_err(|e| {
                CliError::User(format!("the token does not work: {e}; nothing was stored"))
            })?;
        confirm_identity(&runtime, cfg, &provider, &user, &grant, None)
            .map_err(|e| CliError::User(e.to_string()))?;
        Some(grant)
    };
    // A provider that rotated the token on the refresh gave a new one.
    let newest = grant
        .as_ref()
        .and_then(|g| g.refresh_token.clone())
        .unwrap_or(rt);
    let password = read_password(&format!("Local password for {user}"), true)?;
    crate::accounts::flows::store_tokens(
        &Store::new(&cfg.gateway.state_dir),
        &user,
        &provider.name,
        &newest,
        grant.as_ref(),
        &password,
        crate::accounts::store::Expect::Any,
    )
    .map_err(|e| CliError::User(e.to_string()))?;
    out!(
        "stored the tokens of {user} (provider {}){}",
        provider.name,
        if no_verify {
            ", not verified"
        } else {
            ", verified with one refresh and its identity checked"
        }
    )
}

fn time(t: Option<u64>) -> String {
    match t {
        Some(s) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
        )
        .to_string(),
        None => "-".into(),
    }
}

/// "3 (next +0.5s)" for a throttled name, "-" otherwise. Entries older than
/// the backoff's memory (15 min) are over.
fn throttle(t: Option<&crate::accounts::backoff::Throttle>) -> String {
    match t {
        Some(t) if now().saturating_sub(t.last_failure) < 15 * 60 => {
            if t.delay_ms > 0 {
                format!("{} (next +{}s)", t.failures, t.delay_ms as f64 / 1000.0)
            } else {
                t.failures.to_string()
            }
        }
        _ => "-".into(),
    }
}

/// One row of `mailgate accounts`.
#[derive(Debug, serde::Serialize)]
struct AccountRow {
    user: String,
    provider: String,
    flow: String,
    /// `valid` (a live access token), `refresh_due` (refreshed at the next
    /// login), `needs_login` (the refresh token is dead: `mailgate login`),
    /// `none` (nothing stored).
    token: &'static str,
    /// Unix seconds.
    expires_at: Option<u64>,
    sealed_at: Option<u64>,
    last_refresh: Option<u64>,
    last_error: Option<String>,
    /// Failed logins of this name in the last 15 minutes, and the delay the
    /// next attempt waits (from the running gateway's `backoff.json`).
    backoff: Option<crate::accounts::backoff::Throttle>,
    in_configuration: bool,
}

impl AccountRow {
    fn new(
        cfg: &Config,
        user: String,
        provider: &str,
        f: Option<&TokenFile>,
        backoff: &crate::accounts::backoff::Snapshot,
    ) -> AccountRow {
        let throttle = backoff
            .users
            .get(&user)
            .filter(|t| now().saturating_sub(t.last_failure) < 15 * 60)
            .cloned();
        AccountRow {
            in_configuration: cfg.find_account(&user).is_some() || user.starts_with("*@"),
            user,
            provider: provider.to_owned(),
            flow: cfg
                .provider(provider)
                .map(|p| p.flow.to_string())
                .unwrap_or_else(|| "-".into()),
            token: match f {
                None => "none",
                Some(f) if f.needs_authorization => "needs_login",
                Some(f) if f.expires_at.is_some_and(|e| e > now()) => "valid",
                Some(_) => "refresh_due",
            },
            expires_at: f.and_then(|f| f.expires_at),
            sealed_at: f.map(|f| f.sealed_at),
            last_refresh: f.and_then(|f| f.last_refresh),
            last_error: f.and_then(|f| f.last_error.clone()),
            backoff: throttle,
        }
    }

    fn cells(&self) -> [String; 8] {
        [
            self.user.clone(),
            self.provider.clone(),
            self.flow.clone(),
            self.token.to_owned(),
            time(self.expires_at),
            time(self.last_refresh),
            throttle(self.backoff.as_ref()),
            match (&self.last_error, self.in_configuration) {
                (_, false) => "not in the configuration".into(),
                (Some(e), true) => e.clone(),
                (None, true) => "-".into(),
            },
        ]
    }
}

fn accounts(cfg: &Config, json: bool) -> CliResult {
    let store = Store::new(&cfg.gateway.state_dir);
    let (files, errors) = store.list();
    let backoff =
        crate::accounts::backoff::read_snapshot(&cfg.gateway.state_dir).unwrap_or_default();
    let mut rows = Vec::new();
    for a in &cfg.accounts {
        match &a.user {
            UserPattern::Exact(u) => {
                let f = files.iter().find(|f| &f.user == u);
                rows.push(AccountRow::new(cfg, u.clone(), &a.provider, f, &backoff));
            }
            UserPattern::Domain(_) => {
                rows.push(AccountRow::new(
                    cfg,
                    a.user.to_string(),
                    &a.provider,
                    None,
                    &backoff,
                ));
                for f in files.iter().filter(|f| {
                    a.user.matches(&f.user)
                        && cfg.find_account(&f.user).is_some_and(|b| b.user == a.user)
                }) {
                    rows.push(AccountRow::new(
                        cfg,
                        f.user.clone(),
                        &a.provider,
                        Some(f),
                        &backoff,
                    ));
                }
            }
        }
    }
    for f in files.iter().filter(|f| cfg.find_account(&f.user).is_none()) {
        rows.push(AccountRow::new(
            cfg,
            f.user.clone(),
            &f.provider,
            Some(f),
            &backoff,
        ));
    }
    let slowed: Vec<(&String, &crate::accounts::backoff::Throttle)> = backoff
        .addresses
        .iter()
        .filter(|(_, t)| throttle(Some(t)) != "-")
        .collect();
    for e in &errors {
        eprintln!("warning: {e}");
    }
    if json {
        let out = serde_json::json!({
            "accounts": rows,
            "slowed_addresses": slowed.iter().map(|(a, t)| serde_json::json!({"address": a, "backoff": t})).collect::<Vec<_>>(),
        });
        return out!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| CliError::Internal(e.to_string()))?
        );
    }
    let header = [
        "USER",
        "PROVIDER",
        "FLOW",
        "TOKEN",
        "EXPIRES",
        "LAST REFRESH",
        "BACKOFF",
        "LAST ERROR",
    ];
    let cells: Vec<[String; 8]> = rows.iter().map(AccountRow::cells).collect();
    let mut widths = header.map(str::len);
    for r in &cells {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out!("{}", s.trim_end())
    };
    line(&header)?;
    for r in &cells {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    if !slowed.is_empty() {
        let list: Vec<String> = slowed
            .iter()
            .map(|(a, t)| format!("{a}: {}", throttle(Some(t))))
            .collect();
        out!("\nclient addresses with failed logins: {}", list.join(", "))?;
    }
    Ok(())
}
