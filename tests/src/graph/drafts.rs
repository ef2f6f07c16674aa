//! The fake Graph's JSON side: `sendMail` with a JSON `message`, drafts
//! (`POST /users/{id}/messages`), attachments (`POST .../attachments`, at
//! most 4 MB a request), upload sessions (`createUploadSession`, then
//! `PUT`s to the `uploadUrl` with `Content-Range: bytes a-b/total`, each
//! under 4 MB, in order, and without an Authorization header: the URL
//! carries its own token, and Graph refuses a request with both), and
//! `POST .../messages/{id}/send`. A draft's recipients are its
//! `toRecipients`, `ccRecipients` and `bccRecipients`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{Delivery, Inner, MAX_REQUEST, error, gate, mode_answer, send_as_denied, too_large};

/// Graph's largest attachment through an upload session.
const MAX_ATTACHMENT: usize = 150 * 1024 * 1024;

#[derive(Debug)]
struct Draft {
    mailbox: String,
    message: Value,
    attachments: Vec<(String, Arc<Vec<u8>>)>,
}

#[derive(Debug)]
struct Upload {
    draft: String,
    name: String,
    size: usize,
    received: Vec<u8>,
}

/// Drafts and upload sessions in progress.
#[derive(Debug, Default)]
pub(super) struct Drafts {
    next: u64,
    drafts: HashMap<String, Draft>,
    uploads: HashMap<String, Upload>,
    pub sessions_opened: usize,
    pub puts: usize,
}

impl Drafts {
    pub fn open_drafts(&self) -> usize {
        self.drafts.len()
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:08x}{}", self.next, rand_suffix())
    }
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{n:x}")
}

type Shared = State<Arc<Mutex<Inner>>>;

fn bad(code: &str, message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, code, message)
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

/// The lower-cased addresses of a recipients array.
fn addresses(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["emailAddress"]["address"].as_str())
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default()
}

/// What a recipient sees of a JSON message (enough for tests to compare):
/// its subject, `X-` headers and body.
fn render(message: &Value) -> Vec<u8> {
    let mut out = format!(
        "Subject: {}\r\n",
        message["subject"].as_str().unwrap_or_default()
    );
    for h in message["internetMessageHeaders"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "{}: {}\r\n",
            h["name"].as_str().unwrap_or_default(),
            h["value"].as_str().unwrap_or_default()
        ));
    }
    out.push_str("\r\n");
    out.push_str(message["body"]["content"].as_str().unwrap_or_default());
    out.into_bytes()
}

/// Checks `message` and records one delivery per recipient.
fn deliver(
    inner: &Arc<Mutex<Inner>>,
    mailbox: &str,
    owner: &str,
    message: &Value,
    attachments: Vec<(String, Arc<Vec<u8>>)>,
    how: &'static str,
    saved: bool,
) -> Response {
    if let Some(h) = message["internetMessageHeaders"].as_array()
        && h.iter().any(|h| {
            !h["name"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase()
                .starts_with("x-")
        })
    {
        return bad(
            "InvalidInternetMessageHeader",
            "The internet message header name should start with 'x-' or 'X-'.",
        );
    }
    let mut recipients = addresses(&message["toRecipients"]);
    recipients.extend(addresses(&message["ccRecipients"]));
    recipients.extend(addresses(&message["bccRecipients"]));
    recipients.dedup();
    if recipients.is_empty() {
        return bad(
            "ErrorInvalidRecipients",
            "At least one recipient is not valid.",
        );
    }
    let from = message["from"]["emailAddress"]["address"].as_str();
    if owner != "*" && from.is_some_and(|f| !f.eq_ignore_ascii_case(mailbox)) {
        return send_as_denied();
    }
    let rendered = render(message);
    let mut i = inner.lock().unwrap();
    for r in recipients {
        i.deliveries.push(Delivery {
            mailbox: mailbox.to_owned(),
            recipient: r,
            message: rendered.clone(),
            how,
            saved,
            attachments: attachments.clone(),
        });
    }
    StatusCode::ACCEPTED.into_response()
}

/// A `fileAttachment` with its `contentBytes`, decoded.
fn file_attachment(a: &Value) -> Result<(String, Arc<Vec<u8>>), Box<Response>> {
    if a["@odata.type"] != "#microsoft.graph.fileAttachment" {
        return Err(Box::new(bad(
            "ErrorInvalidAttachmentType",
            "Not a file attachment.",
        )));
    }
    let name = a["name"].as_str().unwrap_or_default().to_owned();
    let bytes = a["contentBytes"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .ok_or_else(|| {
            Box::new(bad(
                "ErrorInvalidBase64String",
                "contentBytes is not base64.",
            ))
        })?;
    Ok((name, Arc::new(bytes)))
}

/// `sendMail` with a JSON body (called by the MIME handler, which shares
/// the route).
pub(super) fn send_json(
    inner: &Arc<Mutex<Inner>>,
    mailbox: &str,
    owner: &str,
    body: &[u8],
) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return bad("RequestBodyRead", "The request body is not JSON.");
    };
    let mut attachments = Vec::new();
    for a in v["message"]["attachments"].as_array().into_iter().flatten() {
        match file_attachment(a) {
            Ok(a) => attachments.push(a),
            Err(r) => return *r,
        }
    }
    let saved = v["saveToSentItems"].as_bool().unwrap_or(true);
    deliver(
        inner,
        mailbox,
        owner,
        &v["message"],
        attachments,
        "json",
        saved,
    )
}

pub(super) async fn create(
    State(inner): Shared,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&inner, &headers, &mailbox).await {
        return r;
    }
    if body.len() > MAX_REQUEST {
        return too_large();
    }
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return bad("RequestBodyRead", "The request body is not JSON.");
    };
    if !message.is_object() || message.get("attachments").is_some() {
        return bad("RequestBodyRead", "Expected a message without attachments.");
    }
    let mut i = inner.lock().unwrap();
    let id = i.drafts.id("AAMk");
    i.drafts.drafts.insert(
        id.clone(),
        Draft {
            mailbox: mailbox.to_ascii_lowercase(),
            message,
            attachments: Vec::new(),
        },
    );
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "id": id, "isDraft": true }).to_string(),
    )
        .into_response()
}

/// The answer saying that `mailbox` has no draft `id`, if it has none.
fn no_draft(inner: &Arc<Mutex<Inner>>, mailbox: &str, id: &str) -> Option<Response> {
    let i = inner.lock().unwrap();
    match i.drafts.drafts.get(id) {
        Some(d) if d.mailbox.eq_ignore_ascii_case(mailbox) => None,
        _ => Some(not_found()),
    }
}

pub(super) async fn remove(
    State(inner): Shared,
    Path((mailbox, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gate(&inner, &headers, &mailbox).await {
        return r;
    }
    if let Some(r) = no_draft(&inner, &mailbox, &id) {
        return r;
    }
    inner.lock().unwrap().drafts.drafts.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn attach(
    State(inner): Shared,
    Path((mailbox, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&inner, &headers, &mailbox).await {
        return r;
    }
    if body.len() > MAX_REQUEST {
        return too_large();
    }
    if let Some(r) = no_draft(&inner, &mailbox, &id) {
        return r;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad("RequestBodyRead", "The request body is not JSON.");
    };
    let attachment = match file_attachment(&v) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let mut i = inner.lock().unwrap();
    if let Some(d) = i.drafts.drafts.get_mut(&id) {
        d.attachments.push(attachment);
    }
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "id": "attachment" }).to_string(),
    )
        .into_response()
}

pub(super) async fn create_upload_session(
    State(inner): Shared,
    Path((mailbox, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&inner, &headers, &mailbox).await {
        return r;
    }
    if let Some(r) = no_draft(&inner, &mailbox, &id) {
        return r;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad("RequestBodyRead", "The request body is not JSON.");
    };
    let item = &v["AttachmentItem"];
    let size = item["size"].as_u64().unwrap_or(0) as usize;
    let name = item["name"].as_str().unwrap_or_default().to_owned();
    if item["attachmentType"] != "file" || name.is_empty() || size == 0 {
        return bad(
            "ErrorInvalidRequest",
            "AttachmentItem needs attachmentType file, a name and a size.",
        );
    }
    if size > MAX_ATTACHMENT {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ErrorAttachmentSizeLimitExceeded",
            "The attachment is larger than 150 MB.",
        );
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return bad("RequestBodyRead", "No Host header.");
    };
    let mut i = inner.lock().unwrap();
    let host = i.upload_host.clone().unwrap_or_else(|| host.to_owned());
    let session = i.drafts.id("us");
    i.drafts.sessions_opened += 1;
    i.drafts.uploads.insert(
        session.clone(),
        Upload {
            draft: id,
            name,
            size,
            received: Vec::new(),
        },
    );
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "uploadUrl": format!("http://{host}/upload/{session}?authtoken=fake"),
            "expirationDateTime": "2099-01-01T00:00:00Z",
            "nextExpectedRanges": ["0-"],
        })
        .to_string(),
    )
        .into_response()
}

/// `bytes a-b/total`.
fn content_range(headers: &HeaderMap) -> Option<(usize, usize, usize)> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

pub(super) async fn upload(
    State(inner): Shared,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mode = inner.lock().unwrap().mode.clone();
    if let Some(r) = mode_answer(mode).await {
        return r;
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return error(
            StatusCode::UNAUTHORIZED,
            "InvalidAudienceForResource",
            "The audience claim value is invalid for current resource.",
        );
    }
    if body.len() > MAX_REQUEST {
        return too_large();
    }
    let Some((a, b, total)) = content_range(&headers) else {
        return bad(
            "InvalidContentRange",
            "Content-Range is missing or malformed.",
        );
    };
    let mut i = inner.lock().unwrap();
    i.drafts.puts += 1;
    let Some(up) = i.drafts.uploads.get_mut(&session) else {
        return not_found();
    };
    if total != up.size || a != up.received.len() || b < a || b - a + 1 != body.len() || b >= total
    {
        return bad(
            "InvalidContentRange",
            "The range does not follow the last one, or does not match the body.",
        );
    }
    up.received.extend_from_slice(&body);
    if up.received.len() < up.size {
        let next = up.received.len();
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json!({
                "expirationDateTime": "2099-01-01T00:00:00Z",
                "nextExpectedRanges": [format!("{next}-")],
            })
            .to_string(),
        )
            .into_response();
    }
    let up = i.drafts.uploads.remove(&session).expect("present");
    if let Some(d) = i.drafts.drafts.get_mut(&up.draft) {
        d.attachments.push((up.name, Arc::new(up.received)));
    }
    StatusCode::CREATED.into_response()
}

pub(super) async fn send(
    State(inner): Shared,
    Path((mailbox, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let owner = match gate(&inner, &headers, &mailbox).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    if let Some(r) = no_draft(&inner, &mailbox, &id) {
        return r;
    }
    let draft = {
        let mut i = inner.lock().unwrap();
        // Unfinished upload sessions of this draft end with it.
        i.drafts.uploads.retain(|_, u| u.draft != id);
        i.drafts.drafts.remove(&id).expect("present")
    };
    deliver(
        &inner,
        &mailbox,
        &owner,
        &draft.message,
        draft.attachments,
        "draft",
        true,
    )
}
