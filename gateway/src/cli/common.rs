//! What every command shares: its error and exit code, writing to
//! standard output without panicking, the configuration, the store and
//! the runtime.

use std::io::Write;
use std::path::Path;

use mailgate_config::Config;

use crate::accounts::store::Store;

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
pub(super) fn emit(bytes: &[u8]) -> CliResult {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(CliError::stdout)
}

/// `println!` that returns [`CliError`] instead of panicking when standard
/// output is gone.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::common::emit(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

pub(super) type CliResult = Result<(), CliError>;
pub(super) use out;

/// The configured token store (connected, for a shared one).
pub(super) fn open_store(
    runtime: &tokio::runtime::Runtime,
    cfg: &Config,
) -> Result<Store, CliError> {
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

pub(super) fn load(explicit: Option<&Path>) -> Result<Config, CliError> {
    let path = mailgate_config::locate(explicit).map_err(CliError::User)?;
    mailgate_config::load(&path).map_err(|e| CliError::User(e.to_string()))
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(format!("cannot start the runtime: {e}")))
}

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
