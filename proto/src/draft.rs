//! A MIME message as Microsoft Graph's JSON `message` resource, for the
//! sends that MIME `sendMail` cannot carry: a message larger than one
//! request (a draft whose attachments are uploaded one by one), or one
//! that must not be kept in Sent Items (`saveToSentItems` exists only in
//! JSON).
//!
//! What the JSON keeps: the subject, one body (the HTML parts when there
//! are any, the text parts otherwise), From, Reply-To, To, Cc, Bcc, the
//! Message-ID, the `X-` headers (Graph takes no others), and every
//! attachment with its name, type, Content-ID and inline flag. What it
//! loses: every other header (Date, In-Reply-To, References, List-*,
//! Received, Autocrypt, ...), the MIME structure (Exchange builds its own)
//! and any signature over it. The caller has already let the envelope
//! decide the recipients ([`crate::recipients::decide`]): To, Cc and Bcc
//! are read from the rewritten header.

use std::borrow::Cow;

use bytes::Bytes;
use mail_parser::{Address, MessageParser, MimeHeaders as _, PartType};
use serde_json::{Value, json};

/// One attachment, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub inline: bool,
    /// Shared, so that upload chunks are slices of it, never copies.
    pub content: Bytes,
}

impl Attachment {
    /// Graph's `fileAttachment` without its contents (`contentBytes` is
    /// added by the caller, base64), for `POST .../attachments`.
    pub fn file_attachment(&self) -> Value {
        let mut v = json!({
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": self.name,
            "contentType": self.content_type,
            "isInline": self.inline,
        });
        if let Some(id) = &self.content_id {
            v["contentId"] = json!(id);
        }
        v
    }

    /// The body of `POST .../attachments/createUploadSession`.
    pub fn upload_item(&self) -> Value {
        let mut item = json!({
            "attachmentType": "file",
            "name": self.name,
            "size": self.content.len(),
            "contentType": self.content_type,
            "isInline": self.inline,
        });
        if let Some(id) = &self.content_id {
            item["contentId"] = json!(id);
        }
        json!({ "AttachmentItem": item })
    }
}

/// A message in Graph's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// The `message` resource, without attachments.
    pub message: Value,
    pub attachments: Vec<Attachment>,
    /// Headers that the JSON cannot carry (counted for the log).
    pub lost_headers: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DraftError {
    #[error("the message cannot be read as MIME")]
    NotMime,
    #[error("the message names no recipient in To, Cc or Bcc")]
    NoRecipients,
}

/// The longest body kept as the message's body: a longer one would make
/// the draft's request exceed Graph's 4 MB, so it is attached instead
/// (`message.txt` or `message.html`) under a one-line note.
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// Headers that the JSON carries in its own fields.
const CARRIED: [&str; 9] = [
    "subject",
    "from",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "message-id",
    "mime-version",
    "content-type",
];

fn recipients(a: Option<&Address<'_>>) -> Vec<Value> {
    let Some(a) = a else { return Vec::new() };
    a.iter()
        .filter_map(|m| {
            let address = m.address.as_deref()?.trim();
            if address.is_empty() {
                return None;
            }
            let mut e = json!({ "address": address });
            if let Some(n) = m.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                e["name"] = json!(n);
            }
            Some(json!({ "emailAddress": e }))
        })
        .collect()
}

/// `message` (the whole MIME, its recipients decided) in Graph's shape.
pub fn draft(message: &[u8]) -> Result<Draft, DraftError> {
    let mut m = MessageParser::new()
        .parse(message)
        .ok_or(DraftError::NotMime)?;
    let (to, cc, bcc) = (recipients(m.to()), recipients(m.cc()), recipients(m.bcc()));
    if to.is_empty() && cc.is_empty() && bcc.is_empty() {
        return Err(DraftError::NoRecipients);
    }
    let html = m.html_part(0).is_some_and(|p| p.is_text_html());
    let body: String = if html {
        m.html_bodies()
            .filter(|p| p.is_text_html())
            .filter_map(|p| p.text_contents())
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        m.text_bodies()
            .filter_map(|p| p.text_contents())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut attachments = Vec::new();
    let body = if body.len() > MAX_BODY {
        attachments.push(Attachment {
            name: if html { "message.html" } else { "message.txt" }.to_owned(),
            content_type: if html { "text/html" } else { "text/plain" }.to_owned(),
            content_id: None,
            inline: false,
            content: Bytes::from(body.into_bytes()),
        });
        format!(
            "The text of this message was too long to show here: it is attached as {}.",
            attachments[0].name
        )
    } else {
        body
    };
    let mut out = json!({
        "subject": m.subject().unwrap_or_default(),
        "body": {
            "contentType": if html { "html" } else { "text" },
            "content": body,
        },
        "toRecipients": to,
        "ccRecipients": cc,
        "bccRecipients": bcc,
    });
    if let Some(from) = recipients(m.from()).into_iter().next() {
        out["from"] = from;
    }
    let reply_to = recipients(m.reply_to());
    if !reply_to.is_empty() {
        out["replyTo"] = json!(reply_to);
    }
    if let Some(id) = m.message_id() {
        out["internetMessageId"] = json!(format!("<{id}>"));
    }
    let mut custom = Vec::new();
    let mut lost_headers = 0;
    for (name, value) in m.headers_raw() {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("x-") {
            let value: String = value
                .split(['\r', '\n'])
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            custom.push(json!({ "name": name, "value": value }));
        } else if !CARRIED.contains(&lower.as_str()) {
            lost_headers += 1;
        }
    }
    if !custom.is_empty() {
        out["internetMessageHeaders"] = json!(custom);
    }
    let ids = m.attachments.clone();
    attachments.extend(ids.iter().enumerate().filter_map(|(i, id)| {
        let p = m.parts.get_mut(*id as usize)?;
        let content_type = p.content_type().map_or_else(
            || "application/octet-stream".to_owned(),
            |c| match c.subtype() {
                Some(s) => format!("{}/{}", c.ctype(), s),
                None => c.ctype().to_owned(),
            },
        );
        let name = p.attachment_name().map(str::to_owned).unwrap_or_else(|| {
            if p.is_message() {
                format!("message-{}.eml", i + 1)
            } else {
                format!("attachment-{}", i + 1)
            }
        });
        Some(Attachment {
            name,
            content_type,
            content_id: p
                .content_id()
                .map(|c| c.trim_matches(['<', '>']).to_owned()),
            inline: p.content_disposition().is_some_and(|d| d.is_inline()),
            content: take_contents(p),
        })
    }));
    Ok(Draft {
        message: out,
        attachments,
        lost_headers,
    })
}

/// A part's decoded contents, moved out of the parsed message (a copy
/// only when they were not decoded, i.e. still borrowed from the raw).
fn take_contents(p: &mut mail_parser::MessagePart<'_>) -> Bytes {
    match std::mem::replace(&mut p.body, PartType::Binary(Cow::Borrowed(&[]))) {
        PartType::Binary(Cow::Owned(v)) | PartType::InlineBinary(Cow::Owned(v)) => Bytes::from(v),
        PartType::Text(Cow::Owned(t)) | PartType::Html(Cow::Owned(t)) => {
            Bytes::from(t.into_bytes())
        }
        other => {
            p.body = other;
            Bytes::copy_from_slice(p.contents())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: Ann <ann@example.com>\r\n\
To: <bob@example.com>\r\n\
Cc: \"Cy\" <cy@example.com>\r\n\
Bcc: <dee@example.com>\r\n\
Subject: =?UTF-8?B?w6ljaGVj?=\r\n\
Message-ID: <m1@example.com>\r\n\
Date: Thu, 3 Dec 2026 10:00:00 +0000\r\n\
X-Mailer: test\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b1\r\n\
\r\n\
--b1\r\n\
Content-Type: multipart/alternative; boundary=b2\r\n\
\r\n\
--b2\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
plain\r\n\
--b2\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>html</p>\r\n\
--b2--\r\n\
--b1\r\n\
Content-Type: application/pdf; name=\"r.pdf\"\r\n\
Content-Disposition: attachment; filename=\"r.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
AAECAwQF\r\n\
--b1\r\n\
Content-Type: image/png\r\n\
Content-Disposition: inline; filename=\"logo.png\"\r\n\
Content-ID: <logo@x>\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
iVBORw==\r\n\
--b1--\r\n";

    #[test]
    fn a_mixed_message_keeps_its_parts_and_recipients() {
        let d = draft(MIXED).expect("test value");
        let m = &d.message;
        assert_eq!(m["subject"], "échec");
        assert_eq!(m["body"]["contentType"], "html");
        assert!(
            m["body"]["content"]
                .as_str()
                .expect("test value")
                .contains("<p>html</p>")
        );
        assert_eq!(
            m["toRecipients"][0]["emailAddress"]["address"],
            "bob@example.com"
        );
        assert_eq!(m["ccRecipients"][0]["emailAddress"]["name"], "Cy");
        assert_eq!(
            m["bccRecipients"][0]["emailAddress"]["address"],
            "dee@example.com"
        );
        assert_eq!(m["from"]["emailAddress"]["address"], "ann@example.com");
        assert_eq!(m["internetMessageId"], "<m1@example.com>");
        assert_eq!(m["internetMessageHeaders"][0]["name"], "X-Mailer");
        // Date is the one header that cannot be carried.
        assert_eq!(d.lost_headers, 1);
        assert_eq!(d.attachments.len(), 2);
        let pdf = &d.attachments[0];
        assert_eq!(
            (pdf.name.as_str(), pdf.content_type.as_str(), pdf.inline),
            ("r.pdf", "application/pdf", false)
        );
        assert_eq!(pdf.content[..], [0, 1, 2, 3, 4, 5]);
        let logo = &d.attachments[1];
        assert!(logo.inline);
        assert_eq!(logo.content_id.as_deref(), Some("logo@x"));
        assert_eq!(
            logo.upload_item()["AttachmentItem"]["size"],
            logo.content.len()
        );
    }

    #[test]
    fn a_plain_message_has_a_text_body() {
        let d = draft(b"To: a@example.com\r\nSubject: s\r\n\r\nhello\r\n").expect("test value");
        assert_eq!(d.message["body"]["contentType"], "text");
        assert_eq!(d.message["body"]["content"], "hello\r\n");
        assert!(d.attachments.is_empty());
    }

    #[test]
    fn a_body_too_long_for_the_draft_is_attached() {
        let mut m = b"To: a@example.com\r\nSubject: s\r\n\r\n".to_vec();
        m.extend(std::iter::repeat_n(b'x', MAX_BODY + 1));
        let d = draft(&m).expect("test value");
        assert!(
            d.message["body"]["content"]
                .as_str()
                .expect("test value")
                .len()
                < 200
        );
        assert_eq!(d.attachments.len(), 1);
        assert_eq!(d.attachments[0].name, "message.txt");
        assert_eq!(d.attachments[0].content.len(), MAX_BODY + 1);
    }

    #[test]
    fn no_recipient_is_refused() {
        assert_eq!(
            draft(b"Subject: s\r\n\r\nhello\r\n"),
            Err(DraftError::NoRecipients)
        );
    }
}
