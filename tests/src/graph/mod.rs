//! A fake Microsoft Graph `sendMail` on 127.0.0.1, following Graph's
//! documented behaviour (see INTEROP-NOTES): the bearer token is checked
//! with the fake OAuth server (its owner must be the mailbox, or `*` for an
//! app-only token, and a token asked for with a scope must have been asked
//! for Graph's: `https://graph.microsoft.com/...`); the body is the message's MIME in base64 with
//! `Content-Type: text/plain`, at most 4 MB (`413` beyond); recipients
//! come from the To/Cc/Bcc headers; a From that is not the mailbox is
//! `ErrorSendAsDenied`; success is `202` with no body. It records what it
//! would have delivered to whom (the copy without its Bcc header), and can
//! be told to throttle, fail, refuse the token or hang.
//!
//! It also takes what a large message needs ([`drafts`]): JSON `sendMail`
//! (with `saveToSentItems`), drafts, attachments, upload sessions with
//! Graph's chunk rules, and `send`.

mod drafts;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post, put};
use base64::Engine as _;
use mail_parser::{Address, HeaderValue as Value, MessageParser};

use crate::oauth::FakeOAuth;

/// Graph's request body limit.
pub const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// How the fake answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphMode {
    Accept,
    /// `429` with `Retry-After` (seconds).
    Throttle(u64),
    /// `503` with `Retry-After: 5`.
    Unavailable,
    /// `401` to any token.
    Unauthorized,
    /// Never answers.
    Hang,
}

/// One message as one recipient would receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The mailbox it was sent as.
    pub mailbox: String,
    pub recipient: String,
    /// The MIME as delivered (without any Bcc header); for a message sent
    /// as JSON, its subject, `X-` headers and body rendered as text.
    pub message: Vec<u8>,
    /// How it came: `mime`, `json` or `draft`.
    pub how: &'static str,
    /// Whether a copy was kept in Sent Items.
    pub saved: bool,
    /// The attachments of a message sent as JSON (name, contents).
    pub attachments: Vec<(String, Arc<Vec<u8>>)>,
}

#[derive(Debug)]
struct Inner {
    oauth: FakeOAuth,
    mode: GraphMode,
    deliveries: Vec<Delivery>,
    requests: usize,
    drafts: drafts::Drafts,
    /// Where upload URLs point instead of this server (host:port).
    upload_host: Option<String>,
}

/// A running fake Graph.
#[derive(Debug, Clone)]
pub struct FakeGraph {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl FakeGraph {
    pub async fn start(oauth: FakeOAuth) -> FakeGraph {
        let inner = Arc::new(Mutex::new(Inner {
            oauth,
            mode: GraphMode::Accept,
            deliveries: Vec::new(),
            requests: 0,
            drafts: drafts::Drafts::default(),
            upload_host: None,
        }));
        let app = Router::new()
            .route("/v1.0/users/{mailbox}/sendMail", post(send_mail))
            .route("/v1.0/users/{mailbox}/messages", post(drafts::create))
            .route(
                "/v1.0/users/{mailbox}/messages/{id}",
                delete(drafts::remove),
            )
            .route(
                "/v1.0/users/{mailbox}/messages/{id}/attachments",
                post(drafts::attach),
            )
            .route(
                "/v1.0/users/{mailbox}/messages/{id}/attachments/createUploadSession",
                post(drafts::create_upload_session),
            )
            .route(
                "/v1.0/users/{mailbox}/messages/{id}/send",
                post(drafts::send),
            )
            .route("/upload/{session}", put(drafts::upload))
            // The 4 MB limit is checked (and answered) by the handlers.
            .layer(DefaultBodyLimit::max(2 * MAX_REQUEST))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGraph { addr, inner }
    }

    /// The base URL, as `graph_url` takes it.
    pub fn url(&self) -> String {
        format!("http://{}/v1.0", self.addr)
    }

    pub fn set_mode(&self, mode: GraphMode) {
        self.inner.lock().unwrap().mode = mode;
    }

    /// Every message delivered so far, per recipient.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.lock().unwrap().deliveries.clone()
    }

    /// The recipients of every delivery, sorted.
    pub fn recipients(&self) -> Vec<String> {
        let mut r: Vec<String> = self.deliveries().into_iter().map(|d| d.recipient).collect();
        r.sort();
        r
    }

    /// `sendMail` requests received.
    pub fn requests(&self) -> usize {
        self.inner.lock().unwrap().requests
    }

    /// Makes upload URLs point at `host` (e.g. a closed port).
    pub fn set_upload_host(&self, host: Option<&str>) {
        self.inner.lock().unwrap().upload_host = host.map(str::to_owned);
    }

    /// Upload sessions opened, upload `PUT`s received, drafts not sent
    /// nor deleted.
    pub fn upload_counts(&self) -> (usize, usize, usize) {
        let i = self.inner.lock().unwrap();
        (
            i.drafts.sessions_opened,
            i.drafts.puts,
            i.drafts.open_drafts(),
        )
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"error": {"code": code, "message": message}}).to_string(),
    )
        .into_response()
}

/// The addresses of the To, Cc and Bcc headers, lower-cased.
fn header_recipients(mime: &[u8]) -> Option<(Vec<String>, Option<String>)> {
    let m = MessageParser::new().parse_headers(mime)?;
    let mut all = Vec::new();
    let mut from = None;
    for h in m.headers() {
        let name = h.name().to_ascii_lowercase();
        let list: Vec<String> = match h.value() {
            Value::Address(Address::List(l)) => l
                .iter()
                .filter_map(|a| a.address.as_deref().map(str::to_ascii_lowercase))
                .collect(),
            Value::Address(Address::Group(g)) => g
                .iter()
                .flat_map(|g| g.addresses.iter())
                .filter_map(|a| a.address.as_deref().map(str::to_ascii_lowercase))
                .collect(),
            _ => Vec::new(),
        };
        match name.as_str() {
            "to" | "cc" | "bcc" => all.extend(list),
            "from" => from = list.into_iter().next(),
            _ => {}
        }
    }
    all.dedup();
    Some((all, from))
}

/// The message without its Bcc header(s), as a recipient sees it.
fn without_bcc(mime: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(mime);
    let mut out = String::new();
    let mut skipping = false;
    let mut in_header = true;
    for line in text.split_inclusive('\n') {
        if in_header {
            if line == "\r\n" || line == "\n" {
                in_header = false;
            } else if line.starts_with([' ', '\t']) {
                if skipping {
                    continue;
                }
            } else {
                skipping = line.to_ascii_lowercase().starts_with("bcc:");
                if skipping {
                    continue;
                }
            }
        }
        out.push_str(line);
    }
    out.into_bytes()
}

/// What every authenticated request goes through: the mode, then the
/// token, whose owner must be the mailbox (or `*`, app-only). The owner.
async fn gate(
    inner: &Arc<Mutex<Inner>>,
    headers: &HeaderMap,
    mailbox: &str,
) -> Result<String, Response> {
    let (mode, oauth) = {
        let mut i = inner.lock().unwrap();
        i.requests += 1;
        (i.mode.clone(), i.oauth.clone())
    };
    if let Some(r) = mode_answer(mode).await {
        return Err(r);
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(owner) = token.and_then(|t| oauth.check_access(t)) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure.",
        ));
    };
    // A token asked for another resource (the mail servers') is not for
    // Graph: Microsoft issues a token for one audience.
    if let Some(scope) = token.and_then(|t| oauth.access_scope(t))
        && !scope.contains("https://graph.microsoft.com/")
    {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        ));
    }
    if !oauth.may_open(&owner, mailbox) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        ));
    }
    Ok(owner)
}

/// The answer the mode forces, if any.
async fn mode_answer(mode: GraphMode) -> Option<Response> {
    match mode {
        GraphMode::Accept => None,
        GraphMode::Throttle(secs) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            Some(r)
        }
        GraphMode::Unavailable => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "Service unavailable.",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(5u64));
            Some(r)
        }
        GraphMode::Unauthorized => Some(error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
        )),
        GraphMode::Hang => {
            std::future::pending::<()>().await;
            None
        }
    }
}

fn too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        "The request is larger than 4 MB.",
    )
}

fn send_as_denied() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "ErrorSendAsDenied",
        "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account.",
    )
}

async fn send_mail(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let owner = match gate(&inner, &headers, &mailbox).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    if body.len() > MAX_REQUEST {
        return too_large();
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        return drafts::send_json(&inner, &mailbox, &owner, &body);
    }
    let text_plain = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !text_plain {
        return error(
            StatusCode::BAD_REQUEST,
            "RequestBodyRead",
            "Unsupported content type.",
        );
    }
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let Ok(mime) = base64::engine::general_purpose::STANDARD.decode(compact) else {
        return error(
            StatusCode::BAD_REQUEST,
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        );
    };
    let Some((recipients, from)) = header_recipients(&mime) else {
        return error(
            StatusCode::BAD_REQUEST,
            "ErrorMimeContentInvalid",
            "The MIME content is invalid.",
        );
    };
    if recipients.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRecipients",
            "At least one recipient is not valid.",
        );
    }
    if owner != "*"
        && from
            .as_deref()
            .is_some_and(|f| !f.eq_ignore_ascii_case(&mailbox))
    {
        return send_as_denied();
    }
    let delivered = without_bcc(&mime);
    let mut i = inner.lock().unwrap();
    for r in recipients {
        i.deliveries.push(Delivery {
            mailbox: mailbox.clone(),
            recipient: r,
            message: delivered.clone(),
            how: "mime",
            saved: true,
            attachments: Vec::new(),
        });
    }
    StatusCode::ACCEPTED.into_response()
}
