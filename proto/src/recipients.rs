//! The envelope decides who receives a message that is sent through an
//! API taking its recipients from the headers (Microsoft Graph's
//! `sendMail`): the message's header section is rewritten so that exactly
//! the envelope's recipients can receive it.
//!
//! - `To` and `Cc` keep the addresses the envelope names. An address only
//!   the headers name is removed (a redirected or resent message must not
//!   reach its original recipients); a header left empty is removed.
//! - Every `Bcc` header is removed: what it said never reaches anyone.
//! - The envelope's recipients that `To` and `Cc` do not name are given in
//!   one new `Bcc` header (the sending server does not show it to the
//!   recipients).
//!
//! `To` and `Cc` are always written anew from what was parsed, never kept
//! as they came: what the sender is given then names only the addresses
//! checked here, whatever another parser would have read in the original.
//! Addresses compare without regard to case.

use mail_parser::{Address, HeaderValue, MessageParser};

/// The longest header section handled (bytes).
pub const MAX_HEADER: usize = 256 * 1024;

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The new header section, its blank line included; the body follows
    /// unchanged from [`Decided::body_at`] of the original.
    pub header: Vec<u8>,
    /// Where the body begins in the original message.
    pub body_at: usize,
    /// Addresses in `To`/`Cc` that the envelope does not name: removed,
    /// they receive nothing.
    pub dropped: Vec<String>,
    /// Envelope recipients that `To`/`Cc` do not name: in the new `Bcc`.
    pub added_bcc: Vec<String>,
}

/// Whether `a` is a mailbox that reads the same wherever it is written:
/// `local@domain`, at most 320 bytes; the local part of atom characters
/// and dots (UTF-8 letters too, RFC 6531), never an encoded word's `=?`
/// or `?=`; the domain of letters, digits, hyphens and dots, or an address
/// literal in brackets. What is not is refused at `RCPT`, and never written
/// into a header.
pub fn plain_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    let atom = |c: char| {
        c.is_alphanumeric() && !c.is_ascii()
            || c.is_ascii_alphanumeric()
            || "!#$%&'*+-/=?^_`{|}~.".contains(c)
    };
    let label = |c: char| c.is_alphanumeric() || c == '-' || c == '.';
    let literal = domain.starts_with('[')
        && domain.ends_with(']')
        && domain[1..domain.len() - 1]
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '.' || c == ':');
    a.len() <= 320
        && !local.is_empty()
        && local.chars().all(atom)
        && !local.contains("=?")
        && !local.contains("?=")
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !domain.is_empty()
        && (literal || (domain.chars().all(label) && !domain.starts_with(['.', '-'])))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientsError {
    #[error("the recipient address {0} cannot be written into the message's header")]
    Unwritable(String),
    #[error("the message has no header section ending within {MAX_HEADER} bytes")]
    NoHeader,
    #[error("the envelope names no recipient")]
    NoRecipients,
}

/// The header section's end: (where the blank line starts, where the body
/// starts). A message of headers only ends at its end.
fn header_end(message: &[u8]) -> Option<(usize, usize)> {
    let limit = message.len().min(MAX_HEADER);
    let mut i = 0;
    while i < limit {
        if message[i..].starts_with(b"\r\n") {
            return Some((i, i + 2));
        }
        if message[i] == b'\n' {
            return Some((i, i + 1));
        }
        // Skip to the start of the next line.
        match message[i..limit].iter().position(|b| *b == b'\n') {
            Some(n) => i += n + 1,
            None => break,
        }
    }
    (message.len() <= MAX_HEADER).then_some((message.len(), message.len()))
}

/// A mailbox for a rewritten header: the address, with its display name
/// when it has one (quoted, or RFC 2047-encoded when not ASCII).
fn render(name: Option<&str>, address: &str) -> String {
    // Always in angle brackets: nothing in an address is then read as an
    // encoded word, a comment or a group.
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return format!("<{address}>");
    };
    if name.is_ascii() && !name.chars().any(|c| c.is_ascii_control()) {
        let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{quoted}\" <{address}>")
    } else {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(name.as_bytes());
        format!("=?UTF-8?B?{encoded}?= <{address}>")
    }
}

/// A header of `name` listing `mailboxes` (already rendered), one per
/// folded line.
fn header_line(name: &str, mailboxes: &[String]) -> Vec<u8> {
    format!("{name}: {}\r\n", mailboxes.join(",\r\n ")).into_bytes()
}

/// The Message-ID of the message starting with `head` (its header
/// section is enough), for the log; at most 200 bytes of it.
pub fn message_id(head: &[u8]) -> Option<String> {
    let end = header_end(head).map_or(head.len(), |(blank, _)| blank);
    let m = MessageParser::new().parse_headers(&head[..end])?;
    m.message_id()
        .map(|id| id.chars().filter(|c| !c.is_control()).take(200).collect())
}

/// Rewrites the header section of `message` (its start is enough: the
/// header section and the blank line) for the envelope's `recipients`.
pub fn decide(message: &[u8], recipients: &[String]) -> Result<Decided, RecipientsError> {
    if recipients.is_empty() {
        return Err(RecipientsError::NoRecipients);
    }
    if let Some(bad) = recipients.iter().find(|r| !plain_address(r)) {
        return Err(RecipientsError::Unwritable(bad.clone()));
    }
    let (blank, body_at) = header_end(message).ok_or(RecipientsError::NoHeader)?;
    let section = &message[..blank];
    let named = |a: &str| recipients.iter().any(|r| r.eq_ignore_ascii_case(a));
    // Parsed with its last line ended, as it will be sent.
    let mut ended = section.to_vec();
    if !ended.is_empty() && !ended.ends_with(b"\n") {
        ended.extend_from_slice(b"\r\n");
    }
    let parsed = MessageParser::new().parse_headers(&ended[..]);
    let headers = parsed.as_ref().map(|m| m.headers()).unwrap_or_default();
    let mut starts: Vec<usize> = headers.iter().map(|h| h.offset_field as usize).collect();
    starts.push(section.len());
    let mut out = Vec::with_capacity(blank + 256);
    // Whatever precedes the first header (nothing, in a sane message).
    out.extend_from_slice(&section[..starts[0].min(section.len())]);
    let mut shown: Vec<String> = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let raw = &section[starts[i]..starts[i + 1].max(starts[i])];
        let name = h.name().trim();
        let kind = if name.eq_ignore_ascii_case("To") {
            "To"
        } else if name.eq_ignore_ascii_case("Cc") {
            "Cc"
        } else if name.eq_ignore_ascii_case("Bcc")
            || name.to_ascii_lowercase().starts_with("resent-")
        {
            // Never passed on: the envelope says who is Bcc, and a resent
            // message's recipients are the envelope's too.
            continue;
        } else {
            out.extend_from_slice(raw);
            continue;
        };
        let mut kept = Vec::new();
        let mut keep = |n: Option<&str>, a: Option<&str>| {
            let Some(a) = a.map(str::trim).filter(|a| !a.is_empty()) else {
                return;
            };
            if named(a) {
                shown.push(a.to_owned());
                kept.push(render(n, a));
            } else {
                dropped.push(a.to_owned());
            }
        };
        match h.value() {
            HeaderValue::Address(Address::List(list)) => {
                for a in list {
                    keep(a.name.as_deref(), a.address.as_deref());
                }
            }
            HeaderValue::Address(Address::Group(groups)) => {
                for g in groups {
                    for a in &g.addresses {
                        keep(a.name.as_deref(), a.address.as_deref());
                    }
                }
            }
            // Not an address list: nothing in it can be trusted to name
            // only the envelope's recipients.
            _ => {}
        }
        if !kept.is_empty() {
            out.extend_from_slice(&header_line(kind, &kept));
        }
    }
    let added_bcc: Vec<String> = recipients
        .iter()
        .filter(|r| !shown.iter().any(|s| s.eq_ignore_ascii_case(r)))
        .cloned()
        .collect();
    if !added_bcc.is_empty() {
        let listed: Vec<String> = added_bcc.iter().map(|a| render(None, a)).collect();
        out.extend_from_slice(&header_line("Bcc", &listed));
    }
    out.extend_from_slice(b"\r\n");
    Ok(Decided {
        header: out,
        body_at,
        dropped,
        added_bcc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// The addresses a header section names in `field`, as a receiver
    /// would read them.
    fn field(header: &[u8], name: &str) -> Vec<String> {
        let m = MessageParser::new().parse_headers(header).expect("parses");
        m.headers()
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case(name))
            .flat_map(|h| match h.value() {
                HeaderValue::Address(Address::List(l)) => l
                    .iter()
                    .filter_map(|a| a.address.as_deref().map(str::to_owned))
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect()
    }

    const MSG: &[u8] = b"From: Ann <ann@x.test>\r\nTo: Bob <bob@y.test>, carol@y.test\r\nCc: \"Dan, D.\" <dan@y.test>\r\nBcc: eve@y.test\r\nSubject: hi\r\n\r\nbody\r\n";

    #[test]
    fn the_message_id_is_read_for_the_log() {
        assert_eq!(
            message_id(b"Subject: x\r\nMessage-ID: <a1@b.test>\r\n\r\nbody").as_deref(),
            Some("a1@b.test")
        );
        assert_eq!(
            message_id(b"Subject: x\r\n\r\nMessage-ID: <no@b.test>\r\n"),
            None
        );
    }

    #[test]
    fn the_envelope_named_in_the_headers_keeps_them() {
        let d = decide(
            MSG,
            &env(&["bob@y.test", "CAROL@y.test", "dan@y.test", "eve@y.test"]),
        )
        .expect("decided");
        let h = String::from_utf8(d.header.clone()).expect("utf-8");
        assert!(
            h.contains("To: \"Bob\" <bob@y.test>,\r\n <carol@y.test>\r\n"),
            "{h}"
        );
        assert!(h.contains("Cc: \"Dan, D.\" <dan@y.test>\r\n"), "{h}");
        assert_eq!(field(&d.header, "Bcc"), vec!["eve@y.test"]);
        assert!(d.dropped.is_empty());
        assert_eq!(d.added_bcc, vec!["eve@y.test"]);
        assert_eq!(&MSG[d.body_at..], b"body\r\n");
        assert!(
            h.ends_with("Subject: hi\r\nBcc: <eve@y.test>\r\n\r\n"),
            "{h}"
        );
    }

    #[test]
    fn header_only_recipients_are_removed_and_envelope_only_ones_are_bcc() {
        // A redirected message: the envelope names only zoe.
        let d = decide(MSG, &env(&["zoe@z.test", "carol@y.test"])).expect("decided");
        assert_eq!(field(&d.header, "To"), vec!["carol@y.test"]);
        assert!(field(&d.header, "Cc").is_empty(), "an empty Cc goes");
        assert_eq!(field(&d.header, "Bcc"), vec!["zoe@z.test"]);
        assert_eq!(d.dropped, vec!["bob@y.test", "dan@y.test"]);
        assert_eq!(d.added_bcc, vec!["zoe@z.test"]);
        let h = String::from_utf8(d.header).expect("utf-8");
        assert!(
            !h.contains("eve@y.test"),
            "a Bcc header reaches no one: {h}"
        );
        assert!(h.contains("From: Ann <ann@x.test>\r\n"), "{h}");
    }

    #[test]
    fn names_are_kept_when_a_header_is_rewritten() {
        let msg = "To: Bob <bob@y.test>, Jürgen <j@y.test>, x@y.test\r\n\r\n".as_bytes();
        let d = decide(msg, &env(&["bob@y.test", "j@y.test"])).expect("decided");
        let h = String::from_utf8(d.header.clone()).expect("utf-8");
        assert!(
            h.starts_with("To: \"Bob\" <bob@y.test>,\r\n =?UTF-8?B?SsO8cmdlbg==?= <j@y.test>\r\n"),
            "{h}"
        );
        assert_eq!(field(&d.header, "To"), vec!["bob@y.test", "j@y.test"]);
        assert_eq!(d.dropped, vec!["x@y.test"]);
    }

    #[test]
    fn only_plain_addresses_are_written() {
        for good in [
            "a@y.test",
            "ü@bücher.test",
            "o'neil+x@[192.0.2.1]",
            "a.b@x-y.test",
        ] {
            assert!(plain_address(good), "{good}");
        }
        for bad in [
            "=?UTkC@-4?B?Os?=x",
            "a b@x.test",
            "a@x@y",
            "@x.test",
            "a@",
            "a@-x.test",
            ".a@x.test",
            "a\"b@x.test",
            "a@x_y.test",
        ] {
            assert!(!plain_address(bad), "{bad}");
        }
        assert_eq!(
            decide(MSG, &env(&["=?utf-8?B?eA==?=@x.test"])),
            Err(RecipientsError::Unwritable(
                "=?utf-8?B?eA==?=@x.test".into()
            ))
        );
    }

    #[test]
    fn odd_spellings_and_resent_headers_do_not_pass() {
        let msg =
            b"to : x@y.test\r\nResent-To: r@y.test\r\nRESENT-CC: s@y.test\r\nSubject: s\r\n\r\n";
        let d = decide(msg, &env(&["a@y.test"])).expect("decided");
        let h = String::from_utf8(d.header).expect("utf-8");
        assert_eq!(h, "Subject: s\r\nBcc: <a@y.test>\r\n\r\n");
    }

    /// A header section that ends without a line end, as a fuzzer found
    /// it: nothing that another reading could see survives.
    #[test]
    fn what_was_not_parsed_is_not_passed_on() {
        let d = decide(b"To: tea\r\n a@y.test, b@ya@y..", &env(&["a@y.test"])).expect("decided");
        let h = String::from_utf8(d.header.clone()).expect("utf-8");
        assert!(!h.contains("b@ya"), "{h}");
        assert_eq!(field(&d.header, "To"), vec!["a@y.test"]);
    }

    #[test]
    fn groups_lf_endings_and_headers_only() {
        let msg = b"To: team: a@y.test, b@y.test;\nSubject: s\n\nbody";
        let d = decide(msg, &env(&["b@y.test"])).expect("decided");
        assert_eq!(field(&d.header, "To"), vec!["b@y.test"]);
        assert_eq!(&msg[d.body_at..], b"body");
        let d = decide(b"Subject: only headers\r\n", &env(&["a@y.test"])).expect("decided");
        assert_eq!(field(&d.header, "Bcc"), vec!["a@y.test"]);
        assert_eq!(decide(MSG, &[]), Err(RecipientsError::NoRecipients));
        let huge = vec![b'x'; MAX_HEADER + 10];
        assert_eq!(
            decide(&huge, &env(&["a@y.test"])),
            Err(RecipientsError::NoHeader)
        );
    }
}
