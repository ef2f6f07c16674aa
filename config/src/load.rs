//! Finding and reading the configuration file, with environment overrides.

use std::path::{Path, PathBuf};

use crate::raw::RawConfig;
use crate::{Config, ConfigError, ConfigErrors};

/// Environment variable naming the configuration file.
pub const ENV_CONFIG: &str = "MAILGATE_CONFIG";

/// Variables with the `MAILGATE_` prefix that are not configuration
/// overrides (they have no `__` section separator).
const PREFIX: &str = "MAILGATE_";

/// Finds the configuration file: the explicit path, then `$MAILGATE_CONFIG`,
/// `./mailgate.toml`, `$XDG_CONFIG_HOME/mailgate/mailgate.toml` (or
/// `~/.config/mailgate/mailgate.toml`), `/etc/mailgate/mailgate.toml`.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(ENV_CONFIG).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = vec![PathBuf::from("mailgate.toml")];
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(x).join("mailgate/mailgate.toml"));
    } else if let Some(h) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(h).join(".config/mailgate/mailgate.toml"));
    }
    candidates.push(PathBuf::from("/etc/mailgate/mailgate.toml"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            let list: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!(
                "no configuration file found (looked for {}); pass -c FILE or set {ENV_CONFIG}",
                list.join(", ")
            )
        })
}

/// Loads and validates `path`, with overrides from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, std::env::vars())
}

/// Loads and validates `path` with overrides from `env`
/// (`MAILGATE_<SECTION>__<KEY>`, e.g. `MAILGATE_PROVIDER__GMAIL__CLIENT_SECRET`).
pub fn load_with_env(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let file_err = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            message,
        }])
    };
    if !path.is_file() {
        return Err(file_err(
            "cannot read the configuration file: it does not exist or is not a file".into(),
        ));
    }
    let overrides: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| {
            k.strip_prefix(PREFIX)
                .is_some_and(|rest| rest.contains("__"))
        })
        .collect();
    let built = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("MAILGATE")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        )
        .build()
        .map_err(|e| ConfigErrors(vec![convert(path, e)]))?;
    let raw: RawConfig = built
        .try_deserialize()
        .map_err(|e| ConfigErrors(vec![convert(path, e)]))?;
    crate::resolve::resolve(path, raw)
}

/// Turns the `config` crate's error into `file:key: message`.
fn convert(file: &Path, err: config::ConfigError) -> ConfigError {
    let (key, message) = split(err);
    ConfigError {
        file: file.to_path_buf(),
        key,
        message,
    }
}

fn split(err: config::ConfigError) -> (String, String) {
    match err {
        config::ConfigError::At { error, key, .. } => {
            let (inner_key, msg) = split(*error);
            (key.unwrap_or(inner_key), msg)
        }
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => (
            key.unwrap_or_default(),
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        config::ConfigError::FileParse { cause, .. } => (
            String::new(),
            format!("not valid TOML: {}", cause.to_string().trim()),
        ),
        config::ConfigError::NotFound(k) => (k, "missing".into()),
        other => (String::new(), other.to_string()),
    }
}
