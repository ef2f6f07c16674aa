//! What the gateway does in the background while it serves: warnings of
//! client certificates that expire, and the backoff state for `mailgate
//! accounts`.

use std::sync::Arc;
use std::time::Duration;

use mailgate_config::Config;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::context::Context;

/// Starts the work a serving gateway does beside its sessions (each until
/// `stop`).
pub fn spawn_all(ctx: &Arc<Context>, stop: &CancellationToken) {
    tokio::spawn(keep_alive(ctx.clone(), stop.clone()));
    tokio::spawn(publish_account_states(ctx.clone(), stop.clone()));
    tokio::spawn(publish_backoff(ctx.clone(), stop.clone()));
    tokio::spawn(watch_client_certificates(ctx.clone(), stop.clone()));
}

/// Logs a warning for each client certificate that has expired or expires
/// within 30 days: at start, then daily (a gateway runs for months), for
/// the configuration in use then.
pub async fn watch_client_certificates(ctx: Arc<Context>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(24 * 3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for w in certificate_warnings(&ctx.config(), std::time::SystemTime::now()) {
            warn!("{w}");
        }
    }
}

/// The expiry warnings of the configuration's client certificates.
pub fn certificate_warnings(config: &Config, now: std::time::SystemTime) -> Vec<String> {
    config
        .providers
        .values()
        .filter_map(|p| {
            let c = p.client_certificate.as_ref()?;
            Some(format!("provider {}: {}", p.name, c.expiry_warning(now)?))
        })
        .collect()
}

/// Counts the accounts in each state for `mailgate_accounts{state}` and
/// publishes the client certificates' expiry: at start, after each
/// account event of this instance, and every minute (the store is the
/// truth: other instances and the CLI change it too).
pub async fn publish_account_states(ctx: Arc<Context>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut events = ctx.accounts.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // Lagged or not, something changed: count again, once the
            // events of the next second are in (a busy gateway refreshes
            // often; the store is listed at most about once a second).
            r = events.recv() => {
                if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                while !matches!(
                    events.try_recv(),
                    Err(tokio::sync::broadcast::error::TryRecvError::Empty
                        | tokio::sync::broadcast::error::TryRecvError::Closed)
                ) {}
            }
            _ = stop.cancelled() => return,
        }
        let config = ctx.config();
        let now = std::time::SystemTime::now();
        let mut expiring = Vec::new();
        for p in config.providers.values() {
            if let Some(c) = &p.client_certificate {
                let at = c
                    .not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                ctx.metrics.set_credential_expiry(&p.name, at);
                if let Some(w) = c.expiry_warning(now) {
                    expiring.push(p.name.clone());
                    ctx.accounts
                        .announce_once(
                            &format!("notice:credential:{}", p.name),
                            Duration::from_secs(24 * 3600),
                            crate::accounts::AccountEvent::CredentialExpiring {
                                provider: p.name.clone(),
                                reason: format!("provider {}: {w}", p.name),
                            },
                        )
                        .await;
                }
            }
        }
        let (records, errors) = ctx.accounts.records().await;
        if let Some(e) = errors.first() {
            warn!(error = %e, unreadable = errors.len(), "some account records cannot be read for the account metrics");
        }
        let mut states = account_states(&config, &records).to_vec();
        let expiring_accounts = config
            .accounts
            .iter()
            .filter(|a| expiring.contains(&a.provider))
            .count() as i64;
        states.push(("credential_expiring", expiring_accounts));
        states.push(("throttled", ctx.accounts.graph_holds() as i64));
        ctx.metrics.set_accounts(&states);
    }
}

/// How many accounts are in each state: the records' (`ready`,
/// `needs_sign_in`), and `not_signed_in` for the configured accounts of
/// providers with user sign-ins that have no record.
pub fn account_states(
    config: &Config,
    records: &[crate::accounts::store::TokenFile],
) -> [(&'static str, i64); 3] {
    let needs = records
        .iter()
        .filter(|r| r.needs_authorization || r.graph_refused)
        .count() as i64;
    let never = config
        .accounts
        .iter()
        .filter(|a| {
            let mailgate_config::UserPattern::Exact(u) = &a.user else {
                return false;
            };
            let user_flows = config
                .provider(&a.provider)
                .is_some_and(|p| !p.is_app_only());
            user_flows && a.password_hash.is_none() && !records.iter().any(|r| &r.user == u)
        })
        .count() as i64;
    [
        ("ready", records.len() as i64 - needs),
        ("needs_sign_in", needs),
        ("not_signed_in", never),
    ]
}

/// Refreshes the accounts that would otherwise lapse from disuse
/// (`[notify] keep_alive`, see [`crate::accounts::keep_alive`]) and says
/// which it can keep alive in `state_dir/keep_alive.json`: every quarter
/// of `keep_alive` (at most hourly); an empty list when the gateway stops.
pub async fn keep_alive(ctx: Arc<Context>, stop: CancellationToken) {
    use crate::accounts::keep_alive::{SNAPSHOT_FILE, Snapshot};
    loop {
        let period = ctx
            .config()
            .keep_alive()
            .map_or(Duration::from_secs(3600), |k| {
                (k / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
            });
        let stopping = tokio::select! {
            _ = tokio::time::sleep(period) => false,
            _ = stop.cancelled() => true,
        };
        let mut snapshot = Snapshot {
            at: crate::accounts::store::now(),
            period_s: period.as_secs(),
            users: Vec::new(),
        };
        if !stopping && let Some(k) = ctx.config().keep_alive() {
            snapshot.users = ctx.accounts.keep_alive(k).await.in_memory;
        }
        let dir = ctx.config().gateway.state_dir.clone();
        if let Ok(body) = serde_json::to_vec(&snapshot) {
            let written = tokio::task::spawn_blocking(move || {
                crate::accounts::store::write_atomic(&dir, &dir.join(SNAPSHOT_FILE), &body)
            })
            .await;
            if let Ok(Err(e)) = written {
                warn!(error = %e, "cannot write the keep-alive state");
            }
        }
        if stopping {
            return;
        }
    }
}

/// Writes the wrong-password backoff state to `state_dir/backoff.json` (at
/// most once a second, only when it changed) so `mailgate accounts` can show
/// it; a last time when the gateway stops.
pub async fn publish_backoff(ctx: Arc<Context>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        if let Some(snap) = ctx.accounts.backoff_snapshot() {
            let dir = ctx.config().gateway.state_dir.clone();
            let Ok(body) = serde_json::to_vec(&snap) else {
                continue;
            };
            let written = tokio::task::spawn_blocking(move || {
                crate::accounts::store::write_atomic(
                    &dir,
                    &dir.join(crate::accounts::backoff::SNAPSHOT_FILE),
                    &body,
                )
            })
            .await;
            if let Ok(Err(e)) = written {
                warn!(error = %e, "cannot write the backoff state");
            }
        }
        if stopping {
            return;
        }
    }
}
