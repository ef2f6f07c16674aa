//! `mailgate accounts`: every account's token state and backoff, as a table
//! or JSON.

use mailgate_config::{Config, UserPattern};

use crate::accounts::store::{TokenFile, now};

use super::common::{CliError, CliResult, open_store, out};

fn time(t: Option<u64>) -> String {
    match t {
        Some(s) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
        )
        .to_string(),
        None => "-".into(),
    }
}

/// "3 (next +0.5s)" for a throttled name, "-" otherwise. Entries older than
/// the backoff's memory (15 min) are over.
fn throttle(t: Option<&crate::accounts::backoff::Throttle>) -> String {
    match t {
        Some(t) if now().saturating_sub(t.last_failure) < 15 * 60 => {
            if t.delay_ms > 0 {
                format!("{} (next +{}s)", t.failures, t.delay_ms as f64 / 1000.0)
            } else {
                t.failures.to_string()
            }
        }
        _ => "-".into(),
    }
}

/// One row of `mailgate accounts`.
#[derive(Debug, serde::Serialize)]
struct AccountRow {
    user: String,
    provider: String,
    flow: String,
    /// `valid` (a live access token), `refresh_due` (refreshed at the next
    /// login), `needs_login` (the refresh token is dead: `mailgate login`),
    /// `none` (nothing stored).
    token: &'static str,
    /// Unix seconds.
    expires_at: Option<u64>,
    sealed_at: Option<u64>,
    last_refresh: Option<u64>,
    last_error: Option<String>,
    /// The sign-in does not allow sending through Microsoft Graph: sending
    /// waits for a new one.
    graph_refused: bool,
    /// The running gateway holds the account's key and refreshes it before
    /// it could lapse from disuse (`[notify] keep_alive`).
    kept_alive: bool,
    /// When the refresh token would lapse if nothing used it (Unix
    /// seconds; where the provider documents it).
    lapses_at: Option<u64>,
    /// The shared mailboxes (or `*@domain` patterns) it may open as
    /// `USER\\SHARED`.
    shared: Vec<String>,
    /// Failed logins of this name in the last 15 minutes, and the delay the
    /// next attempt waits (from the running gateway's `backoff.json`).
    backoff: Option<crate::accounts::backoff::Throttle>,
    in_configuration: bool,
}

impl AccountRow {
    fn new(
        cfg: &Config,
        user: String,
        provider: &str,
        f: Option<&TokenFile>,
        (backoff, kept): (
            &crate::accounts::backoff::Snapshot,
            &crate::accounts::keep_alive::Snapshot,
        ),
    ) -> AccountRow {
        let throttle = backoff
            .users
            .get(&user)
            .filter(|t| now().saturating_sub(t.last_failure) < 15 * 60)
            .cloned();
        let shared = cfg
            .find_account(&user)
            .map(|a| a.shared.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        AccountRow {
            in_configuration: cfg.find_account(&user).is_some() || user.starts_with("*@"),
            user,
            provider: provider.to_owned(),
            flow: cfg
                .provider(provider)
                .map(|p| p.flow.to_string())
                .unwrap_or_else(|| "-".into()),
            token: match f {
                None => "none",
                Some(f) if f.needs_authorization => "needs_login",
                Some(f) if f.expires_at.is_some_and(|e| e > now()) => "valid",
                Some(_) => "refresh_due",
            },
            expires_at: f.and_then(|f| f.expires_at),
            sealed_at: f.map(|f| f.sealed_at),
            last_refresh: f.and_then(|f| f.last_refresh),
            last_error: f.and_then(|f| f.last_error.clone()),
            graph_refused: f.is_some_and(|f| f.graph_refused),
            kept_alive: f.is_some_and(|f| kept.keeps(&f.user)),
            shared,
            lapses_at: f.and_then(|f| {
                let after =
                    crate::accounts::keep_alive::lapse_after(cfg.provider(provider)?.preset)?;
                Some(f.last_refresh.unwrap_or(f.sealed_at) + after.as_secs())
            }),
            backoff: throttle,
        }
    }

    fn cells(&self) -> [String; 9] {
        [
            if self.shared.is_empty() {
                self.user.clone()
            } else {
                format!("{} (shared: {})", self.user, self.shared.join(", "))
            },
            self.provider.clone(),
            self.flow.clone(),
            self.token.to_owned(),
            time(self.expires_at),
            time(self.last_refresh),
            throttle(self.backoff.as_ref()),
            match (self.kept_alive, self.lapses_at) {
                (true, _) => "yes".into(),
                (false, Some(at)) => format!("no (lapses {})", time(Some(at))),
                (false, None) if self.token == "none" => "-".into(),
                (false, None) => "no".into(),
            },
            match (&self.last_error, self.in_configuration) {
                (_, false) => "not in the configuration".into(),
                _ if self.graph_refused => format!(
                    "cannot send through Microsoft Graph: authorise again (mailgate login {})",
                    self.user
                ),
                (Some(e), true) => e.clone(),
                (None, true) => "-".into(),
            },
        ]
    }
}

pub(super) fn accounts(cfg: &Config, json: bool) -> CliResult {
    let runtime = super::common::runtime()?;
    let store = open_store(&runtime, cfg)?;
    let (files, errors) = runtime.block_on(store.list());
    let backoff =
        crate::accounts::backoff::read_snapshot(&cfg.gateway.state_dir).unwrap_or_default();
    let kept =
        crate::accounts::keep_alive::read_snapshot(&cfg.gateway.state_dir).unwrap_or_default();
    let snapshots = (&backoff, &kept);
    let mut rows = Vec::new();
    for a in &cfg.accounts {
        match &a.user {
            UserPattern::Exact(u) => {
                let f = files.iter().find(|f| &f.user == u);
                rows.push(AccountRow::new(cfg, u.clone(), &a.provider, f, snapshots));
            }
            UserPattern::Domain(_) => {
                rows.push(AccountRow::new(
                    cfg,
                    a.user.to_string(),
                    &a.provider,
                    None,
                    snapshots,
                ));
                for f in files.iter().filter(|f| {
                    a.user.matches(&f.user)
                        && cfg.find_account(&f.user).is_some_and(|b| b.user == a.user)
                }) {
                    rows.push(AccountRow::new(
                        cfg,
                        f.user.clone(),
                        &a.provider,
                        Some(f),
                        snapshots,
                    ));
                }
            }
        }
    }
    for f in files.iter().filter(|f| cfg.find_account(&f.user).is_none()) {
        rows.push(AccountRow::new(
            cfg,
            f.user.clone(),
            &f.provider,
            Some(f),
            snapshots,
        ));
    }
    let slowed: Vec<(&String, &crate::accounts::backoff::Throttle)> = backoff
        .addresses
        .iter()
        .filter(|(_, t)| throttle(Some(t)) != "-")
        .collect();
    for e in &errors {
        eprintln!("warning: {e}");
    }
    if json {
        let out = serde_json::json!({
            "accounts": rows,
            "slowed_addresses": slowed.iter().map(|(a, t)| serde_json::json!({"address": a, "backoff": t})).collect::<Vec<_>>(),
        });
        return out!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| CliError::Internal(e.to_string()))?
        );
    }
    let header = [
        "USER",
        "PROVIDER",
        "FLOW",
        "TOKEN",
        "EXPIRES",
        "LAST REFRESH",
        "BACKOFF",
        "KEPT ALIVE",
        "LAST ERROR",
    ];
    let cells: Vec<[String; 9]> = rows.iter().map(AccountRow::cells).collect();
    let mut widths = header.map(str::len);
    for r in &cells {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out!("{}", s.trim_end())
    };
    line(&header)?;
    for r in &cells {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    if !slowed.is_empty() {
        let list: Vec<String> = slowed
            .iter()
            .map(|(a, t)| format!("{a}: {}", throttle(Some(t))))
            .collect();
        out!("\nclient addresses with failed logins: {}", list.join(", "))?;
    }
    Ok(())
}
