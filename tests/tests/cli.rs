//! The `mailgate` binary itself: every command of SPEC §2 that exists,
//! exit codes, and `run` serving until SIGTERM.

#![allow(clippy::unwrap_used)]

use secrecy::ExposeSecret as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use mailgate_tests::client::LineClient;
use mailgate_tests::harness::{Env, PASSWORD, USER, imap_addr, logs, start};
use mailgate_tests::imap_server::{FakeImap, Options};

fn mailgate(config: &Path, args: &[&str], stdin: &str, password: Option<&str>) -> Output {
    mailgate_env(config, args, stdin, password, &[])
}

/// Runs the binary with `env` added (and no inherited MAILGATE_ variables
/// that would change the outcome).
fn mailgate_env(
    config: &Path,
    args: &[&str],
    stdin: &str,
    password: Option<&str>,
    env: &[(&str, &Path)],
) -> Output {
    mailgate_tests::harness::run_mailgate(config, args, stdin, password, env)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_examples_and_errors() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    // check generates the self-signed certificate of TLS listeners: keep it
    // out of the examples' state_dir (/var/lib/mailgate for the gateway box).
    let state = tempfile::tempdir().unwrap();
    for name in [
        "desktop-office365.toml",
        "desktop-gmail.toml",
        "gateway-box.toml",
    ] {
        let out = mailgate_env(
            &examples.join(name),
            &["check"],
            "",
            None,
            &[("MAILGATE_GATEWAY__STATE_DIR", state.path())],
        );
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("configuration is valid"), "{stdout}");
        assert!(stdout.contains("imap"), "{stdout}");
        if name == "gateway-box.toml" {
            assert!(stdout.contains("(self-signed) sha256 "), "{stdout}");
        }
    }
    assert!(state.path().join("tls/gateway.pem").is_file());
    let out = mailgate(
        &examples.join("desktop-office365.toml"),
        &["check"],
        "",
        None,
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("https://login.microsoftonline.com/common/oauth2/v2.0/token"),
        "{stdout}"
    );
    // Values in the configuration's own words.
    assert!(stdout.contains("log_format       text"), "{stdout}");
    assert!(
        stdout.contains("tls=none")
            || stdout.contains("tls=starttls")
            || stdout.contains("tls=implicit"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("tls=None") && !stdout.contains("Text"),
        "{stdout}"
    );
    // The example's client ID is a placeholder: check says so and what
    // to do, instead of letting the first sign-in fail at Microsoft.
    let both = format!("{stdout}{}", text(&out.stderr));
    assert!(
        both.contains("client_id is the examples' placeholder")
            && both.contains("AADSTS700016")
            && both.contains("App registrations"),
        "{both}"
    );
    assert!(
        stdout.contains("outlook.office365.com:993 (implicit TLS)"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[listener]]\nprotocol = \"imap\"\naddress = \"bogus\"\n[provider.p]\npreset = \"gmail\"\n[[account]]\nuser = \"a@b.c\"\nprovider = \"q\"\n",
    )
    .unwrap();
    let out = mailgate(&bad, &["check"], "", None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let file = bad.display().to_string();
    for want in [
        format!("{file}:listener[0].address: `bogus` is not an address"),
        format!("{file}:provider.p.client_id: missing"),
        format!("{file}:account[0].provider: no provider named `q`"),
    ] {
        assert!(err.contains(&want), "wanted {want} in\n{err}");
    }

    // A plaintext listener off loopback is refused unless acknowledged.
    let open = dir.path().join("open.toml");
    std::fs::write(
        &open,
        "[[listener]]\nprotocol = \"imap\"\naddress = \"0.0.0.0:1143\"\n[provider.p]\npreset = \"gmail\"\nclient_id = \"x\"\n[[account]]\nuser = \"a@b.c\"\nprovider = \"p\"\n",
    )
    .unwrap();
    let out = mailgate(&open, &["check"], "", None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("listener[0].address: 0.0.0.0:1143 is not a loopback address")
            && err.contains("insecure_plaintext"),
        "{err}"
    );
    let out = mailgate(&open, &["run"], "", None);
    assert_eq!(out.status.code(), Some(1), "run refuses it too");

    // [store] with sentinels: what is wrong is said, key by key; a
    // sentinel's password is never echoed.
    let sentinels = dir.path().join("sentinels.toml");
    let base = "[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:1143\"\n[provider.p]\npreset = \"gmail\"\nclient_id = \"x\"\n[[account]]\nuser = \"a@b.c\"\nprovider = \"p\"\n";
    std::fs::write(
        &sentinels,
        format!(
            "{base}[store]\nbackend = \"redis\"\nsentinels = [\"redis://:hush@10.0.0.1:26379\", \"redis-sentinel://10.0.0.2\"]\nservice = \"my master\"\nwait_timeout = \"soon\"\n"
        ),
    )
    .unwrap();
    let out = mailgate(&sentinels, &["check"], "", None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for want in [
        "store.sentinels[0]: is not a redis-sentinel:// or rediss-sentinel:// URL",
        "store.service: must be the name the sentinels know the primary by",
        "store.wait_timeout: `soon` is not a duration",
    ] {
        assert!(err.contains(want), "wanted {want} in\n{err}");
    }
    assert!(!err.contains("hush"), "{err}");
    std::fs::write(
        &sentinels,
        format!("{base}[store]\nservice = \"mymaster\"\n"),
    )
    .unwrap();
    let err = text(&mailgate(&sentinels, &["check"], "", None).stderr);
    assert!(
        err.contains("store.service: is only used with backend = \"redis\""),
        "{err}"
    );

    let out = mailgate(&dir.path().join("missing.toml"), &["check"], "", None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("does not exist"));
}

/// Whether USER has a token file.
fn stored(env: &Env) -> bool {
    env.state_dir()
        .join("tokens")
        .join(format!("{USER}.json"))
        .exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_import_accounts_forget() {
    logs();
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let cfg = env.write_config(&env.config_text(&imap.url(false), "", "", ""));

    // A dead token is refused and nothing is stored.
    let out = mailgate(
        &cfg,
        &["token", "import", USER],
        "not-a-token\n",
        Some(PASSWORD),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the token does not work"),
        "{}",
        text(&out.stderr)
    );
    assert!(!stored(&env), "nothing is stored");

    // A user not in the configuration is refused.
    let out = mailgate(
        &cfg,
        &["token", "import", "eve@example.test"],
        "x\n",
        Some(PASSWORD),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("matches no [[account]]"));

    // A local password shorter than the one minimum (as `passwd` and the
    // portal ask): refused before the token is used (the count of
    // refreshes below stays at one).
    let rt = env.oauth.issue_refresh_token(USER);
    let out = mailgate(
        &cfg,
        &["token", "import", USER],
        &format!("{rt}\n"),
        Some("ab"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("at least 8 characters"),
        "{}",
        text(&out.stderr)
    );
    assert!(!stored(&env), "nothing is stored");
    let out = mailgate(&cfg, &["hash-password"], "", Some("short"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));

    // No password source at all: a clear error.
    let out = mailgate(
        &cfg,
        &["token", "import", USER, "--no-verify"],
        "rt\n",
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("MAILGATE_PASSWORD"),
        "{}",
        text(&out.stderr)
    );

    let rt = env.oauth.issue_refresh_token(USER);
    let out = mailgate(
        &cfg,
        &["token", "import", "Alice@Example.test"],
        &format!("{rt}\n"),
        Some(PASSWORD),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("verified with one refresh"));
    assert_eq!(env.oauth.refresh_count(), 1);
    let tokens = env.open(USER, PASSWORD);
    assert_eq!(
        tokens.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some(rt.as_str())
    );
    assert!(
        tokens
            .access(mailgate::accounts::store::Audience::Mail)
            .is_some()
    );

    // The secret never appears in the listing or the file's clear part.
    let out = mailgate(&cfg, &["accounts"], "", None);
    assert!(out.status.success());
    let listing = text(&out.stdout);
    assert!(listing.starts_with("USER"), "{listing}");
    let row = listing.lines().find(|l| l.starts_with(USER)).unwrap();
    assert!(
        row.contains("test") && row.contains("authorization_code") && row.contains(" valid "),
        "{row}"
    );
    assert!(
        listing.lines().next().unwrap().contains("EXPIRES"),
        "{listing}"
    );
    assert!(!listing.contains(&rt));
    // The same as JSON: expiry and last refresh are set, no error.
    let out = mailgate(&cfg, &["accounts", "--json"], "", None);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["user"] == USER)
        .unwrap();
    assert_eq!(a["token"], "valid", "{v}");
    assert_eq!(a["provider"], "test");
    assert!(a["expires_at"].as_u64().unwrap() > a["last_refresh"].as_u64().unwrap());
    assert!(a["last_error"].is_null() && a["backoff"].is_null(), "{v}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&rt));
    let raw = std::fs::read_to_string(env.state_dir().join("tokens").join(format!("{USER}.json")))
        .unwrap();
    assert!(!raw.contains(&rt));

    // The imported token serves a login through the gateway, with no
    // further refresh (the verified access token is reused).
    let g = start(env.load(&std::fs::read_to_string(&cfg).unwrap())).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));
    assert_eq!(env.oauth.refresh_count(), 1);
    drop(c);
    g.shutdown().await;

    let out = mailgate(&cfg, &["forget", USER], "", None);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("deleted"));
    let out = mailgate(&cfg, &["accounts"], "", None);
    let row = text(&out.stdout)
        .lines()
        .find(|l| l.starts_with(USER))
        .unwrap()
        .to_string();
    assert!(row.contains(" none "), "{row}");
    let out = mailgate(&cfg, &["forget", USER], "", None);
    assert!(text(&out.stdout).contains("no tokens were stored"));
}

/// `hash-password` output works as an account's `password_hash`: the right
/// password logs in, a wrong one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_password_as_password_hash() {
    logs();
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let cfg = env.write_config(&env.config_text(&imap.url(false), "", "", ""));
    let out = mailgate(&cfg, &["hash-password"], "", Some("hashed pw"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = text(&out.stdout).trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");

    let t =
        mailgate::accounts::store::Tokens::refreshable(env.oauth.issue_refresh_token(USER).into());
    env.seal(USER, "hashed pw", t);
    let g = start(env.load(&env.config_text(
        &imap.url(false),
        "",
        "",
        &format!("password_hash = \"{hash}\""),
    )))
    .await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    c.send(format!("a LOGIN {USER} \"hashed px\"\r\n")).await;
    assert!(
        c.response_text("a")
            .await
            .starts_with("a NO [AUTHENTICATIONFAILED]")
    );
    c.send(format!("b LOGIN {USER} \"hashed pw\"\r\n")).await;
    let r = c.response_text("b").await;
    assert!(r.starts_with("b OK"), "{r}");
}

/// `mailgate run` serves until SIGTERM and then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_until_sigterm() {
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    env.seal_new_user_token();
    let cfg =
        env.write_config(&env.config_text(&imap.url(false), "shutdown_grace = \"2s\"", "", ""));
    let mut child = mailgate_tests::harness::mailgate(Some(&cfg))
        .arg("run")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    // "listening protocol=imap address=127.0.0.1:PORT"
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("no listening line");
        if let Some(i) = line.find("address=") {
            let a = line[i + 8..].split_whitespace().next().unwrap().to_string();
            break a.parse::<std::net::SocketAddr>().unwrap();
        }
    };
    let mut c = LineClient::connect(addr).await;
    assert!(c.line().await.starts_with("* OK"));
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));

    // SIGHUP reloads the certificates and keeps serving (and the open
    // session).
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("no SIGHUP line");
        if line.contains("SIGHUP") {
            break;
        }
    }
    c.send("n NOOP\r\n").await;
    assert!(c.response_text("n").await.starts_with("n OK"));
    drop(c);

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mailgate did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "{code:?}");
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("shutting down")),
        "{rest:#?}"
    );
}

/// `mailgate passwd USER`: the old password opens the tokens, the new one
/// seals them, and a running gateway takes it from its next login on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_changes_the_local_password_of_a_running_gateway() {
    logs();
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    env.seal_new_user_token();
    let g = env.gateway(&imap.url(false)).await;
    let cfg = env.write_config(&env.config_text(&imap.url(false), "", "", ""));
    let login = async |password: &str| {
        let mut c = LineClient::greeted(imap_addr(&g)).await;
        c.login("a", USER, password).await
    };
    assert!(
        login(PASSWORD).await.starts_with("a OK"),
        "the key is cached now"
    );
    let new = Path::new("a brand new local password");
    let before =
        std::fs::read(env.state_dir().join("tokens").join(format!("{USER}.json"))).unwrap();

    let out = mailgate_env(
        &cfg,
        &["passwd", USER],
        "",
        Some("wrong password"),
        &[("MAILGATE_NEW_PASSWORD", new)],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("the old password is wrong; nothing was changed"),
        "{}",
        text(&out.stderr)
    );
    let out = mailgate_env(
        &cfg,
        &["passwd", USER],
        "",
        Some(PASSWORD),
        &[("MAILGATE_NEW_PASSWORD", Path::new("short"))],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("at least 8 characters"),
        "{}",
        text(&out.stderr)
    );
    let out = mailgate(&cfg, &["passwd", USER], "", Some(PASSWORD));
    assert_eq!(
        out.status.code(),
        Some(1),
        "MAILGATE_PASSWORD without MAILGATE_NEW_PASSWORD"
    );
    let out = mailgate_env(
        &cfg,
        &["passwd", "nobody@example.test"],
        "",
        Some(PASSWORD),
        &[("MAILGATE_NEW_PASSWORD", new)],
    );
    assert_eq!(out.status.code(), Some(1));
    let after_refusals =
        std::fs::read(env.state_dir().join("tokens").join(format!("{USER}.json"))).unwrap();
    assert_eq!(before, after_refusals, "refusals change nothing");

    let out = mailgate_env(
        &cfg,
        &["passwd", USER],
        "",
        Some(PASSWORD),
        &[("MAILGATE_NEW_PASSWORD", new)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("is changed"));
    env.open(USER, new.to_str().unwrap());
    let r = login(PASSWORD).await;
    assert!(
        r.starts_with("a NO [AUTHENTICATIONFAILED]"),
        "the old password: {r}"
    );
    let r = login(new.to_str().unwrap()).await;
    assert!(r.starts_with("a OK"), "the new password: {r}");
}
