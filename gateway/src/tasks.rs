//! What the gateway does in the background while it serves: warnings of
//! client certificates that expire, and the backoff state for `mailgate
//! accounts`.

use std::sync::Arc;
use std::time::Duration;

use mailgate_config::Config;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::context::Context;

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
