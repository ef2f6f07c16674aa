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
    // The syntax is checked here first, so that an error names the line
    // and the key but never echoes the file's text (an unquoted
    // `client_secret` would otherwise be printed back).
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_err(format!("cannot read the configuration file: {e}")))?;
    let table = match text.parse::<toml::Table>() {
        Ok(t) => t,
        Err(e) => return Err(file_err(syntax_error(&text, &e))),
    };
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
    let mut config = crate::resolve::resolve(path, raw)?;
    config.secret_files.extend(secret_files(path, &table));
    Ok(config)
}

/// The configuration file itself when it holds a `client_secret`, and
/// every `client_secret_file`, `client_key` and `service_account_file`.
fn secret_files(path: &Path, table: &toml::Table) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let providers = table.get("provider").and_then(toml::Value::as_table);
    for (name, p) in providers.into_iter().flatten() {
        if p.get("client_secret").is_some() {
            out.push((format!("provider.{name}.client_secret"), path.to_path_buf()));
        }
        for k in ["client_secret_file", "client_key", "service_account_file"] {
            if let Some(f) = p.get(k).and_then(toml::Value::as_str) {
                out.push((format!("provider.{name}.{k}"), crate::relative_to(path, f)));
            }
        }
    }
    // A proxy URL with a password.
    let has_password = |v: Option<&toml::Value>| {
        v.and_then(toml::Value::as_str)
            .and_then(|s| url::Url::parse(s).ok())
            .is_some_and(|u| u.password().is_some())
    };
    let gateway = table.get("gateway").and_then(toml::Value::as_table);
    if has_password(gateway.and_then(|g| g.get("proxy"))) {
        out.push(("gateway.proxy".into(), path.to_path_buf()));
    }
    for (name, p) in providers.into_iter().flatten() {
        if has_password(p.get("proxy")) {
            out.push((format!("provider.{name}.proxy"), path.to_path_buf()));
        }
    }
    let store = table.get("store").and_then(toml::Value::as_table);
    if store.is_some_and(|s| s.get("url").is_some()) {
        out.push(("store.url".into(), path.to_path_buf()));
    }
    for key in ["url_file", "sentinels_file"] {
        if let Some(f) = store.and_then(|s| s.get(key)).and_then(toml::Value::as_str) {
            let dir = path.parent().unwrap_or(Path::new("."));
            out.push((format!("store.{key}"), dir.join(f)));
        }
    }
    let sentinel_password = store
        .and_then(|s| s.get("sentinels"))
        .and_then(toml::Value::as_array)
        .is_some_and(|l| {
            l.iter()
                .filter_map(toml::Value::as_str)
                .any(|u| u.contains('@'))
        });
    if sentinel_password {
        out.push(("store.sentinels".into(), path.to_path_buf()));
    }
    out
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
            // The kind of value, never the value (it may be a secret).
            format!("invalid type: {}, expected {expected}", kind(&unexpected)),
        ),
        config::ConfigError::FileParse { .. } => (String::new(), "not valid TOML".into()),
        config::ConfigError::NotFound(k) => (k, "missing".into()),
        other => (String::new(), redact_values(&other.to_string())),
    }
}

/// Serde's messages quote the offending value (`invalid type: string
/// "…"`); it may be a secret, so quoted text is left out.
fn redact_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…");
            } else {
                out.push('"');
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// What kind of value a type error found ("string", "64-bit integer"),
/// without the value that the `config` crate quotes after it.
fn kind(u: &impl std::fmt::Display) -> String {
    let s = u.to_string();
    match s.find(['`', '"', '\'']) {
        Some(i) => s[..i].trim_end().to_owned(),
        None => s,
    }
}

/// A TOML syntax error as "line L, column C (key K): what is wrong",
/// without any of the file's text but the key's name.
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("");
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'))
        });
    let what = e.message().lines().next().unwrap_or("syntax error");
    match key {
        Some(k) => format!("not valid TOML at line {line}, column {column} (key {k}): {what}"),
        None => format!("not valid TOML at line {line}, column {column}: {what}"),
    }
}
