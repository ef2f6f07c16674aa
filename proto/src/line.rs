//! Line framing for line-based protocols (SMTP, POP3, SASL exchanges): find
//! the end of the first line without scanning past the cap.

/// What the start of a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// The first `n` bytes are a line, LF included.
    Complete(usize),
    /// No line end yet, and the buffer is within the cap.
    Incomplete,
    /// The line is longer than the cap (CRLF included).
    TooLong,
}

/// Frames the first line of `buf`, at most `max` bytes long with its line end.
pub fn frame_line(buf: &[u8], max: usize) -> Line {
    let window = &buf[..buf.len().min(max)];
    match window.iter().position(|b| *b == b'\n') {
        Some(i) => Line::Complete(i + 1),
        None if buf.len() >= max => Line::TooLong,
        None => Line::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        let cases: &[(&[u8], usize, Line)] = &[
            (b"", 8, Line::Incomplete),
            (b"abc", 8, Line::Incomplete),
            (b"abc\r\n", 8, Line::Complete(5)),
            (b"abc\nrest", 8, Line::Complete(4)),
            (b"1234567\n", 8, Line::Complete(8)),
            (b"12345678", 8, Line::TooLong),
            (b"12345678\n", 8, Line::TooLong),
            (b"1234567", 8, Line::Incomplete),
        ];
        for (buf, max, want) in cases {
            assert_eq!(frame_line(buf, *max), *want, "{buf:?}");
        }
    }
}
