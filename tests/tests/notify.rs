//! Account events to `[notify]`: a command run with the event in its
//! environment and a webhook that gets it as JSON (retried when it fails),
//! once per change of state, never per login; `mailgate notify test USER`.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use mailgate_tests::client::LineClient;
use mailgate_tests::harness::{Env, PASSWORD, USER, imap_addr, logs, run_mailgate, start};
use mailgate_tests::imap_server::{FakeImap, Options};
use mailgate_tests::oauth::Mode;

/// A webhook on loopback that answers `503` to its first request and
/// `200` after, and keeps the JSON it was given.
#[derive(Clone, Default)]
struct Hook {
    got: Arc<Mutex<Vec<serde_json::Value>>>,
    calls: Arc<Mutex<usize>>,
}

async fn hook(State(h): State<Hook>, body: Bytes) -> StatusCode {
    let first = {
        let mut c = h.calls.lock().unwrap();
        *c += 1;
        *c == 1
    };
    if first {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    h.got
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    StatusCode::OK
}

async fn start_hook() -> (Hook, String) {
    let h = Hook::default();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(h.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (h, format!("http://{addr}/hook"))
}

/// Waits until `check` holds (at most 20 s).
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_token_is_told_once_to_the_command_and_the_webhook() {
    logs();
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let (h, url) = start_hook().await;
    let told = env.path().join("told.txt");
    env.seal_new_user_token();
    let text = format!(
        // The command fails its first run (it is tried again).
        "{}\n[notify]\ncommand = [\"/bin/sh\", \"-c\", \"[ -f {flag} ] || {{ touch {flag}; exit 1; }}; env | grep ^MAILGATE_ | sort >> {told}; echo ran\"]\nwebhook = \"{url}\"\n",
        env.config_text(&imap.url(false), "metrics = \"127.0.0.1:0\"", "", ""),
        told = told.display(),
        flag = env.path().join("failed-once").display()
    );
    let path = env.write_config(&text);
    let g = start(env.load(&text)).await;

    // The provider ended the grant: the first login finds out.
    env.oauth.set_mode(Mode::InvalidGrant);
    for tag in ["a", "b", "c"] {
        let mut c = LineClient::greeted(imap_addr(&g)).await;
        let r = c.login(tag, USER, PASSWORD).await;
        assert!(r.starts_with(&format!("{tag} NO")), "{r}");
    }
    eventually("the webhook was told (after one retry)", || {
        !h.got.lock().unwrap().is_empty()
    })
    .await;
    let lines = std::fs::read_to_string(&told).unwrap();
    assert!(
        env.path().join("failed-once").exists(),
        "the command's first run failed; the event came with the retry"
    );
    assert!(lines.contains("MAILGATE_EVENT=needs_sign_in"), "{lines}");
    assert!(lines.contains(&format!("MAILGATE_USER={USER}")), "{lines}");
    assert!(lines.contains("MAILGATE_REASON="), "{lines}");
    let got = h.got.lock().unwrap().clone();
    assert_eq!(got[0]["event"], "needs_sign_in");
    assert_eq!(got[0]["user"], USER);
    assert!(
        got[0]["text"]
            .as_str()
            .unwrap()
            .contains(&format!("mailgate login {USER}")),
        "{got:?}"
    );
    assert_eq!(*h.calls.lock().unwrap(), 2, "one failure, one retry");
    // Three logins, one change: told once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = std::fs::read_to_string(&told).unwrap();
    assert_eq!(lines.matches("MAILGATE_EVENT=").count(), 1, "{lines}");
    assert_eq!(h.got.lock().unwrap().len(), 1);

    // The account metric follows the store: one account needs a sign-in.
    let url = format!("http://{}/metrics", g.metrics_address().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if m.contains("mailgate_accounts{state=\"needs_sign_in\"} 1")
            && m.contains("mailgate_accounts{state=\"ready\"} 0")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `mailgate notify test USER` reaches both.
    let out = run_mailgate(&path, &["notify", "test", USER], "", None, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = std::fs::read_to_string(&told).unwrap();
    assert!(lines.contains("MAILGATE_EVENT=test"), "{lines}");
    assert_eq!(h.got.lock().unwrap()[1]["event"], "test");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_is_reported_by_notify_test() {
    let env = Env::new().await;
    let text = format!(
        "{}\n[notify]\ncommand = [\"/bin/false\"]\n",
        env.config_text("imap://127.0.0.1:9", "", "", "")
    );
    let path = env.write_config(&text);
    let out = run_mailgate(&path, &["check"], "", None, &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(
            "notify: command=[\"/bin/false\"] command_timeout=30s webhook=none keep_alive=14days mail_from=none"
        ),
        "{said}"
    );
    let out = run_mailgate(&path, &["notify", "test", USER], "", None, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a notifier failed: command") && err.contains("tried 3 times"),
        "{err}"
    );

    // A webhook template (Gotify's and ntfy's JSON): the event's values,
    // escaped, in the administrator's shape.
    let (h, url) = start_hook().await;
    let templated = format!(
        "{}\n[notify]\nwebhook = \"{url}\"\nwebhook_template = '{{\"title\": \"mailgate {{event}}\", \"message\": \"{{text}}\", \"priority\": 5}}'\n",
        env.config_text("imap://127.0.0.1:9", "", "", ""),
    );
    let path = env.write_config(&templated);
    let out = run_mailgate(&path, &["notify", "test", USER], "", None, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = h.got.lock().unwrap().clone();
    assert_eq!(got[0]["title"], "mailgate test", "{got:?}");
    assert_eq!(got[0]["priority"], 5);
    assert!(
        got[0]["message"].as_str().unwrap().contains(USER),
        "{got:?}"
    );
    let bad = templated.replace("\"priority\": 5", "priority");
    let path = env.write_config(&bad);
    let out = run_mailgate(&path, &["check"], "", None, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("notify.webhook_template"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A webhook URL in a file that every user can read: check says so
    // (the URL usually carries a token), without printing it.
    let hook = env.path().join("webhook.url");
    std::fs::write(&hook, "https://hooks.example.com/T0K3N\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let with_file = format!(
        "{}\n[notify]\nwebhook_file = \"{}\"\n",
        env.config_text("imap://127.0.0.1:9", "", "", ""),
        hook.display()
    );
    let path = env.write_config(&with_file);
    let out = run_mailgate(&path, &["check"], "", None, &[]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("(notify.webhook_file) is readable by every user"),
        "{said}"
    );
    assert!(
        said.contains("webhook=(set)") && !said.contains("T0K3N"),
        "{said}"
    );

    // A relative program and an http:// webhook off this machine are
    // refused by the configuration check.
    let bad = format!(
        "{}\n[notify]\ncommand = [\"notify\"]\nwebhook = \"http://hooks.example.com/x\"\n",
        env.config_text("imap://127.0.0.1:9", "", "", "")
    );
    let path = env.write_config(&bad);
    let out = run_mailgate(&path, &["check"], "", None, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("notify.command") && err.contains("absolute path"),
        "{err}"
    );
    assert!(
        err.contains("notify.webhook") && err.contains("https://"),
        "{err}"
    );
}

/// `keep_alive`: an account whose key is in memory is refreshed by the
/// gateway once its last refresh is older than `keep_alive`, with no
/// login; one whose key is not (nobody logged in since the start) is not,
/// and `mailgate accounts` says which is which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_refreshes_accounts_whose_key_is_in_memory() {
    logs();
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    env.seal_new_user_token();
    let bob = "bob@example.test";
    let bob_rt = env.oauth.issue_refresh_token(bob);
    env.seal(
        bob,
        "bob's password",
        mailgate::accounts::store::Tokens::refreshable(bob_rt.clone().into()),
    );
    let text = format!(
        "{}\n[[account]]\nuser = \"{bob}\"\nprovider = \"test\"\n\n[notify]\nkeep_alive = \"2s\"\n",
        env.config_text(&imap.url(false), "", "", "")
    );
    let path = env.write_config(&text);
    let g = start(env.load(&text)).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("a", USER, PASSWORD).await;
    assert!(r.starts_with("a OK"), "{r}");
    drop(c);
    let after_login = env.oauth.refresh_count();
    let first = env.token_file(USER).last_refresh.unwrap();
    eventually("the idle account was refreshed by the keep-alive", || {
        env.oauth.refresh_count() > after_login
    })
    .await;
    eventually("the new tokens were sealed", || {
        env.token_file(USER).last_refresh.unwrap() > first
    })
    .await;
    assert!(
        env.oauth.refresh_token_valid(&bob_rt),
        "bob's token untouched"
    );
    assert!(env.token_file(bob).last_refresh.is_none());
    eventually("the keep-alive state is written", || {
        let out = run_mailgate(&path, &["accounts", "--json"], "", None, &[]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let row = |u: &str| {
            json["accounts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["user"] == u)
                .cloned()
                .unwrap_or_default()
        };
        row(USER)["kept_alive"] == true && row(bob)["kept_alive"] == false
    })
    .await;
    g.shutdown().await;
}

/// `mail_from`: a dead account's user (and `admins`) get a short mail, sent
/// as the gateway's own app-only account over its provider's SMTP server
/// with XOAUTH2; `mailgate notify test` mails the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_account_is_mailed_to_its_user_and_the_admins() {
    logs();
    let env = Env::new().await;
    let imap = FakeImap::start(&env.ca, env.oauth.clone(), Options::default()).await;
    let smtp = mailgate_tests::fake::FakeServer::smtp(
        &env.ca,
        env.oauth.clone(),
        mailgate_tests::smtp_server::Options::default(),
    )
    .await;
    env.oauth.set_client_secret(Some("app-secret"));
    let bob = "bob@example.test";
    env.seal(
        bob,
        "bob's password",
        mailgate::accounts::store::Tokens::refreshable(
            "rt-that-the-provider-forgot".to_owned().into(),
        ),
    );
    let text = format!(
        "{}\n[[account]]\nuser = \"{bob}\"\nprovider = \"test\"\n\n\
[provider.app]\npreset = \"custom\"\nclient_id = \"{id}\"\nclient_secret = \"app-secret\"\nflow = \"client_credentials\"\ntoken_url = \"{token}\"\nscopes = [\"mail\"]\nsmtp = \"{smtp}\"\nca_file = \"test-ca.pem\"\n\n\
[[account]]\nuser = \"mailgate@example.test\"\nprovider = \"app\"\npassword_hash = \"{hash}\"\n\n\
[notify]\nmail_from = \"mailgate@example.test\"\nadmins = [\"it@example.test\"]\n",
        // The fake token endpoint asks every client for the secret.
        env.config_text(&imap.url(false), "", "client_secret = \"app-secret\"", ""),
        id = mailgate_tests::oauth::CLIENT_ID,
        token = env.oauth.token_url(),
        smtp = smtp.url(false),
        hash = mailgate_tests::harness::password_hash("unused app password"),
    );
    let path = env.write_config(&text);
    let g = start(env.load(&text)).await;
    let mut c = LineClient::greeted(imap_addr(&g)).await;
    let r = c.login("a", bob, "bob's password").await;
    assert!(r.starts_with("a NO"), "{r}");
    eventually("the notice was mailed", || !smtp.messages().is_empty()).await;
    let m = String::from_utf8(smtp.messages()[0].clone()).unwrap();
    assert!(m.contains("From: <mailgate@example.test>"), "{m}");
    assert!(
        m.contains(&format!("To: <{bob}>, <it@example.test>")),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "Subject: Sign in again: mail for {bob} has stopped"
        )),
        "{m}"
    );
    assert!(m.contains(&format!("mailgate login {bob}")), "{m}");
    drop(c);
    g.shutdown().await;

    let out = run_mailgate(&path, &["notify", "test", bob], "", None, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = smtp.messages();
    let last = String::from_utf8(all.last().unwrap().clone()).unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        last.contains("Subject: Test of mailgate's notices"),
        "{last}"
    );
}
