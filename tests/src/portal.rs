//! The real binary with its web portal on a free loopback port, against
//! the fake token endpoint and a scripted IMAP server; and the steps a
//! browser takes on its pages.

use crate::chrome::Browser;
use crate::client::LineClient;
use crate::fake::FakeServer;
use crate::harness::{Env, Running, USER};

/// A gateway with a portal, ready.
pub struct Portal {
    pub env: Env,
    pub imap: FakeServer,
    pub gateway: Running,
    /// `http://127.0.0.1:PORT/`.
    pub base: String,
}

impl Portal {
    /// The default: JSON logs, metrics, a short drain.
    pub async fn start() -> Portal {
        Self::with("metrics = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"", "", "").await
    }

    /// `extra_gateway` in `[gateway]`, `extra_provider` in the provider,
    /// `extra` after `[portal]` (more sections).
    pub async fn with(extra_gateway: &str, extra_provider: &str, extra: &str) -> Portal {
        let env = Env::new().await;
        let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
        let text = format!(
            "{}\n[portal]\naddress = \"127.0.0.1:0\"\n{extra}",
            env.config_text(
                &imap.url(false),
                &format!("log_format = \"json\"\n{extra_gateway}"),
                extra_provider,
                // A shared mailbox, for the account page's list.
                "shared = [\"info@example.test\"]"
            )
        );
        let config = env.write_config(&text);
        let gateway = Running::start(&config, "portal listening");
        let base = format!("http://{}/", gateway.address("portal listening", None));
        Portal {
            env,
            imap,
            gateway,
            base,
        }
    }

    pub fn imap(&self) -> std::net::SocketAddr {
        self.gateway.address("listening", Some("imap"))
    }

    pub async fn imap_login(&self, password: &str) -> String {
        let mut c = LineClient::greeted(self.imap()).await;
        c.login("a", USER, password).await
    }

    /// Whether the metrics have this exact line.
    pub async fn metric(&self, line: &str) -> bool {
        let addr = self
            .gateway
            .address("metrics on /metrics and /healthz", None);
        let body = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.lines().any(|l| l == line)
    }

    /// USER's token file, as bytes.
    pub fn token_file(&self) -> Option<Vec<u8>> {
        std::fs::read(
            self.env
                .state_dir()
                .join("tokens")
                .join(format!("{USER}.json")),
        )
        .ok()
    }
}

/// The address form, filled and sent: the browser goes to the provider and
/// comes back.
pub async fn sign_in(b: &Browser, base: &str, address: &str) {
    b.goto(base).await;
    b.expect_page("address").await;
    b.fill("#address", address).await;
    b.click("button[type=submit]").await;
}

/// The password page: `password` typed twice; the settings page follows.
pub async fn choose_password(b: &Browser, password: &str) {
    b.expect_page("password").await;
    b.fill("#password", password).await;
    b.fill("#confirm", password).await;
    b.click("button[type=submit]").await;
    b.expect_page("settings").await;
}
