//! Sending a message in Graph's JSON shape ([`mailgate_proto::draft`]):
//! in one `sendMail` request when it fits (what `saveToSentItems = false`
//! needs), or, for a message larger than one request, as a draft whose
//! attachments are added one by one — up to [`SMALL_ATTACHMENT`] in one
//! `POST`, larger ones through an upload session in chunks of
//! [`UPLOAD_CHUNK`] — and then sent. A draft left by a failure is deleted.

use base64::Engine as _;
use mailgate_proto::draft::{Attachment, Draft};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use tracing::debug;

#[cfg(doc)]
use super::MAX_MIME_REQUEST;
use super::{Graph, GraphError};

/// The largest attachment added with one `POST` (its base64 and JSON stay
/// under Graph's 4 MB request limit); larger ones use an upload session.
pub const SMALL_ATTACHMENT: usize = 3_000_000;

/// The bytes of one upload `PUT`: under 4 MB, a multiple of 320 KiB.
pub const UPLOAD_CHUNK: usize = 12 * 320 * 1024;

/// An attachment's JSON with its contents.
fn with_contents(a: &Attachment) -> Value {
    let mut v = a.file_attachment();
    v["contentBytes"] = json!(base64::engine::general_purpose::STANDARD.encode(&a.content));
    v
}

impl Graph {
    /// Sends `draft` in one JSON `sendMail` request (its attachments
    /// inline), keeping a copy in Sent Items only when `save`. The caller
    /// keeps this to messages of at most [`MAX_MIME_REQUEST`] bytes.
    pub async fn send_json(
        &self,
        mailbox: &str,
        token: &SecretString,
        draft: &Draft,
        save: bool,
    ) -> Result<(), GraphError> {
        let mut message = draft.message.clone();
        if !draft.attachments.is_empty() {
            message["attachments"] = draft.attachments.iter().map(with_contents).collect();
        }
        let body = json!({ "message": message, "saveToSentItems": save });
        self.post_json(mailbox, token, &["sendMail"], Some(&body), &[202])
            .await
            .map(drop)
    }

    /// Sends `draft` as a draft: created, given its attachments, sent.
    /// Returns how many upload sessions it used.
    pub async fn send_draft(
        &self,
        mailbox: &str,
        token: &SecretString,
        draft: &Draft,
    ) -> Result<usize, GraphError> {
        let created = self
            .post_json(mailbox, token, &["messages"], Some(&draft.message), &[201])
            .await?;
        let Some(id) = created["id"].as_str().map(str::to_owned) else {
            return Err(GraphError::Refused {
                status: 201,
                code: "NoDraftId".into(),
                message: "Graph created a draft without an id".into(),
            });
        };
        let done = self.fill_and_send(mailbox, token, &id, draft).await;
        if done.is_err() {
            // Best effort: a draft left behind would show in the mailbox.
            let request = self
                .http
                .delete(self.url(mailbox, &["messages", &id])?)
                .bearer_auth(token.expose_secret());
            if let Err(e) = self.call(request, &[204]).await {
                debug!(error = %e, "the unsent draft could not be deleted");
            }
        }
        done
    }

    async fn fill_and_send(
        &self,
        mailbox: &str,
        token: &SecretString,
        id: &str,
        draft: &Draft,
    ) -> Result<usize, GraphError> {
        let mut sessions = 0;
        for a in &draft.attachments {
            if a.content.len() <= SMALL_ATTACHMENT {
                self.post_json(
                    mailbox,
                    token,
                    &["messages", id, "attachments"],
                    Some(&with_contents(a)),
                    &[201],
                )
                .await?;
            } else {
                self.upload(mailbox, token, id, a).await?;
                sessions += 1;
            }
        }
        self.post_json(mailbox, token, &["messages", id, "send"], None, &[202])
            .await?;
        Ok(sessions)
    }

    /// One attachment through an upload session.
    async fn upload(
        &self,
        mailbox: &str,
        token: &SecretString,
        id: &str,
        a: &Attachment,
    ) -> Result<(), GraphError> {
        let session = self
            .post_json(
                mailbox,
                token,
                &["messages", id, "attachments", "createUploadSession"],
                Some(&a.upload_item()),
                &[201],
            )
            .await?;
        let url = session["uploadUrl"]
            .as_str()
            .and_then(|u| url::Url::parse(u).ok())
            // The contents go where Graph says, but never from https down
            // to plain http.
            .filter(|u| u.scheme() == "https" || u.scheme() == self.base.scheme())
            .ok_or_else(|| GraphError::Refused {
                status: 201,
                code: "NoUploadUrl".into(),
                message: "Graph opened an upload session without a usable uploadUrl".into(),
            })?;
        let total = a.content.len();
        let mut at = 0;
        while at < total {
            let end = (at + UPLOAD_CHUNK).min(total);
            // No Authorization header: the URL carries its own token, and
            // Graph refuses a request that has both.
            let request = self
                .http
                .put(url.clone())
                .header(
                    reqwest::header::CONTENT_RANGE,
                    format!("bytes {}-{}/{}", at, end - 1, total),
                )
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(a.content.slice(at..end));
            let expected: &[u16] = if end == total { &[201, 200] } else { &[200] };
            self.call(request, expected).await?;
            at = end;
        }
        Ok(())
    }
}
