//! The closed choices of the configuration (log format, protocol, TLS
//! mode, preset, flow, assertion algorithm), each with its names in the
//! file.

use crate::{AssertionAlg, Flow, LogFormat, Preset, Protocol, TlsMode};

/// A closed set of values written as lower-case words in the file.
pub(crate) trait Choice: Sized + Copy + 'static {
    const CHOICES: &'static [(&'static str, Self)];
}

impl Choice for LogFormat {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("text", LogFormat::Text), ("json", LogFormat::Json)];
}
impl Choice for Protocol {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("imap", Protocol::Imap),
        ("pop3", Protocol::Pop3),
        ("smtp", Protocol::Smtp),
    ];
}
impl Choice for TlsMode {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("none", TlsMode::None),
        ("starttls", TlsMode::Starttls),
        ("implicit", TlsMode::Implicit),
    ];
}
impl Choice for Preset {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("office365", Preset::Office365),
        ("outlook", Preset::Outlook),
        ("gmail", Preset::Gmail),
        ("custom", Preset::Custom),
    ];
}
impl Choice for Flow {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("authorization_code", Flow::AuthorizationCode),
        ("device_code", Flow::DeviceCode),
        ("client_credentials", Flow::ClientCredentials),
        ("service_account", Flow::ServiceAccount),
    ];
}
impl Choice for AssertionAlg {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("PS256", AssertionAlg::Ps256),
        ("RS256", AssertionAlg::Rs256),
    ];
}
