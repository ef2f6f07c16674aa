//! The state directory is trusted only when it is the gateway's own
//! (issue 23): a `state_dir` or `tokens` that other users may write is
//! tightened, a planted symbolic link is refused by every command and by
//! `run` (nothing is written through it), a token file planted behind a
//! link is not read, and a token file that names another account (copied
//! under this one's name) opens nothing.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use mailgate::accounts::store::Tokens;
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, USER, imap_addr, logs, run_mailgate, start};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_must_be_the_gateways_own() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let cfg = env.write_config(&env.config_text(&imap.url(false), "", "", ""));
    let state = env.state_dir();
    let tokens = state.join("tokens");

    // Left world-writable by someone: tightened, and said.
    std::fs::create_dir_all(&tokens).unwrap();
    for d in [&state, &tokens] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let out = run_mailgate(&cfg, &["forget", USER], "", None, &[]);
    let said = text(&out);
    assert!(
        said.contains("was writable by other users (mode 0777); its mode is now 0700"),
        "{said}"
    );
    for d in [&state, &tokens] {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }

    // `tokens` replaced by a link into another user's directory: refused,
    // and nothing is written there.
    let elsewhere = env.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::remove_dir_all(&tokens).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &tokens).unwrap();
    let rt = env.oauth.issue_refresh_token(USER);
    let out = run_mailgate(
        &cfg,
        &["token", "import", USER, "--no-verify"],
        &format!("{rt}\n"),
        Some(PASSWORD),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("tokens is a symbolic link"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    let out = run_mailgate(&cfg, &["run"], "", None, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("is a symbolic link"), "{}", text(&out));
    std::fs::remove_file(&tokens).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_and_copied_token_files_open_nothing() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = env.config_text(
        &imap.url(false),
        "",
        "",
        "[[account]]\nuser = \"bob@example.test\"\nprovider = \"test\"\n",
    );
    let g = start(env.load(&text)).await;
    // Bob's tokens, sealed with bob's password...
    let t = Tokens::refreshable(env.oauth.issue_refresh_token("bob@example.test").into());
    let bob = env.seal("bob@example.test", "bobs-password", t);
    // ...copied under alice's name: logging in as alice with bob's
    // password opens nothing.
    let alice = env.state_dir().join("tokens").join(format!("{USER}.json"));
    std::fs::copy(&bob, &alice).unwrap();
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("a", USER, "bobs-password").await;
    assert!(r.starts_with("a NO") && r.contains("damaged"), "{r}");
    // A link planted in place of alice's file is not followed.
    std::fs::remove_file(&alice).unwrap();
    std::os::unix::fs::symlink(&bob, &alice).unwrap();
    // (Not read at all: were it followed, the file would be bob's and
    // answer "damaged", as the copy did.)
    let r = c.login("b", USER, "bobs-password").await;
    assert!(
        r.starts_with(
            "b NO [UNAVAILABLE] Cannot log in now: the gateway cannot read its token store"
        ),
        "{r}"
    );
    // Bob himself is untouched.
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("c", "bob@example.test", "bobs-password").await;
    assert!(r.starts_with("c OK"), "{r}");
}

/// A secret handed over as a systemd credential (`LoadCredential=`): a
/// `*_file` key names it as `credential:NAME`, read from
/// `$CREDENTIALS_DIRECTORY`; without one, `check` says what to add to
/// the unit.
#[test]
fn secrets_come_from_systemd_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mailgate.toml");
    std::fs::write(
        &cfg,
        "[gateway]\nstate_dir = \"state\"\n[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:0\"\n[provider.o]\npreset = \"office365\"\nclient_id = \"x\"\ntenant = \"contoso.com\"\nclient_secret_file = \"credential:client_secret\"\n[[account]]\nuser = \"a@contoso.com\"\nprovider = \"o\"\n",
    )
    .unwrap();
    let out = run_mailgate(&cfg, &["check"], "", None, &[]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out);
    assert!(
        said.contains("provider.o.client_secret_file")
            && said.contains("CREDENTIALS_DIRECTORY is not set; add LoadCredential=client_secret:/etc/mailgate/client_secret"),
        "{said}"
    );
    // What systemd does: the credential, readable by the service's user
    // alone, in a directory of its own.
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("client_secret"), "s3cr3t-from-credential\n").unwrap();
    std::fs::set_permissions(
        creds.join("client_secret"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    let out = run_mailgate(
        &cfg,
        &["check"],
        "",
        None,
        &[("CREDENTIALS_DIRECTORY", creds.as_path())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("s3cr3t"), "{}", text(&out));
}
