//! Sending through Microsoft Graph (`sendMail`), for tenants whose SMTP
//! AUTH is off: the client of the API ([`Graph::send_mime`]) and what each
//! of its answers tells an SMTP client ([`GraphError::smtp_reply`]). The
//! message goes as MIME, base64-encoded, so that its headers and parts
//! reach Exchange as the client wrote them (after the envelope decided the
//! recipients: [`mailgate_proto::recipients`]).

mod draft;
mod error;

pub use error::GraphError;

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};

/// Microsoft's public Graph endpoint.
pub const DEFAULT_URL: &str = "https://graph.microsoft.com/v1.0";

/// The most of a MIME message that one `sendMail` request carries: Graph
/// refuses request bodies over about 4 MB, and base64 grows a message by a
/// third.
pub const MAX_MIME_REQUEST: usize = 3 * 1024 * 1024;

/// The longest error answer read from Graph.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A Graph endpoint.
#[derive(Debug, Clone)]
pub struct Graph {
    http: reqwest::Client,
    base: url::Url,
    timeout: Duration,
}

impl Graph {
    /// The Graph API at `base` (e.g. [`DEFAULT_URL`]), each request bounded
    /// by `timeout`, over `http` (the process's client: its proxies, no
    /// redirects).
    pub fn new(http: reqwest::Client, base: url::Url, timeout: Duration) -> Graph {
        Graph {
            http,
            base,
            timeout,
        }
    }

    /// `…/users/{mailbox}/` followed by `rest`.
    fn url(&self, mailbox: &str, rest: &[&str]) -> Result<url::Url, GraphError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| GraphError::Unreachable(format!("{} cannot be a base URL", self.base)))?
            .pop_if_empty()
            .extend(["users", mailbox])
            .extend(rest);
        Ok(url)
    }

    /// Sends `request` within the time allowed; the answer when its status
    /// is `expected`, its error otherwise.
    async fn call(
        &self,
        request: reqwest::RequestBuilder,
        expected: &[u16],
    ) -> Result<reqwest::Response, GraphError> {
        let response = match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => return Err(GraphError::Timeout),
            Ok(Err(e)) if e.is_timeout() => return Err(GraphError::Timeout),
            Ok(Err(e)) => {
                // Without the URL: an upload session's carries its own
                // token (`authtoken=`), which must not reach a log line.
                return Err(GraphError::Unreachable(crate::accounts::oauth::chain(
                    &e.without_url(),
                )));
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        if expected.contains(&status) {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_capped(response).await;
        Err(GraphError::from_answer(status, &body, retry_after))
    }

    /// `POST`s `body` as JSON (or nothing) to `…/users/{mailbox}/{rest}`; the answer's
    /// JSON (`null` when it has none).
    async fn post_json(
        &self,
        mailbox: &str,
        token: &SecretString,
        rest: &[&str],
        body: Option<&serde_json::Value>,
        expected: &[u16],
    ) -> Result<serde_json::Value, GraphError> {
        let mut request = self
            .http
            .post(self.url(mailbox, rest)?)
            .bearer_auth(token.expose_secret());
        request = match body {
            Some(b) => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string()),
            // An empty body, as `send` takes it.
            None => request.header(reqwest::header::CONTENT_LENGTH, "0"),
        };
        let answer = self.call(request, expected).await?;
        let bytes = read_capped(answer).await;
        Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// Sends `mime` (a whole message, its recipients already decided) as
    /// `mailbox` with the access token `token`. `Ok` means Graph accepted
    /// it (`202`), not that it was delivered.
    pub async fn send_mime(
        &self,
        mailbox: &str,
        token: &SecretString,
        mime: &[u8],
    ) -> Result<(), GraphError> {
        self.send_parts(mailbox, token, &[mime]).await
    }

    /// As [`Graph::send_mime`], for a message in parts (a rewritten header
    /// and the body as received): they are encoded straight into the
    /// request, never joined first.
    pub async fn send_parts(
        &self,
        mailbox: &str,
        token: &SecretString,
        parts: &[&[u8]],
    ) -> Result<(), GraphError> {
        let size: usize = parts.iter().map(|p| p.len()).sum();
        if size > MAX_MIME_REQUEST {
            return Err(GraphError::TooLarge {
                code: "RequestEntityTooLarge".into(),
                message: format!("a message of {size} bytes needs an upload session"),
            });
        }
        let mut body = String::with_capacity(size.div_ceil(3) * 4);
        {
            use std::io::Write as _;
            let mut enc = base64::write::EncoderStringWriter::from_consumer(
                &mut body,
                &base64::engine::general_purpose::STANDARD,
            );
            for p in parts {
                // Writing into a String cannot fail.
                let _ = enc.write_all(p);
            }
            enc.into_inner();
        }
        let request = self
            .http
            .post(self.url(mailbox, &["sendMail"])?)
            .bearer_auth(token.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .body(body);
        self.call(request, &[202]).await.map(drop)
    }
}

/// An error answer's body, up to [`MAX_ERROR_BODY`] bytes (a slow or
/// endless one is cut there, within the request's time).
async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    body
}
