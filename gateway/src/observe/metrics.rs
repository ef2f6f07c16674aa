//! Prometheus metrics (`prometheus-client`), served with `/healthz` on
//! `[gateway] metrics`. One registry per gateway, no globals.
//!
//! | Series | Type | Labels |
//! |---|---|---|
//! | `mailgate_connections_accepted_total` | counter | `protocol` |
//! | `mailgate_connections` | gauge | `protocol`, `state` (`preauth`, `relaying`) |
//! | `mailgate_logins_total` | counter | `protocol`, `result` |
//! | `mailgate_token_refreshes_total` | counter | `result` (`ok`, `invalid_grant`, `invalid_client`, `error`) |
//! | `mailgate_relayed_bytes_total` | counter | `protocol`, `direction` (`to_upstream`, `to_client`) |
//! | `mailgate_upstream_login_seconds` | histogram | `protocol` |
//! | `mailgate_password_checks_total` | counter | `result` (`checked`, `dummy`, `refused_backoff`, `refused_busy`) |
//!
//! `result` of a login is `ok`, `bad_credentials`, `needs_authorization`,
//! `refused` (the upstream refused a fresh token), `unavailable` or
//! `throttled` (refused during backoff, without a password check).
//! A password check is an Argon2 computation (a login whose key is cached
//! costs none): `checked` against a token file or `password_hash`, `dummy`
//! for a name without a file (so it costs what a wrong password costs), or
//! refused without one: `refused_backoff` (the user or address is locked),
//! `refused_busy` (too many checks under way).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use mailgate_config::Protocol;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::store_metrics::StoreMeters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByProtocol {
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByState {
    protocol: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountState {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByProvider {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByResult {
    protocol: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByReason {
    protocol: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshResult {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByDirection {
    protocol: String,
    direction: &'static str,
}

type LatencyFamily = Family<ByProtocol, Histogram, fn() -> Histogram>;

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    connections_total: Family<ByProtocol, Counter>,
    connections: Family<ByState, Gauge>,
    logins: Family<ByResult, Counter>,
    sessions_ended: Family<ByReason, Counter>,
    refreshes: Family<RefreshResult, Counter>,
    password_checks: Family<RefreshResult, Counter>,
    portal_sign_ins: Family<RefreshResult, Counter>,
    bytes: Family<ByDirection, Counter>,
    upstream_login: LatencyFamily,
    graph_messages: Family<RefreshResult, Counter>,
    graph_bytes: Counter,
    graph_seconds: Histogram,
    graph_uploads: Counter,
    accounts: Family<AccountState, Gauge>,
    credential_expiry: Family<ByProvider, Gauge>,
    /// The shared store's series and health.
    pub store: StoreMeters,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// A session's place in the `mailgate_connections` gauge; leaves it when
/// dropped.
#[derive(Debug)]
pub struct InState {
    gauge: Gauge,
}

impl Drop for InState {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The byte counters of one relayed session.
#[derive(Debug, Clone, Default)]
pub struct Meters {
    pub to_upstream: Counter,
    pub to_client: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mailgate");
        let connections_total = Family::<ByProtocol, Counter>::default();
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            connections_total.clone(),
        );
        let connections = Family::<ByState, Gauge>::default();
        registry.register(
            "connections",
            "Client connections open now, by state",
            connections.clone(),
        );
        let logins = Family::<ByResult, Counter>::default();
        registry.register("logins", "Client logins by result", logins.clone());
        let sessions_ended = Family::<ByReason, Counter>::default();
        registry.register(
            "sessions_ended",
            "Client sessions by how their dialogue before the login ended",
            sessions_ended.clone(),
        );
        let refreshes = Family::<RefreshResult, Counter>::default();
        registry.register(
            "token_refreshes",
            "OAuth refresh and client-credentials token requests by result",
            refreshes.clone(),
        );
        let password_checks = Family::<RefreshResult, Counter>::default();
        registry.register(
            "password_checks",
            "Argon2 password checks by result, and attempts refused without one",
            password_checks.clone(),
        );
        let portal_sign_ins = Family::<RefreshResult, Counter>::default();
        registry.register(
            "portal_sign_ins",
            "Sign-ins through the web portal by result",
            portal_sign_ins.clone(),
        );
        let bytes = Family::<ByDirection, Counter>::default();
        registry.register("relayed_bytes", "Bytes relayed after login", bytes.clone());
        let upstream_login: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_login_seconds",
            "Time to connect, secure and log in to the upstream server",
            upstream_login.clone(),
        );
        let graph_messages = Family::<RefreshResult, Counter>::default();
        registry.register(
            "graph_messages",
            "Messages sent through Microsoft Graph by result",
            graph_messages.clone(),
        );
        let graph_bytes = Counter::default();
        registry.register(
            "graph_bytes",
            "Bytes of the messages Microsoft Graph accepted",
            graph_bytes.clone(),
        );
        let graph_seconds = latency_histogram();
        registry.register(
            "graph_send_seconds",
            "Time Microsoft Graph took to answer a sendMail",
            graph_seconds.clone(),
        );
        let graph_uploads = Counter::default();
        registry.register(
            "graph_upload_sessions",
            "Graph upload sessions used for attachments of large messages",
            graph_uploads.clone(),
        );
        let accounts = Family::<AccountState, Gauge>::default();
        registry.register(
            "accounts",
            "Accounts by state: ready, needs_sign_in (the provider ended the grant, or it does not allow sending through Graph), not_signed_in (configured, never signed in)",
            accounts.clone(),
        );
        let credential_expiry = Family::<ByProvider, Gauge>::default();
        registry.register(
            "client_credential_expiry_timestamp_seconds",
            "When each provider's client certificate expires (Unix seconds)",
            credential_expiry.clone(),
        );
        let store = StoreMeters::register(&mut registry);
        Metrics {
            store,
            registry,
            connections_total,
            connections,
            logins,
            sessions_ended,
            refreshes,
            password_checks,
            portal_sign_ins,
            bytes,
            upstream_login,
            graph_messages,
            graph_bytes,
            graph_seconds,
            graph_uploads,
            accounts,
            credential_expiry,
        }
    }

    /// The number of accounts in each state (every state named, zeros
    /// included, so an alert sees 0 rather than nothing).
    pub fn set_accounts(&self, counts: &[(&'static str, i64)]) {
        for (state, n) in counts {
            self.accounts.get_or_create(&AccountState { state }).set(*n);
        }
    }

    /// When `provider`'s client certificate expires (Unix seconds).
    pub fn set_credential_expiry(&self, provider: &str, at: i64) {
        self.credential_expiry
            .get_or_create(&ByProvider {
                provider: provider.to_owned(),
            })
            .set(at);
    }

    /// `n` upload sessions used for one message.
    pub fn graph_uploads(&self, n: usize) {
        self.graph_uploads.inc_by(n as u64);
    }

    /// A message given to Microsoft Graph: `result` (`accepted`,
    /// `throttled`, `unavailable`, `refused`, `too_large`,
    /// `unauthorized`, `timeout`, `unreachable`), its size when accepted,
    /// and how long Graph took.
    pub fn graph_sent(&self, result: &'static str, bytes: usize, took: Duration) {
        self.graph_messages
            .get_or_create(&RefreshResult { result })
            .inc();
        if result == "accepted" {
            self.graph_bytes.inc_by(bytes as u64);
        }
        self.graph_seconds.observe(took.as_secs_f64());
    }

    /// A client connected: counts it and enters it in the `preauth` state.
    pub fn connected(&self, protocol: Protocol) -> InState {
        self.connections_total
            .get_or_create(&ByProtocol {
                protocol: protocol.to_string(),
            })
            .inc();
        self.enter(protocol, "preauth")
    }

    /// Enters a session in `state` until the returned guard is dropped.
    pub fn enter(&self, protocol: Protocol, state: &'static str) -> InState {
        let gauge = self
            .connections
            .get_or_create(&ByState {
                protocol: protocol.to_string(),
                state,
            })
            .clone();
        gauge.inc();
        InState { gauge }
    }

    pub fn login_result(&self, protocol: Protocol, result: &'static str) {
        self.logins
            .get_or_create(&ByResult {
                protocol: protocol.to_string(),
                result,
            })
            .inc();
    }

    /// A session's dialogue before the login ended, for `reason` (a
    /// session's `End`: `logged_in`, `timeout`, ...).
    pub fn session_ended(&self, protocol: Protocol, reason: &'static str) {
        self.sessions_ended
            .get_or_create(&ByReason {
                protocol: protocol.to_string(),
                reason,
            })
            .inc();
    }

    pub fn refresh(&self, result: &'static str) {
        self.refreshes
            .get_or_create(&RefreshResult { result })
            .inc();
    }

    pub fn password_check(&self, result: &'static str) {
        self.password_checks
            .get_or_create(&RefreshResult { result })
            .inc();
    }

    /// A sign-in through the portal came back: `ok`, `wrong_identity`,
    /// `provider_error`, `failed` or `unknown_state`.
    pub fn portal_sign_in(&self, result: &'static str) {
        self.portal_sign_ins
            .get_or_create(&RefreshResult { result })
            .inc();
    }

    /// How many password checks ended with `result` (for tests).
    pub fn password_checks(&self, result: &'static str) -> u64 {
        self.password_checks
            .get_or_create(&RefreshResult { result })
            .get()
    }

    pub fn upstream_login(&self, protocol: Protocol, took: Duration) {
        self.upstream_login
            .get_or_create(&ByProtocol {
                protocol: protocol.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The byte counters a relayed session adds to.
    pub fn meters(&self, protocol: Protocol) -> Meters {
        let get = |direction| {
            self.bytes
                .get_or_create(&ByDirection {
                    protocol: protocol.to_string(),
                    direction,
                })
                .clone()
        };
        Meters {
            to_upstream: get("to_upstream"),
            to_client: get("to_client"),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.store.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let health = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(move || {
                let m = health.clone();
                async move { (StatusCode::OK, m.store.health()) }
            }),
        );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_as_documented() {
        let m = Metrics::new();
        let s = m.connected(Protocol::Imap);
        let r = m.enter(Protocol::Imap, "relaying");
        m.login_result(Protocol::Imap, "ok");
        m.refresh("ok");
        m.upstream_login(Protocol::Smtp, Duration::from_millis(30));
        m.meters(Protocol::Pop3).to_client.inc_by(42);
        let text = m.render();
        for want in [
            "mailgate_connections_accepted_total{protocol=\"imap\"} 1",
            "mailgate_connections{protocol=\"imap\",state=\"preauth\"} 1",
            "mailgate_connections{protocol=\"imap\",state=\"relaying\"} 1",
            "mailgate_logins_total{protocol=\"imap\",result=\"ok\"} 1",
            "mailgate_token_refreshes_total{result=\"ok\"} 1",
            "mailgate_relayed_bytes_total{protocol=\"pop3\",direction=\"to_client\"} 42",
            "mailgate_upstream_login_seconds_count{protocol=\"smtp\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        drop((s, r));
        let text = m.render();
        assert!(text.contains("mailgate_connections{protocol=\"imap\",state=\"preauth\"} 0"));
    }
}
