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
    /// `webhook_template`: the JSON body, with `{event}`, `{user}`,
    /// `{reason}`, `{sign_in_url}` and `{text}` replaced by the event's
    /// values (JSON-escaped); `None`: mailgate's own body.
    pub webhook_template: Option<String>,
    /// `webhook_file`, when the URL came from one (for permission warnings).
    pub webhook_file: Option<PathBuf>,
    /// `keep_alive` (default 14 days; `"off"`: none): accounts whose key
    /// is in memory are refreshed when their last refresh is older, so a
    /// refresh token does not lapse from disuse.
    pub keep_alive: Option<Duration>,
    /// `mail_from`: an account of this gateway that mails each event to
    /// its user (and `admins`).
    pub mail_from: Option<String>,
    /// `admins`: addresses that get a copy of every mailed event.
    pub admins: Vec<String>,
}

/// `keep_alive` when not set (Microsoft's refresh tokens lapse after 90
/// days unused, Google's of an app in "Testing" after 7).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(14 * 24 * 3600);

/// `command_timeout` when not set.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
