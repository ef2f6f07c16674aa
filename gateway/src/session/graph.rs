//! The SMTP step after a login for an account that sends through
//! Microsoft Graph: the gateway receives each message itself
//! ([`mailgate_proto::submission`]), lets the envelope decide its
//! recipients ([`mailgate_proto::recipients`]), sends it with `sendMail`,
//! and answers `250` only once Graph accepted it. A refused token is
//! refreshed once and the message sent again; a `Retry-After` holds the
//! account's next messages back (`451` at `MAIL`).
//!
//! A message is held in memory while it arrives, up to the size one
//! `sendMail` request takes (announced as `SIZE`); larger messages need
//! Graph's upload sessions, which this step does not use yet.

use std::time::Duration;

use mailgate_proto::recipients;
use mailgate_proto::submission::{Event, Limits, Submission};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::accounts::Authorized;
use crate::context::Context;
use crate::graph::{Graph, GraphError, MAX_MIME_REQUEST};
use crate::net::stream::Stream;
use crate::session::{Established, LoggedInSession, PreAuth};

/// How long a client may stay silent between commands.
const IDLE: Duration = Duration::from_secs(300);

/// The reply to AUTH, then the submission loop until the client leaves.
pub async fn submit<M: PreAuth>(s: LoggedInSession<M>) {
    let LoggedInSession {
        mut client,
        machine,
        established,
        tally,
        ctx,
    } = s;
    let Established::Graph(auth) = established else {
        warn!("a Graph session without its Graph login; closing");
        return;
    };
    let residual = machine.into_residual();
    if let Err(e) = client
        .send(b"235 2.7.0 Authentication successful\r\n")
        .await
    {
        debug!(error = %e, "the client left before its login reply");
        return;
    }
    let http = match ctx.accounts.http_for(&auth.provider) {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "no HTTP client for Graph");
            let _ = client
                .send(b"421 4.3.0 The gateway cannot reach Microsoft Graph now\r\n")
                .await;
            return;
        }
    };
    let graph = Graph::new(
        http,
        auth.provider.graph.url.clone(),
        ctx.config().gateway.upstream_timeout * 4,
    );
    info!("logged in; sending through Microsoft Graph");
    let (_sending, _, _) = tally.relaying();
    session(&mut client, residual, auth, &graph, &ctx).await;
}

async fn session(
    client: &mut Stream,
    residual: Vec<u8>,
    mut auth: Authorized,
    graph: &Graph,
    ctx: &Context,
) {
    let limits = Limits {
        max_message: auth.provider.graph.max_message_size.min(MAX_MIME_REQUEST),
        ..Limits::default()
    };
    let mut m = Submission::new(limits);
    m.feed(&residual);
    let mut spool: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        m.refuse_transactions(ctx.accounts.graph_hold(&auth.user).map(|d| {
            format!(
                "451 4.7.0 Microsoft Graph asked this mailbox to wait; try again in {} s\r\n",
                d.as_secs().max(1)
            )
        }));
        while let Some(event) = m.next_event() {
            match event {
                Event::Reply(r) => {
                    if client.send(&r).await.is_err() {
                        return;
                    }
                }
                Event::Data(d) => spool.extend_from_slice(&d),
                Event::Discard => spool.clear(),
                Event::Message(envelope) => {
                    let reply = deliver(ctx, graph, &mut auth, &envelope.recipients, &spool).await;
                    spool = Vec::new();
                    m.answered(&reply);
                }
                Event::Close => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
                    return;
                }
            }
        }
        match tokio::time::timeout(IDLE, client.read_some(&mut buf)).await {
            Err(_) => {
                info!("closing: the client was idle too long");
                let _ = client
                    .send(b"421 4.4.2 Idle for too long; closing\r\n")
                    .await;
                return;
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                debug!("the client left");
                return;
            }
            Ok(Ok(n)) => m.feed(&buf[..n]),
        }
    }
}

/// Sends one message; the reply for the client.
async fn deliver(
    ctx: &Context,
    graph: &Graph,
    auth: &mut Authorized,
    envelope: &[String],
    message: &[u8],
) -> String {
    let decided = match recipients::decide(message, envelope) {
        Ok(d) => d,
        Err(e) => {
            info!(error = %e, "message refused before Graph");
            return format!("554 5.6.0 {e}\r\n");
        }
    };
    if !decided.dropped.is_empty() {
        info!(
            dropped = decided.dropped.len(),
            "recipients named only in the headers receive nothing (the envelope decides)"
        );
    }
    let body = &message[decided.body_at..];
    let mailbox = auth.upstream_user.clone();
    let started = std::time::Instant::now();
    let mut sent = graph
        .send_parts(&mailbox, &auth.access_token, &[&decided.header, body])
        .await;
    if let Err(GraphError::Unauthorized { .. }) = &sent {
        info!("Graph did not accept the token; refreshing it and sending once more");
        match ctx.accounts.token_rejected(auth).await {
            Ok(token) => {
                auth.access_token = token;
                sent = graph
                    .send_parts(&mailbox, &auth.access_token, &[&decided.header, body])
                    .await;
            }
            Err(e) => {
                warn!(error = %e, "no new Graph token");
                return format!(
                    "451 4.7.0 {}\r\n",
                    crate::session::one_line(
                        crate::session::login::Failure::of(e, &auth.user).text()
                    )
                );
            }
        }
    }
    let recipients = envelope.len();
    let size = message.len();
    ctx.metrics.graph_sent(
        sent.as_ref().map_or_else(GraphError::kind, |()| "accepted"),
        size,
        started.elapsed(),
    );
    match sent {
        Ok(()) => {
            info!(
                size,
                recipients,
                took_ms = started.elapsed().as_millis() as u64,
                "message sent through Microsoft Graph"
            );
            "250 2.0.0 Accepted by Microsoft Graph\r\n".to_owned()
        }
        Err(e) => {
            if let Some(wait) = e.retry_after() {
                ctx.accounts.hold_graph(&auth.user, wait);
            }
            warn!(error = %e, size, recipients, "Microsoft Graph did not take the message");
            e.smtp_reply()
        }
    }
}
