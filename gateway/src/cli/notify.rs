//! `mailgate notify test USER`.

use mailgate_config::Config;

use super::common::{CliError, CliResult, out, runtime};

/// Tells a `test` event for `user` to every notifier of `[notify]`; mail
/// goes out through a gateway of this process (so only from an app-only
/// `mail_from`: no other account's key is in this process's memory).
pub(super) fn test(cfg: &Config, user: &str) -> CliResult {
    let Some(n) =
        crate::notify::Notifier::from_config(cfg).map_err(|e| CliError::User(e.to_string()))?
    else {
        return Err(CliError::User(
            "the configuration has no [notify] section".into(),
        ));
    };
    let user = user.trim().to_lowercase();
    let event = crate::notify::Event {
        kind: "test",
        reason: "a test of mailgate's notifications".into(),
        sign_in_url: n.sign_in_url(&user),
        user,
    };
    let told = runtime()?.block_on(async {
        let gateway = if n.mails() {
            Some(crate::doctor::checks_gateway(cfg).await?)
        } else {
            None
        };
        let n = match &gateway {
            Some(g) => n.with_context(g.context().clone()),
            None => n,
        };
        let told = n.tell(&event).await;
        if let Some(g) = gateway {
            g.shutdown().await;
        }
        anyhow::Ok(told)
    });
    match told {
        Ok(Ok(())) => out!(
            "the test event for {} was told to every notifier",
            event.user
        ),
        Ok(Err(e)) => Err(CliError::User(format!("a notifier failed: {e}"))),
        Err(e) => Err(CliError::User(format!(
            "cannot start a gateway to mail from: {e:#}"
        ))),
    }
}
