//! tracing set-up: text or JSON on stderr, filtered by `RUST_LOG` (default
//! `info`). No secret is ever a field of any event: passwords, tokens and
//! SASL payloads live in `SecretString`s whose Debug output is redacted.

use mailgate_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `default` is the filter when `RUST_LOG` is
/// unset. Does nothing if one is already installed (tests).
pub fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
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
