//! One table of login scenarios, run for each protocol the gateway serves
//! (IMAP, SMTP, POP3) against the protocol's scripted fake upstream: the
//! same policy must give each protocol's own exact reply, and the upstream
//! must see exactly the logins the scenario implies.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use mailgate_config::Protocol;
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, USER, logs, start, unused_port};

/// What a scenario does before the login, and what the login is.
#[derive(Debug, Clone, Copy)]
enum Setup {
    /// A sealed token; the right password.
    Good,
    /// A sealed token; a wrong password.
    WrongPassword,
    /// A name no account matches.
    UnknownUser,
    /// The upstream rejects the access token the gateway holds: one
    /// refresh, one retry.
    TokenRejected,
    /// The upstream's port has nothing listening.
    Unreachable,
}

/// How the login must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    LoggedIn,
    Refused,
    Unavailable,
}

/// (name, setup, outcome, upstream logins that succeed, that fail,
/// token refreshes at the fake provider). The sealed token holds only a
/// refresh token, so a first login refreshes once (also when the
/// upstream then cannot be reached); a wrong password reaches neither.
const SCENARIOS: &[(&str, Setup, Outcome, usize, usize, usize)] = &[
    ("good password", Setup::Good, Outcome::LoggedIn, 1, 0, 1),
    (
        "wrong password",
        Setup::WrongPassword,
        Outcome::Refused,
        0,
        0,
        0,
    ),
    (
        "unknown user",
        Setup::UnknownUser,
        Outcome::Refused,
        0,
        0,
        0,
    ),
    // After a first login (1 ok, 1 refresh) the provider forgets the
    // access token: the upstream refuses it once, one refresh, one retry.
    (
        "token rejected upstream",
        Setup::TokenRejected,
        Outcome::LoggedIn,
        2,
        1,
        2,
    ),
    (
        "upstream unreachable",
        Setup::Unreachable,
        Outcome::Unavailable,
        0,
        0,
        1,
    ),
];

/// Each protocol's client side of a login, and its replies.
#[derive(Debug, Clone, Copy)]
enum Dialect {
    Imap,
    Smtp,
    Pop3,
}

impl Dialect {
    const ALL: [Dialect; 3] = [Dialect::Imap, Dialect::Smtp, Dialect::Pop3];

    fn protocol(self) -> Protocol {
        match self {
            Dialect::Imap => Protocol::Imap,
            Dialect::Smtp => Protocol::Smtp,
            Dialect::Pop3 => Protocol::Pop3,
        }
    }

    async fn fake(self, env: &Env) -> FakeServer {
        let (ca, oauth) = (&env.ca, env.oauth.clone());
        match self {
            Dialect::Imap => FakeServer::start(ca, oauth, Default::default()).await,
            Dialect::Smtp => FakeServer::smtp(ca, oauth, Default::default()).await,
            Dialect::Pop3 => FakeServer::pop3(ca, oauth, Default::default()).await,
        }
    }

    /// The upstream URL of the fake, or of a port nothing listens on.
    fn url(self, fake: &FakeServer, unreachable: bool) -> String {
        if !unreachable {
            return fake.url(false);
        }
        let scheme = match self {
            Dialect::Imap => "imaps",
            Dialect::Smtp => "smtps",
            Dialect::Pop3 => "pop3s",
        };
        format!("{scheme}://127.0.0.1:{}", unused_port())
    }

    /// Connects, reads the greeting (and for SMTP says EHLO), logs in and
    /// returns the reply's first line.
    async fn log_in(self, g: &mailgate::Gateway, user: &str, password: &str) -> String {
        let mut c = LineClient::connect(g.address(self.protocol()).unwrap()).await;
        let greeting = c.line().await;
        match self {
            Dialect::Imap => {
                assert!(greeting.starts_with("* OK"), "{greeting}");
                c.login("a", user, password)
                    .await
                    .lines()
                    .last()
                    .unwrap()
                    .to_owned()
            }
            Dialect::Smtp => {
                assert!(greeting.starts_with("220 "), "{greeting}");
                c.send("EHLO client.test\r\n").await;
                while !c.line().await.starts_with("250 ") {}
                let plain = base64::engine::general_purpose::STANDARD
                    .encode(format!("\0{user}\0{password}"));
                c.send(format!("AUTH PLAIN {plain}\r\n")).await;
                c.line().await.trim_end().to_owned()
            }
            Dialect::Pop3 => {
                assert!(greeting.starts_with("+OK"), "{greeting}");
                c.send(format!("USER {user}\r\n")).await;
                assert!(c.line().await.starts_with("+OK"));
                c.send(format!("PASS {password}\r\n")).await;
                c.line().await.trim_end().to_owned()
            }
        }
    }

    /// The start of the reply each outcome must give, exactly.
    fn reply(self, o: Outcome) -> &'static str {
        match (self, o) {
            (Dialect::Imap, Outcome::LoggedIn) => "a OK ",
            (Dialect::Imap, Outcome::Refused) => "a NO [AUTHENTICATIONFAILED] Invalid credentials",
            (Dialect::Imap, Outcome::Unavailable) => {
                "a NO [UNAVAILABLE] The mail server cannot be reached now"
            }
            (Dialect::Smtp, Outcome::LoggedIn) => "235 2.7.0 Authentication successful",
            (Dialect::Smtp, Outcome::Refused) => "535 5.7.8 Invalid credentials",
            (Dialect::Smtp, Outcome::Unavailable) => {
                "454 4.7.0 The mail server cannot be reached now"
            }
            (Dialect::Pop3, Outcome::LoggedIn) => "+OK Logged in",
            (Dialect::Pop3, Outcome::Refused) => "-ERR [AUTH] Invalid credentials",
            (Dialect::Pop3, Outcome::Unavailable) => {
                "-ERR [SYS/TEMP] The mail server cannot be reached now"
            }
        }
    }
}

async fn run(d: Dialect, setup: Setup) -> (String, FakeServer, Env) {
    logs();
    let env = Env::new().await;
    let fake = d.fake(&env).await;
    env.seal_new_user_token();
    let url = d.url(&fake, matches!(setup, Setup::Unreachable));
    let text = env.config_for(&[(d.protocol(), &url)], "", "", "");
    let g = start(env.load(&text)).await;
    // A rejection needs an access token the gateway holds and the
    // provider has forgotten.
    if matches!(setup, Setup::TokenRejected) {
        let first = d.log_in(&g, USER, PASSWORD).await;
        assert!(first.starts_with(d.reply(Outcome::LoggedIn)), "{first}");
        env.oauth.revoke_access_tokens();
    }
    let (user, password) = match setup {
        Setup::WrongPassword => (USER, "not the password"),
        Setup::UnknownUser => ("nobody@example.test", PASSWORD),
        _ => (USER, PASSWORD),
    };
    let reply = d.log_in(&g, user, password).await;
    g.shutdown().await;
    (reply, fake, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_in_every_protocol() {
    for d in Dialect::ALL {
        for &(name, setup, outcome, ok, failed, refreshes) in SCENARIOS {
            let (reply, fake, env) = run(d, setup).await;
            let want = d.reply(outcome);
            assert!(
                reply.starts_with(want),
                "{d:?}, {name}: {reply:?} does not start with {want:?}"
            );
            assert_eq!(
                (fake.successful_logins(), fake.failed_logins()),
                (ok, failed),
                "{d:?}, {name}: upstream logins (ok, failed)"
            );
            assert_eq!(
                env.oauth.refresh_count(),
                refreshes,
                "{d:?}, {name}: token refreshes"
            );
            assert_eq!(fake.plaintext_auth(), 0, "{d:?}, {name}: a login in clear");
        }
    }
}
