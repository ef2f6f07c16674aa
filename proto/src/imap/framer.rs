//! Splits client input into whole IMAP messages before any detailed parsing.
//!
//! An IMAP command is one or more lines; a line that ends in a literal
//! announcement (`{n}` or `{n+}`, RFC 9051 §4.3 and RFC 7888) is followed by
//! `n` bytes of literal data and then the rest of the command. The framer
//! finds where a message ends, enforcing caps on each line, each literal and
//! the whole message, and reports synchronising literals so the caller can
//! send the `+` continuation the client waits for.
//!
//! On overflow it does not try to resynchronise: the caller answers with the
//! protocol's error and closes the connection.

/// Size caps applied while framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line, CRLF included.
    pub max_line: usize,
    /// Largest literal.
    pub max_literal: u32,
    /// Largest whole message: lines and literals together.
    pub max_message: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 8 * 1024,
            max_literal: 8 * 1024,
            max_message: 64 * 1024,
        }
    }
}

/// What the framer found at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole message occupies the first `n` bytes.
    Complete(usize),
    /// More input is needed.
    Incomplete,
    /// The client announced a synchronising literal of this length and waits
    /// for a continuation request before sending it. Reported once per
    /// literal; call again after more input arrives.
    SyncLiteral { length: u32 },
    /// A line exceeds [`Limits::max_line`].
    LineTooLong,
    /// A literal exceeds [`Limits::max_literal`], or the message exceeds
    /// [`Limits::max_message`].
    MessageTooLarge,
}

/// A resumable framer. Positions are relative to the start of the caller's
/// buffer; call [`Framer::reset`] after removing a complete message.
#[derive(Debug, Clone, Default)]
pub struct Framer {
    limits: Limits,
    /// Start of the line not yet known to be complete.
    scan: usize,
    /// End of the announcement line whose sync literal was already reported.
    announced: Option<usize>,
}

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Framer {
            limits,
            scan: 0,
            announced: None,
        }
    }

    /// Forgets progress; call after the caller consumed a complete message.
    pub fn reset(&mut self) {
        self.scan = 0;
        self.announced = None;
    }

    /// Frames one message that may contain literals.
    pub fn next_message(&mut self, buf: &[u8]) -> Frame {
        loop {
            let start = self.scan;
            let Some(line_len) = find_line(&buf[start..], self.limits.max_line) else {
                return self.incomplete_or_overflow(buf, start);
            };
            if line_len > self.limits.max_line {
                return Frame::LineTooLong;
            }
            let line_end = start + line_len;
            if line_end > self.limits.max_message {
                return Frame::MessageTooLarge;
            }
            let Some((length, sync)) = literal_announcement(&buf[start..line_end]) else {
                self.reset();
                return Frame::Complete(line_end);
            };
            if length > self.limits.max_literal
                || line_end + length as usize > self.limits.max_message
            {
                return Frame::MessageTooLarge;
            }
            let literal_end = line_end + length as usize;
            if buf.len() >= literal_end {
                self.scan = literal_end;
                continue;
            }
            if sync && self.announced != Some(line_end) {
                self.announced = Some(line_end);
                return Frame::SyncLiteral { length };
            }
            return Frame::Incomplete;
        }
    }

    /// Frames one plain line (a SASL response): literals are not recognised.
    pub fn next_line(&mut self, buf: &[u8]) -> Frame {
        match crate::line::frame_line(buf, self.limits.max_line) {
            crate::line::Line::Complete(n) => Frame::Complete(n),
            crate::line::Line::Incomplete => Frame::Incomplete,
            crate::line::Line::TooLong => Frame::LineTooLong,
        }
    }

    fn incomplete_or_overflow(&self, buf: &[u8], start: usize) -> Frame {
        if buf.len() - start > self.limits.max_line {
            Frame::LineTooLong
        } else if buf.len() > self.limits.max_message {
            Frame::MessageTooLarge
        } else {
            Frame::Incomplete
        }
    }
}

/// Length of the first line including its LF, looking no further than one
/// byte past `max` (so a hostile buffer is never scanned beyond the cap).
fn find_line(buf: &[u8], max: usize) -> Option<usize> {
    let window = &buf[..buf.len().min(max.saturating_add(1))];
    match window.iter().position(|b| *b == b'\n') {
        Some(i) => Some(i + 1),
        None if buf.len() > max => Some(max + 1),
        None => None,
    }
}

/// `{n}` or `{n+}` right before the line's CRLF (or bare LF).
fn literal_announcement(line: &[u8]) -> Option<(u32, bool)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|b| *b == b'{')?;
    let mut digits = &inner[open + 1..];
    let sync = match digits.strip_suffix(b"+") {
        Some(d) => {
            digits = d;
            false
        }
        None => true,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Saturate: any length past u32 is over every cap anyway.
    let n = digits.iter().fold(0u32, |n, d| {
        n.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    });
    Some((n, sync))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Limits {
        Limits {
            max_line: 64,
            max_literal: 32,
            max_message: 128,
        }
    }

    #[test]
    fn known_answers() {
        let cases: &[(&[u8], Frame)] = &[
            (b"", Frame::Incomplete),
            (b"a NOOP", Frame::Incomplete),
            (b"a NOOP\r\n", Frame::Complete(8)),
            (b"a NOOP\n", Frame::Complete(7)),
            (b"a NOOP\r\nb NOOP\r\n", Frame::Complete(8)),
            (b"a LOGIN {3}\r\n", Frame::SyncLiteral { length: 3 }),
            (b"a LOGIN {3+}\r\n", Frame::Incomplete),
            (b"a LOGIN {3+}\r\nbob", Frame::Incomplete),
            (b"a LOGIN {3+}\r\nbob pw\r\n", Frame::Complete(22)),
            (
                b"a LOGIN {3+}\r\nbob {2+}\r\npw\r\nrest",
                Frame::Complete(28),
            ),
            (b"a LOGIN {3}\r\nb\nb x\r\n", Frame::Complete(20)),
            (b"a LOGIN {33}\r\n", Frame::MessageTooLarge),
            (b"a LOGIN {99999999999}\r\n", Frame::MessageTooLarge),
            (b"a LOGIN \"{3}\"\r\n", Frame::Complete(15)),
            (b"a LOGIN x{}\r\n", Frame::Complete(13)),
        ];
        for (input, want) in cases {
            let mut f = Framer::new(small());
            assert_eq!(
                f.next_message(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn line_cap() {
        let mut f = Framer::new(small());
        assert_eq!(f.next_message(&[b'a'; 64]), Frame::Incomplete);
        assert_eq!(f.next_message(&[b'a'; 65]), Frame::LineTooLong);
        let mut long = vec![b'a'; 70];
        long.extend_from_slice(b"\r\n");
        assert_eq!(f.next_message(&long), Frame::LineTooLong);
        assert_eq!(f.next_line(&long), Frame::LineTooLong);
        assert_eq!(f.next_line(b"abc\r\n"), Frame::Complete(5));
        assert_eq!(f.next_line(b"abc {3}\r\n"), Frame::Complete(9));
    }

    #[test]
    fn message_cap_across_literals() {
        let mut f = Framer::new(small());
        let mut msg = Vec::new();
        for _ in 0..4 {
            msg.extend_from_slice(b"x {30+}\r\n");
            msg.extend_from_slice(&[b'z'; 30]);
        }
        msg.extend_from_slice(b"\r\n");
        assert_eq!(f.next_message(&msg), Frame::MessageTooLarge);
    }

    #[test]
    fn sync_literal_reported_once_then_completes() {
        let mut f = Framer::new(small());
        let mut buf = b"a LOGIN {3}\r\n".to_vec();
        assert_eq!(f.next_message(&buf), Frame::SyncLiteral { length: 3 });
        assert_eq!(f.next_message(&buf), Frame::Incomplete);
        buf.extend_from_slice(b"bo");
        assert_eq!(f.next_message(&buf), Frame::Incomplete);
        buf.extend_from_slice(b"b {2}\r\n");
        assert_eq!(f.next_message(&buf), Frame::SyncLiteral { length: 2 });
        buf.extend_from_slice(b"pw\r\n");
        assert_eq!(f.next_message(&buf), Frame::Complete(buf.len()));
    }

    /// Feeding a message byte by byte gives the same result as feeding it
    /// whole: nothing before the end is complete.
    #[test]
    fn every_prefix_is_incomplete() {
        let msg: &[u8] = b"tag LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n";
        let mut f = Framer::new(Limits::default());
        for end in 0..msg.len() {
            let got = f.next_message(&msg[..end]);
            assert_eq!(got, Frame::Incomplete, "prefix {end}");
        }
        assert_eq!(f.next_message(msg), Frame::Complete(msg.len()));
    }
}
