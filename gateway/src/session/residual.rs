//! What the client pipelined behind its successful login, screened before
//! it goes upstream: a further login command (`AUTH`, `USER`, `PASS`,
//! `APOP`, IMAP `LOGIN` / `AUTHENTICATE`) carries a *local* password, which
//! must never reach the provider (SPEC §4). Such a line is answered here
//! and dropped; everything else is relayed unchanged.
//!
//! Replies must reach the client in the order of its commands. A login
//! line before any relayed command is answered at once, right after the
//! login's own reply, and so is every line after it (a SASL response, a
//! `PASS` behind `USER`: nothing behind a login command goes upstream),
//! each with the protocol's refusal. A login line *behind* a relayed
//! command cannot be answered in its place without reading the upstream's
//! replies (nothing is parsed after login): that line and everything after
//! it are dropped, and the log says so. A client never does either; a
//! hostile or broken one loses its pipelined tail, never a password.

use tracing::warn;

/// How a dialect reads one complete line (CRLF included) of the residual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A login command.
    Credential,
    /// A command to relay.
    Relay,
    /// A command to relay whose next `n` bytes are data (an IMAP literal
    /// announced at its end), relayed unread.
    RelayWithData(usize),
    /// A command after which the rest is message data (SMTP `DATA`,
    /// `BDAT`): relay it and everything after it unread.
    RelayRest,
}

/// The residual, split into what is answered here and what goes upstream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Screened {
    /// Local replies, sent to the client after the login's reply.
    pub replies: Vec<u8>,
    /// The bytes to relay upstream.
    pub forward: Vec<u8>,
}

/// Screens `residual` with `classify`, answering refused lines with
/// `refuse` (see the module's comment).
pub fn screen(
    residual: &[u8],
    classify: impl Fn(&[u8]) -> Line,
    refuse: impl Fn(&[u8]) -> Vec<u8>,
) -> Screened {
    let mut out = Screened::default();
    let mut relayed = false;
    let mut refusing = false;
    let mut rest = residual;
    while !rest.is_empty() {
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n").map(|i| i + 2) else {
            // An incomplete last line: it could be the start of a login
            // command whose password arrives later.
            if refusing || could_be_credential(rest, &classify) {
                warn!("a partial command pipelined after the login was dropped");
            } else {
                out.forward.extend_from_slice(rest);
            }
            return out;
        };
        let (line, after) = rest.split_at(end);
        let kind = classify(line);
        if refusing || kind == Line::Credential {
            if relayed {
                warn!(
                    dropped = rest.len(),
                    "a login command pipelined behind other commands after a successful login: it and what follows were dropped"
                );
                return out;
            }
            if !refusing {
                warn!(
                    "a login command pipelined after a successful login was answered locally and dropped, with what follows it"
                );
            }
            refusing = true;
            out.replies.extend_from_slice(&refuse(line));
            rest = after;
            continue;
        }
        match kind {
            Line::Credential | Line::Relay => {
                relayed = true;
                out.forward.extend_from_slice(line);
                rest = after;
            }
            Line::RelayWithData(n) => {
                relayed = true;
                let take = end.saturating_add(n).min(rest.len());
                out.forward.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
            }
            Line::RelayRest => {
                out.forward.extend_from_slice(rest);
                return out;
            }
        }
    }
    out
}

/// Whether an incomplete line, completed, could be a login command: it
/// already reads as one, or its first or second word (after an IMAP tag)
/// is cut inside a login verb.
fn could_be_credential(partial: &[u8], classify: &impl Fn(&[u8]) -> Line) -> bool {
    let mut line = partial.to_vec();
    // Arguments and the line end: enough for every verb to be recognised
    // whatever its arguments would have been.
    line.extend_from_slice(b" x\r\n");
    if classify(&line) == Line::Credential {
        return true;
    }
    let words: Vec<&[u8]> = partial.split(|b| *b == b' ').collect();
    let cut = words[words.len() - 1].to_ascii_uppercase();
    words.len() <= 2 && cut.len() >= 2 && WORDS.iter().any(|w| w.starts_with(&cut))
}

/// The login verbs of the three protocols.
const WORDS: [&[u8]; 6] = [
    b"AUTH",
    b"USER",
    b"PASS",
    b"APOP",
    b"LOGIN",
    b"AUTHENTICATE",
];

/// The first word of `line` (upper-cased) and what follows it.
pub fn verb(line: &[u8]) -> (Vec<u8>, &[u8]) {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let (word, rest) = match line.iter().position(|b| *b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &b""[..]),
    };
    (word.to_ascii_uppercase(), rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtpish(line: &[u8]) -> Line {
        match verb(line).0.as_slice() {
            b"AUTH" => Line::Credential,
            b"DATA" => Line::RelayRest,
            b"BIG" => Line::RelayWithData(4),
            _ => Line::Relay,
        }
    }

    fn refuse(_: &[u8]) -> Vec<u8> {
        b"503 already\r\n".to_vec()
    }

    #[test]
    fn known_answers() {
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            (b"", b"", b""),
            (b"MAIL FROM:<a>\r\n", b"", b"MAIL FROM:<a>\r\n"),
            (
                b"AUTH PLAIN c2VjcmV0\r\nMAIL FROM:<a>\r\n",
                b"503 already\r\n503 already\r\n",
                b"",
            ),
            // Everything behind a login command is refused too: a SASL
            // response carries the password.
            (
                b"auth login\r\nc2VjcmV0\r\nNOOP\r\n",
                b"503 already\r\n503 already\r\n503 already\r\n",
                b"",
            ),
            (b"AUTH PLAIN\r\nAGEAYg", b"503 already\r\n", b""),
            // Behind a relayed command: it and the rest are dropped.
            (b"NOOP\r\nAUTH PLAIN x\r\nQUIT\r\n", b"", b"NOOP\r\n"),
            // Message data is not read.
            (
                b"DATA\r\nAUTH PLAIN x\r\n.\r\n",
                b"",
                b"DATA\r\nAUTH PLAIN x\r\n.\r\n",
            ),
            (b"BIG\r\nAUTH\r\nNOOP\r\n", b"", b"BIG\r\nAUTH\r\nNOOP\r\n"),
            // A partial line that may become a login command is held back.
            (b"NOOP\r\nAUTH PLA", b"", b"NOOP\r\n"),
            (b"NOOP\r\nAU", b"", b"NOOP\r\n"),
            (b"NOOP\r\nRCPT TO:<b", b"", b"NOOP\r\nRCPT TO:<b"),
        ];
        for (input, replies, forward) in cases {
            let s = screen(input, smtpish, refuse);
            assert_eq!(
                (s.replies.as_slice(), s.forward.as_slice()),
                (*replies, *forward),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
