//! `[notify]`.

use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::{Errors, duration};
use crate::notify::{DEFAULT_COMMAND_TIMEOUT, DEFAULT_KEEP_ALIVE, Notify};
use crate::raw::RawNotify;
use crate::relative_to;

pub(super) fn notify(file: &Path, n: RawNotify, errs: &mut Errors<'_>) -> Notify {
    let webhook_file = n.webhook_file.as_ref().map(|f| relative_to(file, f));
    let command = n.command.and_then(|c| {
        let Some(program) = c.first() else {
            errs.push("notify.command", "is empty; give the program and its arguments, e.g. [\"/usr/local/bin/notify\"]");
            return None;
        };
        if !Path::new(program).is_absolute() {
            errs.push(
                "notify.command",
                format!("`{program}` is not an absolute path: the program is run without a shell or a search path"),
            );
            return None;
        }
        Some(c.into_iter().map(PathBuf::from).collect())
    });
    let webhook = match (n.webhook, n.webhook_file) {
        (Some(_), Some(_)) => {
            errs.push("notify.webhook", "set webhook or webhook_file, not both");
            None
        }
        (Some(w), None) => Some(("notify.webhook", w)),
        (None, Some(f)) => {
            let path = relative_to(file, &f);
            match std::fs::read_to_string(&path) {
                Ok(w) if !w.trim().is_empty() => Some(("notify.webhook_file", w.trim().to_owned())),
                Ok(_) => {
                    errs.push(
                        "notify.webhook_file",
                        format!("{} is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    errs.push(
                        "notify.webhook_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => None,
    };
    let webhook = webhook.and_then(|(key, w)| match url::Url::parse(&w) {
        Ok(u) if u.scheme() == "https" => Some(SecretString::from(w)),
        Ok(u)
            if u.scheme() == "http"
                && u.host_str().is_some_and(|h| {
                    h == "localhost"
                        || h.trim_matches(['[', ']'])
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }) =>
        {
            Some(SecretString::from(w))
        }
        Ok(_) => {
            errs.push(
                key,
                "must be an https:// URL (http:// only to this machine): events name accounts",
            );
            None
        }
        // The URL is a secret: the message does not repeat it.
        Err(e) => {
            errs.push(key, format!("is not a URL ({e})"));
            None
        }
    });
    Notify {
        command,
        command_timeout: duration(
            errs,
            "notify.command_timeout",
            n.command_timeout,
            DEFAULT_COMMAND_TIMEOUT,
        ),
        webhook,
        webhook_template: n.webhook_template.and_then(|t| {
            // Checked with every placeholder filled: it must be JSON.
            let probe = ["{event}", "{user}", "{reason}", "{sign_in_url}", "{text}"]
                .iter()
                .fold(t.clone(), |acc, p| acc.replace(p, "x"));
            match serde_json::from_str::<serde_json::Value>(&probe) {
                Ok(_) => Some(t),
                Err(e) => {
                    errs.push(
                        "notify.webhook_template",
                        format!("is not JSON once its placeholders are filled in ({e}); write e.g. {{\"message\": \"{{text}}\", \"title\": \"mailgate\"}}"),
                    );
                    None
                }
            }
        }),
        webhook_file,
        mail_from: n.mail_from.map(|m| m.trim().to_lowercase()),
        admins: n
            .admins
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let a = a.trim().to_owned();
                let plain = a.split_once('@').is_some_and(|(l, d)| {
                    !l.is_empty()
                        && !d.is_empty()
                        && !a.contains(|c: char| c.is_whitespace() || "<>,;:\"()\\".contains(c))
                });
                if plain {
                    Some(a)
                } else {
                    errs.push(
                        format!("notify.admins[{i}]"),
                        format!("`{a}` is not a plain address (local@domain)"),
                    );
                    None
                }
            })
            .collect(),
        keep_alive: match n.keep_alive {
            Some(k) if k.trim().eq_ignore_ascii_case("off") => None,
            k => Some(duration(errs, "notify.keep_alive", k, DEFAULT_KEEP_ALIVE)),
        },
    }
}
