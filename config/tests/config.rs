use std::path::{Path, PathBuf};
use std::time::Duration;

use mailgate_config::{
    Flow, LogFormat, Preset, Protocol, UpstreamSecurity, UserPattern, load_with_env,
};
use secrecy::ExposeSecret;

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("mailgate.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn errors_of(text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), text);
    match load_with_env(&p, no_env()) {
        Ok(_) => Vec::new(),
        Err(e) => {
            e.0.iter()
                .map(|e| {
                    let s = e.to_string();
                    let prefix = format!("{}:", p.display());
                    assert!(s.starts_with(&prefix), "{s} does not start with the file");
                    s[prefix.len()..].to_string()
                })
                .collect()
        }
    }
}

const MINIMAL: &str = r#"
[[listener]]
protocol = "imap"
address = "127.0.0.1:1143"

[provider.o]
preset = "office365"
client_id = "abc"

[[account]]
user = "Carine@Example.com"
provider = "o"
"#;

#[test]
fn every_shipped_example_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = load_with_env(&path, no_env())
                .unwrap_or_else(|e| panic!("{} does not load:\n{e}", path.display()));
            assert!(!cfg.listeners.is_empty());
            assert!(!cfg.accounts.is_empty());
            n += 1;
        }
    }
    assert!(n >= 3, "expected at least three examples, found {n}");
}

#[test]
fn defaults_and_presets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), MINIMAL);
    let cfg = load_with_env(&p, no_env()).expect("loads");
    assert_eq!(cfg.gateway.state_dir, dir.path().join("state"));
    assert_eq!(cfg.gateway.hostname, "localhost");
    assert_eq!(cfg.gateway.log_format, LogFormat::Text);
    assert_eq!(cfg.gateway.max_connections, None);
    // Unset: two descriptors a session, 64 kept for the rest, at most 10,000.
    assert_eq!(cfg.gateway.max_connections_for(1_024), 480);
    assert_eq!(cfg.gateway.max_connections_for(524_288), 10_000);
    assert_eq!(cfg.gateway.max_connections_for(10), 1);
    assert_eq!(cfg.gateway.preauth_timeout, Duration::from_secs(60));
    assert_eq!(cfg.gateway.shutdown_grace, Duration::from_secs(30));
    assert!(
        cfg.listeners[0].in_band_authorization,
        "on by default on loopback"
    );
    let o = cfg.provider("o").expect("provider");
    assert_eq!(o.preset, Preset::Office365);
    assert_eq!(o.flow, Flow::AuthorizationCode);
    assert_eq!(o.tenant.as_deref(), Some("common"));
    assert_eq!(
        o.token_url.as_str(),
        "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    );
    assert_eq!(
        o.authorize_url.as_ref().map(|u| u.as_str()),
        Some("https://login.microsoftonline.com/common/oauth2/v2.0/authorize")
    );
    assert!(o.scopes.contains(&"offline_access".to_string()));
    assert!(
        o.scopes
            .contains(&"https://outlook.office.com/IMAP.AccessAsUser.All".to_string())
    );
    let imap = o.imap.as_ref().expect("imap");
    assert_eq!(
        (imap.host.as_str(), imap.port, imap.security),
        ("outlook.office365.com", 993, UpstreamSecurity::ImplicitTls)
    );
    let smtp = o.smtp.as_ref().expect("smtp");
    assert_eq!(
        (smtp.host.as_str(), smtp.port, smtp.security),
        ("smtp.office365.com", 587, UpstreamSecurity::StartTls)
    );
    assert_eq!(o.redirect_uri.as_str(), "http://localhost:3017/");
    assert_eq!(o.min_token_life, Duration::from_secs(1800));
    assert_eq!(
        cfg.accounts[0].user,
        UserPattern::Exact("carine@example.com".into())
    );
    assert!(cfg.find_account("CARINE@example.COM").is_some());
    assert!(cfg.find_account("other@example.com").is_none());
}

#[test]
fn tenant_and_outlook_and_gmail_presets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(
        dir.path(),
        r#"
[[listener]]
protocol = "imap"
address = "127.0.0.1:1143"
[provider.t]
preset = "office365"
client_id = "x"
tenant = "contoso.onmicrosoft.com"
flow = "client_credentials"
[provider.out]
preset = "outlook"
client_id = "y"
[provider.g]
preset = "gmail"
client_id = "z"
[[account]]
user = "a@contoso.com"
provider = "t"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"
"#,
    );
    let cfg = load_with_env(&p, no_env()).expect("loads");
    let t = cfg.provider("t").expect("t");
    assert_eq!(
        t.token_url.as_str(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(
        t.scopes,
        vec!["https://outlook.office365.com/.default".to_string()]
    );
    let out = cfg.provider("out").expect("out");
    assert_eq!(out.tenant.as_deref(), Some("consumers"));
    assert_eq!(
        out.smtp.as_ref().map(|s| s.host.as_str()),
        Some("smtp-mail.outlook.com")
    );
    let g = cfg.provider("g").expect("g");
    assert_eq!(g.token_url.as_str(), "https://oauth2.googleapis.com/token");
    assert_eq!(g.scopes, vec!["https://mail.google.com/".to_string()]);
    assert_eq!(
        g.smtp.as_ref().map(|s| (s.port, s.security)),
        Some((465, UpstreamSecurity::ImplicitTls))
    );
    assert!(g.tenant.is_none());
    assert!(g.device_code_url.is_none());
}

#[test]
fn environment_overrides_and_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), MINIMAL);
    let env = vec![
        (
            "MAILGATE_PROVIDER__O__CLIENT_SECRET".to_string(),
            "s3cret".to_string(),
        ),
        (
            "MAILGATE_GATEWAY__HOSTNAME".to_string(),
            "box.example.net".to_string(),
        ),
        (
            "MAILGATE_GATEWAY__MAX_CONNECTIONS".to_string(),
            "50".to_string(),
        ),
        // Not overrides: they must not be taken for unknown keys.
        ("MAILGATE_CONFIG".to_string(), "/elsewhere.toml".to_string()),
        ("MAILGATE_PASSWORD".to_string(), "pw".to_string()),
        ("OTHER__THING".to_string(), "x".to_string()),
    ];
    let cfg = load_with_env(&p, env).expect("loads");
    assert_eq!(
        cfg.provider("o")
            .and_then(|o| o.client_secret.as_ref())
            .map(|s| s.expose_secret().to_string()),
        Some("s3cret".to_string())
    );
    assert_eq!(cfg.gateway.hostname, "box.example.net");
    assert_eq!(cfg.gateway.max_connections, Some(50));
    // Set: the configured value, whatever the limit.
    assert_eq!(cfg.gateway.max_connections_for(1_024), 50);
    // The secret never shows in Debug output or in the summary.
    assert!(!format!("{cfg:?}").contains("s3cret"));
    assert!(!cfg.describe().contains("s3cret"));

    let err = load_with_env(
        &p,
        vec![("MAILGATE_GATEWAY__NO_SUCH_KEY".to_string(), "1".to_string())],
    )
    .expect_err("unknown override");
    assert!(err.to_string().contains("no_such_key"), "{err}");
}

#[test]
fn client_secret_file_relative_to_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret.txt"), "from-file\n").expect("write");
    let text = MINIMAL.replace(
        "client_id = \"abc\"",
        "client_id = \"abc\"\nclient_secret_file = \"secret.txt\"",
    );
    let p = write(dir.path(), &text);
    let cfg = load_with_env(&p, no_env()).expect("loads");
    let s = cfg
        .provider("o")
        .and_then(|o| o.client_secret.as_ref())
        .expect("secret");
    assert_eq!(s.expose_secret(), "from-file");
}

#[test]
fn domain_accounts() {
    let text = r#"
[[listener]]
protocol = "imap"
address = "127.0.0.1:1143"
[provider.g]
preset = "gmail"
client_id = "z"
[[account]]
user = "*@Example.org"
provider = "g"
[[account]]
user = "boss@example.org"
provider = "g"
upstream_user = "ceo@example.org"
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), text);
    let cfg = load_with_env(&p, no_env()).expect("loads");
    let a = cfg
        .find_account("Anyone@EXAMPLE.org")
        .expect("domain match");
    assert_eq!(a.user, UserPattern::Domain("example.org".into()));
    let b = cfg.find_account("boss@example.org").expect("exact first");
    assert_eq!(b.upstream_user.as_deref(), Some("ceo@example.org"));
    assert!(cfg.find_account("@example.org").is_none());
    assert!(cfg.find_account("x@example.org.evil").is_none());
    assert!(cfg.find_account("x@sub.example.org").is_none());
}

#[test]
fn errors_name_file_and_key() {
    let cases: &[(&str, &str)] = &[
        ("[gateway]\nbogus = 1\n", "unknown field `bogus`"),
        (
            &MINIMAL.replace("address = \"127.0.0.1:1143\"", "address = \"nowhere\""),
            "listener[0].address: `nowhere` is not an address",
        ),
        (
            &MINIMAL.replace("address = \"127.0.0.1:1143\"", "address = \"0.0.0.0:1143\""),
            "listener[0].address: 0.0.0.0:1143 is not a loopback address",
        ),
        (
            &MINIMAL.replace("provider = \"o\"", "provider = \"nope\""),
            "account[0].provider: no provider named `nope` (defined: o)",
        ),
        (
            &MINIMAL.replace("client_id = \"abc\"", ""),
            "provider.o.client_id: missing",
        ),
        (
            &MINIMAL.replace("preset = \"office365\"", "preset = \"aol\""),
            "provider.o.preset: `aol` is not one of: office365, outlook, gmail, custom",
        ),
        (
            &MINIMAL.replace(
                "preset = \"office365\"",
                "preset = \"gmail\"\nflow = \"device_code\"",
            ),
            "provider.o.flow: Google does not allow the device flow",
        ),
        (
            &MINIMAL.replace("preset = \"office365\"", "preset = \"custom\""),
            "provider.o.token_url: missing",
        ),
        (
            &MINIMAL.replace(
                "preset = \"office365\"",
                "preset = \"custom\"\ntoken_url = \"http://oauth.example.com/token\"",
            ),
            "provider.o.token_url: `http://oauth.example.com/token` must be an https:// URL",
        ),
        (
            &MINIMAL.replace(
                "client_id = \"abc\"",
                "client_id = \"abc\"\nimap = \"http://x\"",
            ),
            "provider.o.imap: `http://x`: the scheme must be imaps:// (implicit TLS) or imap:// (STARTTLS)",
        ),
        (
            &MINIMAL.replace(
                "client_id = \"abc\"",
                "client_id = \"abc\"\nmin_token_life = \"soon\"",
            ),
            "provider.o.min_token_life: `soon` is not a duration",
        ),
        (
            &MINIMAL.replace(
                "client_id = \"abc\"",
                "client_id = \"abc\"\nflow = \"client_credentials\"",
            ),
            "account[0].password_hash: required with a client_credentials provider",
        ),
        (
            &MINIMAL
                .replace(
                    "client_id = \"abc\"",
                    "client_id = \"abc\"\nflow = \"client_credentials\"",
                )
                .replace(
                    "user = \"Carine@Example.com\"",
                    "user = \"*@example.com\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$Zml4ZWQgdGVzdCBzYWx0IQ$2uKtzEDu1k5Y5bFe6ek6PAWzrOgK8mF0fX9Xb2yYrWc\"",
                ),
            "account[0].user: `*@example.com` with a client_credentials provider would let whoever knows its one password_hash open every mailbox of example.com",
        ),
        (
            &format!("{MINIMAL}\n[[account]]\nuser = \"carine@example.com\"\nprovider = \"o\"\n"),
            "account[1].user: `carine@example.com` is listed twice",
        ),
        (
            "[[listener]]\nprotocol = \"imap\"\naddress = ",
            "not valid TOML",
        ),
        (
            &MINIMAL.replace(
                "client_id = \"abc\"",
                "client_id = \"abc\"\nca_file = \"missing.pem\"",
            ),
            "provider.o.ca_file:",
        ),
        ("", "listener: no [[listener]] is configured"),
        ("[gateway]\nmax_line = 10\n", "gateway.max_line: 10 is out of range; use 512 to 1048576"),
        ("[gateway]\nmax_failures = 0\n", "gateway.max_failures: 0 is out of range"),
        (
            &MINIMAL.replace("address = \"127.0.0.1:1143\"", "address = \"127.0.0.1:1143\"\ntls = \"implicit\"\ncertificate = \"nope.pem\"\nkey = \"nope.key\""),
            "listener[0].certificate:",
        ),
        (
            &MINIMAL.replace("address = \"127.0.0.1:1143\"", "address = \"127.0.0.1:1143\"\ntls = \"sometimes\""),
            "listener[0].tls: `sometimes` is not one of: none, starttls, implicit",
        ),
    ];
    for (text, want) in cases {
        let errs = errors_of(text);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "wanted {want:?} in {errs:#?}"
        );
    }
}

#[test]
fn all_errors_reported_at_once() {
    let text = MINIMAL
        .replace("address = \"127.0.0.1:1143\"", "address = \"bad\"")
        .replace("client_id = \"abc\"", "client_id = \"\"");
    let errs = errors_of(&text);
    assert!(errs.len() >= 2, "{errs:#?}");
}

#[test]
fn upstream_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = MINIMAL.replace(
        "client_id = \"abc\"",
        "client_id = \"abc\"\nimap = \"imap://127.0.0.2\"\npop3 = \"pop3s://[::1]:1995\"",
    );
    let p = write(dir.path(), &text);
    let cfg = load_with_env(&p, no_env()).expect("loads");
    let o = cfg.provider("o").expect("o");
    let imap = o.upstream(Protocol::Imap).expect("imap");
    assert_eq!(
        (imap.host.as_str(), imap.port, imap.security),
        ("127.0.0.2", 143, UpstreamSecurity::StartTls)
    );
    let pop3 = o.upstream(Protocol::Pop3).expect("pop3");
    assert_eq!((pop3.host.as_str(), pop3.port), ("::1", 1995));
}

#[test]
fn in_band_authorization_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = MINIMAL.replace(
        "address = \"127.0.0.1:1143\"",
        "address = \"0.0.0.0:1143\"\ninsecure_plaintext = true",
    ) + "\n[[listener]]\nprotocol = \"smtp\"\naddress = \"127.0.0.1:1587\"\nin_band_authorization = false\n";
    let p = write(dir.path(), &text);
    let cfg = load_with_env(&p, no_env()).expect("loads");
    assert!(
        !cfg.listeners[0].in_band_authorization,
        "off by default off loopback"
    );
    assert!(!cfg.listeners[1].in_band_authorization, "explicitly off");
}

#[test]
fn portal_section() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Absent: no portal.
    let cfg = load_with_env(&write(dir.path(), MINIMAL), no_env()).expect("loads");
    assert!(cfg.portal.is_none());
    // Present: the defaults.
    let text = format!("{MINIMAL}\n[portal]\n");
    let cfg = load_with_env(&write(dir.path(), &text), no_env()).expect("loads");
    let p = cfg.portal.expect("a portal");
    assert_eq!(p.address, "127.0.0.1:3017".parse().expect("addr"));
    assert!(!p.tls && p.public_url.is_none());
    let bound = p.address;
    assert_eq!(p.base_url(bound).as_str(), "http://127.0.0.1:3017/");
    // Which redirect URIs it serves.
    let url = |s: &str| url::Url::parse(s).expect("url");
    assert!(p.serves(&url("http://localhost:3017/"), bound));
    assert!(
        p.serves(&url("http://127.0.0.1/"), bound),
        "RFC 8252: any port"
    );
    assert!(!p.serves(&url("http://localhost:3018/"), bound));
    assert!(!p.serves(&url("https://localhost:3017/"), bound));
    assert!(!p.serves(&url("http://mail.example.com:3017/"), bound));

    // Off loopback: TLS, or insecure_plaintext on purpose.
    let errs = errors_of(&format!(
        "{MINIMAL}\n[portal]\naddress = \"0.0.0.0:8443\"\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("portal.address:") && e.contains("clear")),
        "{errs:?}"
    );
    assert!(
        errors_of(&format!(
            "{MINIMAL}\n[portal]\naddress = \"0.0.0.0:8443\"\ninsecure_plaintext = true\n"
        ))
        .is_empty()
    );
    let text = format!(
        "{MINIMAL}\n[portal]\naddress = \"0.0.0.0:443\"\ntls = \"implicit\"\npublic_url = \"https://gw.example.net/\"\n"
    );
    let cfg = load_with_env(&write(dir.path(), &text), no_env()).expect("loads");
    let p = cfg.portal.expect("a portal");
    assert!(p.tls);
    assert!(p.serves(&url("https://gw.example.net/"), p.address));
    assert!(!p.serves(&url("https://gw.example.net:8443/"), p.address));
    assert!(!p.serves(&url("http://localhost:3017/"), p.address));

    // Bad values name their key.
    let errs = errors_of(&format!(
        "{MINIMAL}\n[portal]\ntls = \"starttls\"\npublic_url = \"ftp://x\"\naddress = \"nowhere\"\ncertificate = \"c.pem\"\n"
    ));
    for key in [
        "portal.tls:",
        "portal.public_url:",
        "portal.address:",
        "portal.certificate:",
    ] {
        assert!(errs.iter().any(|e| e.starts_with(key)), "{key} in {errs:?}");
    }
    assert!(!errors_of(&format!("{MINIMAL}\n[portal]\nport = 1\n")).is_empty());
}

#[test]
fn sending_through_graph() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The default: SMTP relayed, Graph's defaults ready.
    let cfg = load_with_env(&write(dir.path(), MINIMAL), no_env()).expect("loads");
    let o = cfg.provider("o").expect("provider");
    assert_eq!(o.sending, mailgate_config::Sending::Smtp);
    assert_eq!(o.graph.url.as_str(), "https://graph.microsoft.com/v1.0");
    assert!(o.graph.save_to_sent_items);
    assert_eq!(o.graph.max_message_size, 35_000_000);
    assert_eq!(
        o.graph.scopes,
        ["https://graph.microsoft.com/Mail.Send", "offline_access"]
    );

    let graph = MINIMAL.replace(
        "client_id = \"abc\"",
        "client_id = \"abc\"\nsmtp = \"graph\"\ngraph_url = \"http://127.0.0.1:9/v1.0\"\nsave_to_sent_items = false\nmax_message_size = \"20MiB\"",
    );
    let cfg = load_with_env(&write(dir.path(), &graph), no_env()).expect("loads");
    let o = cfg.provider("o").expect("provider");
    assert_eq!(o.sending, mailgate_config::Sending::Graph);
    assert!(o.smtp.is_none(), "no SMTP server is used");
    assert_eq!(o.graph.url.as_str(), "http://127.0.0.1:9/v1.0");
    assert!(!o.graph.save_to_sent_items);
    assert!(
        cfg.warnings()
            .iter()
            .any(|w| w.contains("save_to_sent_items = false sends every message as Graph's JSON")),
        "{:?}",
        cfg.warnings()
    );
    assert_eq!(o.graph.max_message_size, 20 << 20);
    assert!(
        cfg.describe()
            .contains("sending        graph via http://127.0.0.1:9/v1.0")
    );

    let auto = MINIMAL.replace(
        "client_id = \"abc\"",
        "client_id = \"abc\"\nsmtp = \"auto\"",
    );
    let cfg = load_with_env(&write(dir.path(), &auto), no_env()).expect("loads");
    let o = cfg.provider("o").expect("provider");
    assert_eq!(o.sending, mailgate_config::Sending::Auto);
    assert_eq!(
        o.smtp.as_ref().map(|u| u.to_string()),
        Some("smtp.office365.com:587 (STARTTLS)".into()),
        "auto tries the preset's SMTP server first"
    );

    let misplaced = MINIMAL.replace(
        "client_id = \"abc\"",
        "client_id = \"abc\"\nsmtp_server = \"smtp://127.0.0.1:2525\"",
    );
    let errs = errors_of(&misplaced);
    assert!(
        errs.iter()
            .any(|e| e.contains("provider.o.smtp_server") && e.contains("only smtp = \"auto\"")),
        "{errs:?}"
    );

    let app_only = MINIMAL.replace(
        "client_id = \"abc\"",
        "client_id = \"abc\"\nflow = \"client_credentials\"\nclient_secret = \"s\"\ntenant = \"contoso.com\"\nsmtp = \"graph\"",
    )
    .replace("provider = \"o\"", "provider = \"o\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$1GWF7L1TgCqlKXI5GcL7Y3KDa2HLRhr8hIbg4CJ8V2A\"");
    let cfg = load_with_env(&write(dir.path(), &app_only), no_env()).expect("loads");
    assert_eq!(
        cfg.provider("o").expect("provider").graph.scopes,
        ["https://graph.microsoft.com/.default"]
    );

    let gmail = r#"
[[listener]]
protocol = "smtp"
address = "127.0.0.1:1587"
[provider.g]
preset = "gmail"
client_id = "x.apps.googleusercontent.com"
smtp = "graph"
max_message_size = "lots"
[[account]]
user = "a@example.com"
provider = "g"
"#;
    let errs = errors_of(gmail);
    assert!(
        errs.iter()
            .any(|e| e.contains("provider.g.smtp")
                && e.contains("only office365, outlook and custom")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("provider.g.max_message_size") && e.contains("is not a size")),
        "{errs:?}"
    );
}
