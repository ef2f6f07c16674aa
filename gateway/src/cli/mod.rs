//! The `mailgate` command line (SPEC §2). Exit codes: 0 success, 1 user
//! error, 2 internal error; every error is one line saying what to do.

use std::process::ExitCode;

use clap::Parser;
use mailgate_config::{Config, LogFormat};
use secrecy::ExposeSecret;

mod accounts;
mod args;
mod common;
mod doctor;
mod login;
mod man;
mod notify;
mod serve;

pub use args::{Cli, Command, LoginFlow, NotifyCommand, StoreCommand, TokenCommand};
pub use common::permission_warnings;
use common::{CliError, CliResult, emit, load, open_store, out};

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
fn migrate(cfg: &Config, to: crate::accounts::store::migrate::Kind) -> CliResult {
    let runtime = common::runtime()?;
    let done = runtime
        .block_on(crate::accounts::store::migrate::migrate(cfg, to))
        .map_err(|e| CliError::User(e.to_string()))?;
    for e in &done.unreadable {
        eprintln!("warning: not copied: {e}");
    }
    for user in &done.kept {
        eprintln!("warning: {user} is already in {}; left as it is", done.into);
    }
    out!(
        "copied {} account(s) from {} to {}; {} already there; {} unreadable",
        done.copied,
        done.from,
        done.into,
        done.kept.len(),
        done.unreadable.len()
    )
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
                    for w in crate::tasks::certificate_warnings(&cfg, std::time::SystemTime::now())
                    {
                        eprintln!("warning: {w}");
                    }
                    certificates(&cfg)?;
                    sentinels(&cfg)?;
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
            common::runtime()?.block_on(serve::serve(cfg))
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
            let runtime = common::runtime()?;
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
        Command::Doctor {
            user,
            json,
            no_login,
            app_only,
        } => doctor::doctor(path, user, json, no_login, app_only),
        Command::Notify(NotifyCommand::Test { user }) => {
            let cfg = load(path)?;
            crate::observe::logging::init(LogFormat::Text, log_filter("info")?);
            notify::test(&cfg, &user)
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

/// With `[store] sentinels`: the primary each sentinel names (a sentinel
/// that does not answer, or names another primary, is a warning: the
/// configuration is still valid).
fn sentinels(cfg: &Config) -> CliResult {
    let Some((service, answers)) =
        common::runtime()?.block_on(crate::accounts::store::ask_sentinels(cfg))
    else {
        return Ok(());
    };
    let named: std::collections::BTreeSet<&String> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .collect();
    for (sentinel, answer) in &answers {
        match answer {
            Ok(primary) => out!("sentinel {sentinel}: the primary of {service:?} is {primary}")?,
            Err(e) => eprintln!("warning: sentinel {sentinel}: {e}"),
        }
    }
    if named.is_empty() {
        eprintln!(
            "warning: no sentinel names a primary of {service:?}; the gateway cannot reach the store"
        );
    } else if named.len() > 1 {
        eprintln!("warning: the sentinels disagree on the primary (a failover under way?)");
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
