//! Account events for the administrator (`[notify]`, SPEC §5): each change
//! of an account's state — it needs a sign-in (with the reason), it is
//! ready again — is told once to the configured notifiers: a command run
//! with the event in `MAILGATE_*` variables, and a webhook that gets it as
//! JSON. Events come from the one place where accounts change
//! ([`crate::accounts::changes`]), so in a fleet the instance whose write
//! the store took is the one that tells; a login never waits for a
//! notifier.

mod event;
mod mail;
mod states;

pub use event::{Event, text};

pub use states::States;

use std::process::Stdio;
use std::time::Duration;

use mailgate_config::{Config, Notify};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::io::AsyncReadExt as _;
use tracing::{info, warn};

/// The longest output of the command kept for the log.
const MAX_OUTPUT: usize = 4096;

/// The waits before each retry of a notifier (the webhook's, the command's,
/// the mail's).
const WEBHOOK_RETRIES: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(8)];

/// The configured notifiers.
#[derive(Debug, Clone)]
pub struct Notifier {
    command: Option<Vec<std::path::PathBuf>>,
    timeout: Duration,
    webhook: Option<SecretString>,
    /// The webhook's body, when not mailgate's own.
    template: Option<String>,
    http: reqwest::Client,
    /// The portal's base URL, for sign-in links.
    portal: Option<url::Url>,
    /// `mail_from` and `admins`, when events are mailed.
    mail: Option<(String, Vec<String>)>,
    /// The gateway that mails them.
    ctx: Option<std::sync::Arc<crate::context::Context>>,
}

impl Notifier {
    /// The notifiers of `config`'s `[notify]` (`None` without one).
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Notifier>> {
        let Some(n) = &config.notify else {
            return Ok(None);
        };
        Ok(Some(Notifier {
            command: n.command.clone(),
            timeout: n.command_timeout,
            http: http_client(config, n)?,
            webhook: n.webhook.clone(),
            template: n.webhook_template.clone(),
            portal: config.portal.as_ref().map(|p| p.base_url(p.address)),
            mail: n.mail_from.clone().map(|f| (f, n.admins.clone())),
            ctx: None,
        }))
    }

    /// The notifiers, mailing through the gateway of `ctx`.
    pub fn with_context(mut self, ctx: std::sync::Arc<crate::context::Context>) -> Notifier {
        self.ctx = Some(ctx);
        self
    }

    /// Whether events are mailed (which needs a gateway: [`Notifier::with_context`]).
    pub fn mails(&self) -> bool {
        self.mail.is_some()
    }

    /// The link that lets `user` sign in again (empty without a portal).
    pub fn sign_in_url(&self, user: &str) -> String {
        self.portal.as_ref().map_or_else(String::new, |base| {
            let mut link = base.clone();
            link.query_pairs_mut().append_pair("address", user);
            link.to_string()
        })
    }

    /// Tells `event` to every notifier; what failed, if anything.
    pub async fn tell(&self, event: &Event) -> Result<(), String> {
        let mut failed = Vec::new();
        if let Some(c) = &self.command
            && let Err(e) = retried("command", || self.run(c, event)).await
        {
            failed.push(format!("command: {e}"));
        }
        if let Some(w) = &self.webhook
            && let Err(e) = self.post(w, event).await
        {
            failed.push(format!("webhook: {e}"));
        }
        if let Some((from, admins)) = &self.mail {
            let sent = match &self.ctx {
                Some(ctx) => retried("mail", || mail::send(ctx, from, admins, event)).await,
                None => Err("no gateway to send it from".into()),
            };
            match sent {
                Ok(()) => {
                    info!(event = event.kind, user = %event.user, %from, "account event mailed")
                }
                Err(e) => failed.push(format!("mail from {from}: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    async fn run(&self, command: &[std::path::PathBuf], e: &Event) -> Result<(), String> {
        let Some((program, args)) = command.split_first() else {
            return Ok(());
        };
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env("MAILGATE_EVENT", e.kind)
            .env("MAILGATE_USER", &e.user)
            .env("MAILGATE_REASON", &e.reason)
            .env("MAILGATE_SIGN_IN_URL", &e.sign_in_url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| format!("cannot run {}: {err}", program.display()))?;
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let read = async {
            let (mut o, mut r) = (Vec::new(), Vec::new());
            if let Some(s) = out.as_mut() {
                let _ = s.take(MAX_OUTPUT as u64).read_to_end(&mut o).await;
            }
            if let Some(s) = err.as_mut() {
                let _ = s.take(MAX_OUTPUT as u64).read_to_end(&mut r).await;
            }
            let status = child.wait().await;
            (status, o, r)
        };
        let (status, stdout, stderr) = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| format!("did not finish within {:?}; killed", self.timeout))?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
        let status = status.map_err(|err| err.to_string())?;
        info!(
            program = %program.display(),
            event = e.kind,
            user = %e.user,
            %status,
            stdout = %text(&stdout),
            stderr = %text(&stderr),
            "notify command ran"
        );
        if status.success() {
            Ok(())
        } else {
            Err(format!("{} ended with {status}", program.display()))
        }
    }

    async fn post(&self, url: &SecretString, e: &Event) -> Result<(), String> {
        let body = match &self.template {
            Some(t) => fill(t, e),
            None => serde_json::json!({
                "event": e.kind,
                "user": e.user,
                "reason": e.reason,
                "sign_in_url": e.sign_in_url,
                "text": text(e),
            })
            .to_string(),
        };
        let mut last = String::new();
        for wait in std::iter::once(Duration::ZERO).chain(WEBHOOK_RETRIES) {
            tokio::time::sleep(wait).await;
            let sent = self
                .http
                .post(url.expose_secret())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                // A refusal that a retry cannot change.
                Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                    return Err(format!("the webhook answered {}", r.status()));
                }
                Ok(r) => last = format!("the webhook answered {}", r.status()),
                // The error's text may hold the URL, a secret: its kind only.
                Err(err) if err.is_timeout() => last = "the webhook did not answer in time".into(),
                Err(_) => last = "the webhook cannot be reached".into(),
            }
        }
        Err(format!(
            "{last} (tried {} times)",
            WEBHOOK_RETRIES.len() + 1
        ))
    }
}

/// Runs `attempt` until it succeeds, at most [`WEBHOOK_RETRIES`] more
/// times with those waits (a command or a mail server that fails now may
/// not a few seconds later); the last error.
async fn retried<F, Fut>(what: &str, attempt: F) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut last = String::new();
    for wait in std::iter::once(Duration::ZERO).chain(WEBHOOK_RETRIES) {
        tokio::time::sleep(wait).await;
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                warn!(notifier = what, error = %e, "a notifier failed; trying again");
                last = e;
            }
        }
    }
    Err(format!(
        "{last} (tried {} times)",
        WEBHOOK_RETRIES.len() + 1
    ))
}

/// `template` with the event's values in place of its placeholders, each
/// escaped as the inside of a JSON string (the template puts the quotes).
fn fill(template: &str, e: &Event) -> String {
    let escaped = |s: &str| {
        let quoted = serde_json::Value::String(s.to_owned()).to_string();
        quoted[1..quoted.len() - 1].to_owned()
    };
    let values = [
        ("{event}", e.kind.to_owned()),
        ("{user}", e.user.clone()),
        ("{reason}", e.reason.clone()),
        ("{sign_in_url}", e.sign_in_url.clone()),
        ("{text}", text(e)),
    ];
    // One pass: a value that holds a placeholder's name stays as it is.
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match values.iter().find(|(k, _)| rest.starts_with(k)) {
            Some((k, v)) => {
                out.push_str(&escaped(v));
                rest = &rest[k.len()..];
            }
            None => {
                out.push('{');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The webhook's client: no redirects, a timeout, through the gateway's
/// outbound proxy unless `no_proxy` names the webhook's host.
fn http_client(config: &Config, n: &Notify) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("mailgate/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    let host = n
        .webhook
        .as_ref()
        .and_then(|w| url::Url::parse(w.expose_secret()).ok())
        .and_then(|u| u.host_str().map(str::to_owned));
    if let (Some(p), Some(host)) = (&config.gateway.proxy, host)
        && !config.gateway.no_proxy.matches(&host)
    {
        builder = builder.proxy(reqwest::Proxy::all(
            p.url_with_credentials().expose_secret(),
        )?);
    }
    Ok(builder.build()?)
}

/// Tells the account events of `accounts` to `notifier` until the process
/// ends: changes of state only ([`States`]), one after another (a failing
/// notifier is logged and the next event goes on).
pub async fn run(
    mut events: tokio::sync::broadcast::Receiver<crate::accounts::AccountEvent>,
    notifier: Notifier,
) {
    let mut states = States::default();
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "the notifier fell behind; some account events were not told"
                );
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some((kind, user, reason)) = states.on(&event) else {
            continue;
        };
        let e = Event {
            kind,
            sign_in_url: notifier.sign_in_url(&user),
            user,
            reason,
        };
        match notifier.tell(&e).await {
            Ok(()) => info!(event = e.kind, user = %e.user, "account event told"),
            Err(why) => {
                warn!(event = e.kind, user = %e.user, error = %why, "account event not told")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_once_and_stay_json() {
        let e = Event {
            kind: "needs_sign_in",
            user: "a@x.test".into(),
            reason: "said \"{user}\"\nnewline".into(),
            sign_in_url: String::new(),
        };
        let body = fill(
            r#"{"title": "mailgate {event}", "message": "{reason}"}"#,
            &e,
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["title"], "mailgate needs_sign_in");
        assert_eq!(v["message"], "said \"{user}\"\nnewline");
    }
}
