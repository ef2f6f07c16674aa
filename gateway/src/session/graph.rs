//! The SMTP step after a login for an account that sends through
//! Microsoft Graph: the gateway receives each message itself
//! ([`mailgate_proto::submission`]), lets the envelope decide its
//! recipients ([`mailgate_proto::recipients`]), sends it with `sendMail`,
//! and answers `250` only once Graph accepted it. A refused token is
//! refreshed once and the message sent again; a `Retry-After` holds the
//! account's next messages back (`451` at `MAIL`).
//!
//! A message waits in a [`Spool`] (memory, then a private temporary file)
//! until it is complete. Up to [`MAX_MIME_REQUEST`] bytes it goes as MIME
//! in one request; a larger one, or one that must not be kept in Sent
//! Items, goes in Graph's JSON shape ([`mailgate_proto::draft`]), a large
//! one as a draft with upload sessions. At most [`CONVERTING`] large
//! messages are read back into memory at once, so memory stays bounded
//! whatever the number of clients.

use std::time::Duration;

use mailgate_proto::recipients;
use mailgate_proto::submission::{Event, Limits, Submission};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::accounts::Authorized;
use crate::context::Context;
use crate::graph::{Graph, GraphError, MAX_MIME_REQUEST};
use crate::net::stream::Stream;
use crate::session::spool::Spool;
use crate::session::{Established, LoggedInSession, PreAuth};

/// Large messages converted and uploaded at the same time (each is held in
/// memory while it is: its bytes and its decoded attachments).
pub const CONVERTING: usize = 2;

static LARGE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONVERTING);

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
        max_message: auth.provider.graph.max_message_size,
        ..Limits::default()
    };
    let mut m = Submission::new(limits);
    m.feed(&residual);
    let mut spool = Spool::new();
    // Set when the spool could not take the message's bytes (a full disk):
    // the message is refused when it ends, the session goes on.
    let mut spool_failed = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        m.refuse_transactions(ctx.accounts.graph_hold(&auth.user).map(|d| {
            format!(
                "451 4.7.0 Microsoft Graph asked this mailbox to wait; try again in {} s\r\n",
                d.as_secs().max(1)
            )
        }));
        // Replies to pipelined commands go out together, before anything
        // that waits (a delivery, the next read).
        let mut replies: Vec<u8> = Vec::new();
        while let Some(event) = m.next_event() {
            if !matches!(event, Event::Reply(_) | Event::Data(_))
                && !replies.is_empty()
                && client.send(&std::mem::take(&mut replies)).await.is_err()
            {
                return;
            }
            match event {
                Event::Reply(r) => replies.extend_from_slice(&r),
                Event::Data(d) => {
                    if !spool_failed && let Err(e) = spool.push(&d).await {
                        warn!(error = %e, "the message cannot be spooled");
                        spool_failed = true;
                        spool.clear();
                    }
                }
                Event::Discard => {
                    spool.clear();
                    spool_failed = false;
                }
                Event::Message(envelope) => {
                    let reply = if spool_failed {
                        "452 4.3.1 The gateway has no room for this message now\r\n".to_owned()
                    } else {
                        deliver(ctx, graph, &mut auth, &envelope.recipients, &mut spool).await
                    };
                    spool.clear();
                    spool_failed = false;
                    m.answered(&reply);
                }
                Event::Close => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
                    return;
                }
            }
        }
        if !replies.is_empty() && client.send(&replies).await.is_err() {
            return;
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

/// How a message goes to Graph.
enum Shape {
    /// MIME in one `sendMail`: the header as decided, then the body.
    Mime { header: Vec<u8>, body_at: usize },
    /// JSON in one `sendMail` (not kept in Sent Items).
    Json(mailgate_proto::draft::Draft),
    /// A draft with its attachments, then `send`.
    Draft(mailgate_proto::draft::Draft),
}

/// The message in `spool` as a [`Draft`](mailgate_proto::draft::Draft):
/// the decided header and the body joined, then parsed (in a blocking
/// thread: a large message takes a while).
async fn to_draft(
    spool: &mut Spool,
    header: Vec<u8>,
    body_at: usize,
) -> Result<mailgate_proto::draft::Draft, String> {
    let mut whole = header;
    spool
        .append_from(body_at, &mut whole)
        .await
        .map_err(|e| format!("451 4.3.0 The gateway could not read the message back: {e}\r\n"))?;
    tokio::task::spawn_blocking(move || mailgate_proto::draft::draft(&whole))
        .await
        .map_err(|_| "451 4.3.0 The gateway could not read the message\r\n".to_owned())?
        .map_err(|e| format!("554 5.6.0 {e}\r\n"))
}

/// Sends one message; the reply for the client.
async fn deliver(
    ctx: &Context,
    graph: &Graph,
    auth: &mut Authorized,
    envelope: &[String],
    spool: &mut Spool,
) -> String {
    let head = match spool.head(recipients::MAX_HEADER + 2).await {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "the spooled message cannot be read");
            return "451 4.3.0 The gateway could not read the message back\r\n".to_owned();
        }
    };
    let decided = match recipients::decide(&head, envelope) {
        Ok(d) => d,
        Err(e) => {
            info!(error = %e, "message refused before Graph");
            return format!("554 5.6.0 {e}\r\n");
        }
    };
    let message_id = recipients::message_id(&head).unwrap_or_default();
    drop(head);
    if !decided.dropped.is_empty() {
        info!(
            dropped = decided.dropped.len(),
            "recipients named only in the headers receive nothing (the envelope decides)"
        );
    }
    let size = spool.len();
    let save = auth.provider.graph.save_to_sent_items;
    // Held while a large message is in memory.
    let mut _converting = None;
    let shape = if size <= MAX_MIME_REQUEST && save {
        Shape::Mime {
            header: decided.header,
            body_at: decided.body_at,
        }
    } else {
        if size > MAX_MIME_REQUEST {
            _converting = LARGE.acquire().await.ok();
        }
        match to_draft(spool, decided.header, decided.body_at).await {
            Ok(d) if size <= MAX_MIME_REQUEST => Shape::Json(d),
            Ok(d) => Shape::Draft(d),
            Err(reply) => {
                info!(reply = reply.trim_end(), "message refused before Graph");
                return reply;
            }
        }
    };
    let body = match &shape {
        Shape::Mime { body_at, .. } => match spool.from(*body_at).await {
            Ok(b) => Some(b),
            Err(e) => {
                warn!(error = %e, "the spooled message cannot be read");
                return "451 4.3.0 The gateway could not read the message back\r\n".to_owned();
            }
        },
        _ => None,
    };
    // A delegate sends as the shared mailbox it opened.
    let mailbox = auth.mailbox().to_owned();
    let started = std::time::Instant::now();
    let mut uploads = 0;
    let mut sent = send(graph, &mailbox, auth, &shape, body.as_deref(), &mut uploads).await;
    if let Err(GraphError::Unauthorized { .. }) = &sent {
        info!("Graph did not accept the token; refreshing it and sending once more");
        match ctx.accounts.token_rejected(auth).await {
            Ok(token) => {
                auth.access_token = token;
                sent = send(graph, &mailbox, auth, &shape, body.as_deref(), &mut uploads).await;
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
    ctx.metrics.graph_sent(
        sent.as_ref().map_or_else(GraphError::kind, |()| "accepted"),
        size,
        started.elapsed(),
    );
    ctx.metrics.graph_uploads(uploads);
    let (how, lost_headers) = match &shape {
        Shape::Mime { .. } => ("mime", 0),
        Shape::Json(d) => ("json", d.lost_headers),
        Shape::Draft(d) => ("draft", d.lost_headers),
    };
    match sent {
        Ok(()) => {
            info!(
                message_id,
                size,
                recipients,
                how,
                uploads,
                lost_headers,
                took_ms = started.elapsed().as_millis() as u64,
                "message sent through Microsoft Graph"
            );
            "250 2.0.0 Accepted by Microsoft Graph\r\n".to_owned()
        }
        Err(e) => {
            if let Some(wait) = e.retry_after() {
                ctx.accounts.hold_graph(&auth.user, wait);
            }
            warn!(error = %e, message_id, size, recipients, how, "Microsoft Graph did not take the message");
            e.smtp_reply()
        }
    }
}

/// One attempt at sending `shape`; `uploads` counts upload sessions used.
async fn send(
    graph: &Graph,
    mailbox: &str,
    auth: &Authorized,
    shape: &Shape,
    body: Option<&[u8]>,
    uploads: &mut usize,
) -> Result<(), GraphError> {
    match shape {
        Shape::Mime { header, .. } => {
            graph
                .send_parts(
                    mailbox,
                    &auth.access_token,
                    &[header, body.unwrap_or_default()],
                )
                .await
        }
        Shape::Json(d) => graph.send_json(mailbox, &auth.access_token, d, false).await,
        Shape::Draft(d) => {
            *uploads += graph.send_draft(mailbox, &auth.access_token, d).await?;
            Ok(())
        }
    }
}
