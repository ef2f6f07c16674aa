//! `[notify]`: where account events go (SPEC §3, §5).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

/// `[notify]`.
#[derive(Debug, Clone)]
pub struct Notify {
    /// `command`: a program (absolute path) and its arguments, run once per
    /// event with the event in `MAILGATE_*` environment variables.
    pub command: Option<Vec<PathBuf>>,
    /// `command_timeout` (default 30 s): the command is killed after it.
    pub command_timeout: Duration,
    /// `webhook` or the contents of `webhook_file`: a JSON `POST` per event.
    /// A secret (its path or query often carries a token).
    pub webhook: Option<SecretString>,
}

/// `command_timeout` when not set.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
