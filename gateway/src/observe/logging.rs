//! tracing set-up: text or JSON on stderr, filtered by `--log-level`, else
//! `RUST_LOG`, else the command's default (`info` for `run`). Every line of
//! a connection carries its span's fields (id, protocol, peer, user once
//! known): as a `conn{...}:` prefix in text; in JSON as the `span` object
//! (the innermost span) and the `spans` list (all of them, outermost first).
//! No secret is ever a field of any event: passwords, tokens and SASL
//! payloads live in `SecretString`s whose Debug output is redacted.

use mailgate_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// The filter: `level` (from `--log-level`) when given, else `RUST_LOG`,
/// else `default`. A `level` that is not a valid filter is an error.
pub fn filter(level: Option<&str>, default: &str) -> Result<EnvFilter, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    match level {
        Some(l) => {
            let hint = "use error, warn, info, debug, trace, or directives such as mailgate=debug,rustls=info";
            // A bare word would be taken as a target name: a typo such as
            // `degub` would silently log nothing of mailgate's.
            if let Some(word) = l.split(',').map(str::trim).find(|d| {
                !d.is_empty()
                    && !d.contains('=')
                    && !LEVELS.contains(&d.to_ascii_lowercase().as_str())
            }) {
                return Err(format!("--log-level: {word:?} is not a level; {hint}"));
            }
            EnvFilter::try_new(l).map_err(|e| format!("--log-level {l:?}: {e}; {hint}"))
        }
        None => Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))),
    }
}

/// Installs the global subscriber with `filter`. Does nothing if one is
/// already installed (tests).
pub fn init(format: LogFormat, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .try_init(),
    };
}

/// For tests: a subscriber writing through libtest's capture.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
