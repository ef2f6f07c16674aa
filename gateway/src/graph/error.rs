//! What went wrong with a Graph request, and what the SMTP client is told:
//! a `451` for what may pass (throttling, an outage, a timeout), so the
//! client keeps the message and tries again; a `5xx` for a refusal, with
//! Graph's error code and what to do.

use std::time::Duration;

/// A Graph request that did not end in `202 Accepted`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// `429`: the mailbox or the application is throttled.
    #[error("Graph throttled the request ({code}): {message}")]
    Throttled {
        retry_after: Option<Duration>,
        code: String,
        message: String,
    },
    /// `5xx`: Graph cannot take it now.
    #[error("Graph is unavailable (HTTP {status}, {code}): {message}")]
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
        code: String,
        message: String,
    },
    /// `401`: the token was not accepted (refresh it and try once more).
    #[error("Graph did not accept the token ({code}): {message}")]
    Unauthorized { code: String, message: String },
    /// `413`, or a message too large for one request.
    #[error("the message is too large for Graph ({code}): {message}")]
    TooLarge { code: String, message: String },
    /// `400`, `403`, `404` and other refusals.
    #[error("Graph refused the message (HTTP {status}, {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("Graph did not answer in time")]
    Timeout,
    #[error("Graph cannot be reached: {0}")]
    Unreachable(String),
}

/// Graph's text, fit for one reply line: printable, bounded.
fn one_line(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

impl GraphError {
    /// The error of an answer with `status` and its JSON `body`
    /// (`{"error": {"code", "message"}}`; anything else is kept as text).
    pub fn from_answer(status: u16, body: &[u8], retry_after: Option<Duration>) -> GraphError {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |k: &str| {
            json.as_ref()
                .and_then(|j| j["error"][k].as_str())
                .map(|s| one_line(s, 200))
        };
        let code = field("code").unwrap_or_else(|| format!("HTTP{status}"));
        let message =
            field("message").unwrap_or_else(|| one_line(&String::from_utf8_lossy(body), 200));
        match status {
            429 => GraphError::Throttled {
                retry_after,
                code,
                message,
            },
            401 => GraphError::Unauthorized { code, message },
            413 => GraphError::TooLarge { code, message },
            500..=599 => GraphError::Unavailable {
                status,
                retry_after,
                code,
                message,
            },
            _ => GraphError::Refused {
                status,
                code,
                message,
            },
        }
    }

    /// The `result` label of `mailgate_graph_messages_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            GraphError::Throttled { .. } => "throttled",
            GraphError::Unavailable { .. } => "unavailable",
            GraphError::Unauthorized { .. } => "unauthorized",
            GraphError::TooLarge { .. } => "too_large",
            GraphError::Refused { .. } => "refused",
            GraphError::Timeout => "timeout",
            GraphError::Unreachable(_) => "unreachable",
        }
    }

    /// How long the account should wait before sending again, when Graph
    /// said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GraphError::Throttled { retry_after, .. }
            | GraphError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The SMTP reply (one line, CRLF included) for the client that sent
    /// the message: temporary failures keep the message at the client.
    pub fn smtp_reply(&self) -> String {
        let wait = |r: &Option<Duration>| match r {
            Some(d) => format!("; try again in {} s", d.as_secs().max(1)),
            None => "; try again later".to_owned(),
        };
        let line = match self {
            GraphError::Throttled {
                retry_after,
                code,
                message,
            } => format!(
                "451 4.7.0 Microsoft Graph is throttling this mailbox ({code}: {message}){}",
                wait(retry_after)
            ),
            GraphError::Unavailable {
                retry_after,
                code,
                message,
                ..
            } => format!(
                "451 4.3.0 Microsoft Graph cannot take the message now ({code}: {message}){}",
                wait(retry_after)
            ),
            GraphError::Timeout => {
                "451 4.4.1 Microsoft Graph did not answer in time; try again later".to_owned()
            }
            GraphError::Unreachable(_) => {
                "451 4.4.1 Microsoft Graph cannot be reached; try again later (the gateway's log says why)"
                    .to_owned()
            }
            GraphError::Unauthorized { code, .. } => format!(
                "451 4.7.0 Microsoft Graph did not accept the gateway's token ({code}); try again later; if it persists, authorise the account again"
            ),
            GraphError::TooLarge { code, .. } => format!(
                "552 5.3.4 The message is too large for Microsoft Graph ({code})"
            ),
            GraphError::Refused { code, message, .. } if code == "ErrorSendAsDenied" => format!(
                "550 5.7.60 The mailbox may not send as this From address ({code}: {message}); send from the mailbox's own address, or have the administrator grant it Send As"
            ),
            GraphError::Refused {
                status: 404,
                code,
                message,
            } => format!("550 5.1.1 Microsoft Graph does not know the mailbox ({code}: {message})"),
            GraphError::Refused {
                status: 403,
                code,
                message,
            } => format!(
                "550 5.7.1 Microsoft Graph refused to send ({code}: {message}); the administrator must check the app's Mail.Send permission"
            ),
            GraphError::Refused { code, message, .. } => {
                format!("554 5.6.0 Microsoft Graph refused the message ({code}: {message})")
            }
        };
        format!("{line}\r\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, code: &str, message: &str) -> GraphError {
        let body = serde_json::json!({"error": {"code": code, "message": message}});
        GraphError::from_answer(
            status,
            body.to_string().as_bytes(),
            Some(Duration::from_secs(30)),
        )
    }

    #[test]
    fn temporary_failures_keep_the_message_at_the_client() {
        for (status, code) in [(429, "ApplicationThrottled"), (503, "ServiceUnavailable")] {
            let e = answer(status, code, "slow down");
            assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
            let r = e.smtp_reply();
            assert!(r.starts_with("451 4."), "{r}");
            assert!(r.contains(code) && r.contains("try again in 30 s"), "{r}");
            assert!(r.ends_with("\r\n") && r.matches("\r\n").count() == 1, "{r}");
        }
        assert!(GraphError::Timeout.smtp_reply().starts_with("451 4.4.1 "));
        assert!(
            answer(401, "InvalidAuthenticationToken", "expired")
                .smtp_reply()
                .starts_with("451 4.7.0 ")
        );
    }

    #[test]
    fn refusals_say_what_to_do() {
        let r = answer(403, "ErrorSendAsDenied", "no Send As").smtp_reply();
        assert!(
            r.starts_with("550 5.7.60 ") && r.contains("grant it Send As"),
            "{r}"
        );
        let r = answer(400, "ErrorMimeContentInvalidBase64String", "bad").smtp_reply();
        assert!(r.starts_with("554 5.6.0 ") && r.contains("ErrorMimeContentInvalidBase64String"));
        let r = answer(413, "RequestEntityTooLarge", "big").smtp_reply();
        assert!(r.starts_with("552 5.3.4 "), "{r}");
        let r = answer(403, "ErrorAccessDenied", "no").smtp_reply();
        assert!(
            r.starts_with("550 5.7.1 ") && r.contains("Mail.Send"),
            "{r}"
        );
    }

    #[test]
    fn graph_text_cannot_break_the_reply_line() {
        let e = GraphError::from_answer(400, b"oops\r\n250 2.0.0 fake\r\n", None);
        let r = e.smtp_reply();
        assert_eq!(r.matches("\r\n").count(), 1, "{r}");
        assert!(r.starts_with("554 5.6.0 Microsoft Graph refused the message (HTTP400: oops"));
    }
}
