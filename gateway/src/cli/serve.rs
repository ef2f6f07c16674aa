//! `mailgate run`: the runtime, the descriptor limit and the signal loop.

use std::sync::Arc;

use mailgate_config::Config;

use super::common::{CliError, CliResult, permission_warnings};

/// Raises the soft descriptor limit to the hard one (often 1,024 against
/// 500,000+): each relayed session holds two descriptors. An unset
/// `max_connections` is sized from the limit (see
/// `Gateway::max_connections_for`); a configured one that the limit cannot
/// hold is warned about.
fn raise_fd_limit(configured: Option<usize>) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let sessions = limit.saturating_sub(64) / 2;
            if let Some(max_connections) = configured
                && sessions < max_connections as u64
            {
                tracing::warn!(
                    limit,
                    max_connections,
                    "the descriptor limit holds only about {sessions} sessions (two descriptors each); raise it (LimitNOFILE= in the unit, ulimit -n) or lower max_connections"
                );
            } else {
                tracing::debug!(limit, "descriptor limit");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the descriptor limit"),
    }
}

pub(super) async fn serve(cfg: Config) -> CliResult {
    use tokio::signal::unix::{SignalKind, signal};
    raise_fd_limit(cfg.gateway.max_connections);
    for w in permission_warnings(&cfg).into_iter().chain(cfg.warnings()) {
        tracing::warn!("{w}");
    }
    let gateway = crate::server::start(Arc::new(cfg))
        .await
        .map_err(|e| CliError::User(format!("{e:#}")))?;
    let sig = |k| {
        signal(k).map_err(|e| CliError::Internal(format!("cannot install a signal handler: {e}")))
    };
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut hup = sig(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration and certificates");
                if let Err(errs) = gateway.reload().await {
                    for e in &errs.0 {
                        tracing::error!(error = %e, "configuration not reloaded");
                    }
                }
            }
        }
    }
    tracing::info!("shutting down: no new connections; open sessions may finish");
    gateway.shutdown().await;
    Ok(())
}
