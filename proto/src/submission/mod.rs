//! The server side of SMTP message submission after AUTH, sans I/O: what
//! the gateway runs when it receives a message itself instead of relaying
//! the session (sending through Microsoft Graph). RFC 5321 transactions
//! (`MAIL`, `RCPT`, `DATA` with dot-unstuffing, `RSET`, `NOOP`, `QUIT`),
//! RFC 1870 `SIZE`, RFC 3030 `BDAT` (CHUNKING), RFC 6152 `8BITMIME`, RFC
//! 6531 `SMTPUTF8`, RFC 2920 pipelining and RFC 2034 enhanced status codes.
//!
//! The caller feeds bytes and takes [`Event`]s: replies to write, the
//! message's bytes as they arrive ([`Event::Data`], already unstuffed, to
//! be spooled), and [`Event::Message`] once a message is complete. Nothing
//! more is parsed until the caller answers the message with
//! [`Submission::answered`]: the `250` is written only once the message
//! was accepted where it goes, so a client keeps its message until then.
//! A message over the size limit is read to its end and dropped, then
//! refused with `552`; its bytes are never handed out.

use std::collections::VecDeque;

mod paths;
mod types;

use paths::{is_address, path_after};
pub use types::{Envelope, Event, Limits, extensions};

/// Replies of the transaction commands.
const OK_SENDER: &str = "250 2.1.0 Sender OK\r\n";
const OK_RECIPIENT: &str = "250 2.1.5 Recipient OK\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading commands.
    Commands,
    /// Inside `DATA`; `line_start`: the next byte begins a line.
    Data {
        line_start: bool,
    },
    /// Inside a `BDAT` chunk: bytes still to read, and whether it is the
    /// last chunk.
    Chunk {
        left: usize,
        last: bool,
    },
    /// A message was handed out; nothing is read until it is answered.
    Waiting,
    Closed,
}

/// One submission session after AUTH.
#[derive(Debug)]
pub struct Submission {
    limits: Limits,
    buf: Vec<u8>,
    out: VecDeque<Event>,
    phase: Phase,
    from: Option<String>,
    recipients: Vec<String>,
    size: usize,
    /// The message grew over the limit: the rest is read and dropped.
    oversized: bool,
    /// `BDAT` was used in this transaction (then `DATA` may not be).
    chunked: bool,
    /// The current `BDAT` chunk was refused: its bytes are read and
    /// dropped (RFC 3030 §2: they follow the command regardless).
    dropping: bool,
    /// Set by the caller: transactions are refused at `MAIL` with this
    /// reply (e.g. while the account is throttled).
    refusal: Option<String>,
}

impl Submission {
    pub fn new(limits: Limits) -> Submission {
        Submission {
            limits,
            buf: Vec::new(),
            out: VecDeque::new(),
            phase: Phase::Commands,
            from: None,
            recipients: Vec::new(),
            size: 0,
            oversized: false,
            chunked: false,
            dropping: false,
            refusal: None,
        }
    }

    /// Bytes from the client.
    pub fn feed(&mut self, data: &[u8]) {
        if self.phase != Phase::Closed {
            self.buf.extend_from_slice(data);
        }
    }

    /// Refuses new transactions at `MAIL` with `reply` (a full reply line,
    /// e.g. `451 4.7.0 ...`) until called with `None`.
    pub fn refuse_transactions(&mut self, reply: Option<String>) {
        self.refusal = reply;
    }

    /// The answer to the message last handed out (a whole reply line, CRLF
    /// included): written, and a new transaction may begin.
    pub fn answered(&mut self, reply: &str) {
        if self.phase != Phase::Waiting {
            return;
        }
        self.reply(reply);
        self.reset();
        self.phase = Phase::Commands;
    }

    /// The next thing to do; `None` when more input is needed (or while a
    /// message waits for its answer).
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.out.pop_front() {
                return Some(e);
            }
            let progressed = match self.phase {
                Phase::Commands => self.command(),
                Phase::Data { line_start } => self.data(line_start),
                Phase::Chunk { left, last } => self.chunk(left, last),
                Phase::Waiting | Phase::Closed => false,
            };
            if !progressed && self.out.is_empty() {
                return None;
            }
        }
    }

    fn reply(&mut self, text: &str) {
        self.out.push_back(Event::Reply(text.as_bytes().to_vec()));
    }

    /// Forgets the transaction (and its bytes, when some were handed out).
    fn reset(&mut self) {
        self.from = None;
        self.recipients.clear();
        self.size = 0;
        self.oversized = false;
        self.chunked = false;
    }

    fn abort_message(&mut self) {
        if self.size > 0 || self.chunked {
            self.out.push_back(Event::Discard);
        }
        self.reset();
    }

    fn close(&mut self, reply: &str) {
        self.reply(reply);
        self.out.push_back(Event::Close);
        self.phase = Phase::Closed;
        self.buf.clear();
    }

    /// One command line, if a whole one is buffered.
    fn command(&mut self) -> bool {
        let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
            if self.buf.len() >= self.limits.max_line {
                self.close("500 5.5.6 Line too long\r\n");
                return true;
            }
            return false;
        };
        if end + 1 > self.limits.max_line {
            self.close("500 5.5.6 Line too long\r\n");
            return true;
        }
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
            None => (line.to_ascii_uppercase(), ""),
        };
        match verb.as_str() {
            "MAIL" => self.mail(args),
            "RCPT" => self.rcpt(args),
            "DATA" => self.start_data(args),
            "BDAT" => self.bdat(args),
            "RSET" => {
                self.abort_message();
                self.reply("250 2.0.0 Reset\r\n");
            }
            "NOOP" => self.reply("250 2.0.0 OK\r\n"),
            "QUIT" => {
                self.abort_message();
                self.close("221 2.0.0 Bye\r\n");
            }
            "EHLO" | "HELO" => {
                // A new greeting resets the transaction (RFC 5321 §4.1.4).
                self.abort_message();
                let mut r = String::from("250-mailgate\r\n");
                let ext = if verb == "EHLO" {
                    extensions(&self.limits)
                } else {
                    Vec::new()
                };
                for (i, e) in ext.iter().enumerate() {
                    let sep = if i + 1 == ext.len() { ' ' } else { '-' };
                    r.push_str(&format!("250{sep}{e}\r\n"));
                }
                if ext.is_empty() {
                    r = "250 mailgate\r\n".into();
                }
                self.reply(&r);
            }
            "AUTH" => self.reply("503 5.5.1 Already authenticated\r\n"),
            "STARTTLS" => self.reply("503 5.5.1 STARTTLS is not possible now\r\n"),
            "VRFY" => self.reply("252 2.5.0 Cannot verify the user; send the message\r\n"),
            "HELP" => self.reply("214 2.0.0 See RFC 5321\r\n"),
            "" => self.reply("500 5.5.2 Empty command\r\n"),
            _ => self.reply("500 5.5.2 Command not recognized\r\n"),
        }
        true
    }

    fn mail(&mut self, args: &str) {
        if self.from.is_some() {
            return self.reply("503 5.5.1 Nested MAIL command\r\n");
        }
        let Some((path, params)) = path_after(args, "FROM:") else {
            return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
        };
        if !path.is_empty() && !is_address(&path) {
            return self.reply("501 5.1.7 Bad sender address syntax\r\n");
        }
        for p in params.split_whitespace() {
            let (key, value) = p.split_once('=').unwrap_or((p, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(n) if n > self.limits.max_message as u64 => {
                        return self.reply(&format!(
                            "552 5.3.4 The message is larger than the limit of {} bytes\r\n",
                            self.limits.max_message
                        ));
                    }
                    Ok(_) => {}
                    Err(_) => return self.reply("501 5.5.4 Bad SIZE parameter\r\n"),
                },
                "BODY" => {
                    if !matches!(
                        value.to_ascii_uppercase().as_str(),
                        "7BIT" | "8BITMIME" | "BINARYMIME"
                    ) {
                        return self.reply("501 5.5.4 Bad BODY parameter\r\n");
                    }
                }
                "SMTPUTF8" | "AUTH" | "RET" | "ENVID" => {}
                _ => {
                    return self.reply("555 5.5.4 Unsupported MAIL parameter\r\n");
                }
            }
        }
        if let Some(r) = self.refusal.clone() {
            return self.reply(&r);
        }
        self.from = Some(path);
        self.reply(OK_SENDER);
    }

    fn rcpt(&mut self, args: &str) {
        if self.from.is_none() {
            return self.reply("503 5.5.1 Need MAIL command first\r\n");
        }
        let Some((path, _params)) = path_after(args, "TO:") else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address>\r\n");
        };
        if !is_address(&path) {
            return self.reply("501 5.1.3 Bad recipient address syntax\r\n");
        }
        if self.recipients.len() >= self.limits.max_recipients {
            return self.reply("452 4.5.3 Too many recipients\r\n");
        }
        if !self
            .recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&path))
        {
            self.recipients.push(path);
        }
        self.reply(OK_RECIPIENT);
    }

    /// Whether a message body may begin: a sender and recipients.
    fn ready_for_body(&mut self) -> bool {
        if self.from.is_none() {
            self.reply("503 5.5.1 Need MAIL command first\r\n");
            false
        } else if self.recipients.is_empty() {
            self.reply("554 5.5.1 No valid recipients\r\n");
            false
        } else {
            true
        }
    }

    fn start_data(&mut self, args: &str) {
        if !args.is_empty() {
            return self.reply("501 5.5.4 DATA takes no argument\r\n");
        }
        if self.chunked {
            return self.reply("503 5.5.1 DATA after BDAT\r\n");
        }
        if !self.ready_for_body() {
            return;
        }
        self.reply("354 Start mail input; end with <CRLF>.<CRLF>\r\n");
        self.phase = Phase::Data { line_start: true };
    }

    fn bdat(&mut self, args: &str) {
        let mut words = args.split_whitespace();
        let size = words.next().and_then(|n| n.parse::<usize>().ok());
        let last = match words.next() {
            None => false,
            Some(w) if w.eq_ignore_ascii_case("LAST") => true,
            Some(_) => return self.reply("501 5.5.4 Syntax: BDAT size [LAST]\r\n"),
        };
        let Some(size) = size.filter(|_| words.next().is_none()) else {
            return self.reply("501 5.5.4 Syntax: BDAT size [LAST]\r\n");
        };
        if !self.chunked && !self.ready_for_body() {
            self.dropping = true;
            self.phase = Phase::Chunk { left: size, last };
            return;
        }
        self.chunked = true;
        self.phase = Phase::Chunk { left: size, last };
    }

    /// Counts `n` more bytes; false once the message is over the limit.
    fn grow(&mut self, n: usize) -> bool {
        self.size = self.size.saturating_add(n);
        if self.size > self.limits.max_message && !self.oversized {
            self.oversized = true;
            self.out.push_back(Event::Discard);
        }
        !self.oversized
    }

    fn emit(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() && self.grow(bytes.len()) {
            self.out.push_back(Event::Data(bytes));
        }
    }

    /// Reads `DATA` content: whole lines while they are buffered, the
    /// start of a long line as soon as it cannot be the end mark.
    fn data(&mut self, mut line_start: bool) -> bool {
        let mut chunk = Vec::new();
        let mut used = 0;
        let mut ended = false;
        while used < self.buf.len() {
            let rest = &self.buf[used..];
            if line_start && rest[0] == b'.' {
                // ".\r\n" ends the message; "." + more is a stuffed dot.
                if rest.len() < 2 || (rest[1] == b'\r' && rest.len() < 3) {
                    break;
                }
                if rest.starts_with(b".\r\n") || rest.starts_with(b".\n") {
                    used += if rest[1] == b'\r' { 3 } else { 2 };
                    ended = true;
                    break;
                }
                used += 1;
                line_start = false;
                continue;
            }
            match rest.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    chunk.extend_from_slice(&rest[..=i]);
                    used += i + 1;
                    line_start = true;
                }
                None => {
                    chunk.extend_from_slice(rest);
                    used = self.buf.len();
                    line_start = false;
                }
            }
        }
        self.buf.drain(..used);
        self.emit(chunk);
        if ended {
            self.finish();
        } else {
            self.phase = Phase::Data { line_start };
        }
        used > 0 || ended
    }

    fn chunk(&mut self, left: usize, last: bool) -> bool {
        let n = left.min(self.buf.len());
        let bytes: Vec<u8> = self.buf.drain(..n).collect();
        let left = left - n;
        if self.dropping {
            if left == 0 {
                self.dropping = false;
                self.phase = Phase::Commands;
            } else {
                self.phase = Phase::Chunk { left, last };
            }
            return n > 0 || left == 0;
        }
        self.emit(bytes);
        if left > 0 {
            self.phase = Phase::Chunk { left, last };
            return n > 0;
        }
        if last {
            self.finish();
        } else {
            self.phase = Phase::Commands;
            if self.oversized {
                self.reply("552 5.3.4 The message is over the size limit\r\n");
            } else {
                self.reply(&format!("250 2.0.0 {} octets received\r\n", self.size));
            }
        }
        true
    }

    /// The end of a message: hand it out, or refuse it when over the size.
    fn finish(&mut self) {
        if self.oversized {
            self.reply(&format!(
                "552 5.3.4 The message is larger than the limit of {} bytes\r\n",
                self.limits.max_message
            ));
            self.reset();
            self.phase = Phase::Commands;
            return;
        }
        self.out.push_back(Event::Message(Envelope {
            from: self.from.clone().unwrap_or_default(),
            recipients: self.recipients.clone(),
            size: self.size,
        }));
        self.phase = Phase::Waiting;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input`, collects the replies as text, the data, and the
    /// first other event.
    fn run(m: &mut Submission, input: &[u8]) -> (String, Vec<u8>, Option<Event>) {
        m.feed(input);
        let (mut replies, mut data) = (String::new(), Vec::new());
        while let Some(e) = m.next_event() {
            match e {
                Event::Reply(r) => replies.push_str(&String::from_utf8_lossy(&r)),
                Event::Data(d) => data.extend(d),
                other => return (replies, data, Some(other)),
            }
        }
        (replies, data, None)
    }

    fn small() -> Limits {
        Limits {
            max_message: 64,
            max_line: 128,
            max_recipients: 2,
        }
    }

    #[test]
    fn a_pipelined_transaction_with_dot_unstuffing() {
        let mut m = Submission::new(Limits::default());
        let (r, data, e) = run(
            &mut m,
            b"MAIL FROM:<a@x.test> SIZE=40 BODY=8BITMIME\r\nRCPT TO:<b@y.test>\r\nrcpt to: <C@y.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: hi\r\n\r\n..leading dot\r\n.\r\n",
        );
        assert_eq!(
            r,
            "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n"
        );
        assert_eq!(data, b"Subject: hi\r\n\r\n.leading dot\r\n");
        assert_eq!(
            e,
            Some(Event::Message(Envelope {
                from: "a@x.test".into(),
                recipients: vec!["b@y.test".into(), "C@y.test".into()],
                size: 29,
            }))
        );
        // Nothing more until the message is answered.
        m.feed(b"NOOP\r\n");
        assert_eq!(m.next_event(), None);
        m.answered("250 2.0.0 Sent\r\n");
        let (r, _, e) = run(&mut m, b"");
        assert_eq!(r, "250 2.0.0 Sent\r\n250 2.0.0 OK\r\n");
        assert_eq!(e, None);
    }

    #[test]
    fn the_end_mark_split_across_reads() {
        let mut m = Submission::new(Limits::default());
        run(&mut m, b"MAIL FROM:<>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
        let mut data = Vec::new();
        let mut end = None;
        for piece in [&b"line one\r\n."[..], b".two\r", b"\n", b".", b"\r", b"\n"] {
            let (_, d, e) = run(&mut m, piece);
            data.extend(d);
            if e.is_some() {
                end = e;
            }
        }
        assert_eq!(data, b"line one\r\n.two\r\n");
        match end {
            Some(Event::Message(env)) => {
                assert_eq!(env.from, "");
                assert_eq!(env.size, 16);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bdat_chunks_binary_and_last() {
        let mut m = Submission::new(Limits::default());
        run(&mut m, b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
        let (r, data, e) = run(&mut m, b"BDAT 5\r\n.\r\nabBDAT 3 LAST\r\nxyz");
        assert_eq!(r, "250 2.0.0 5 octets received\r\n");
        assert_eq!(data, b".\r\nabxyz", "no unstuffing in chunks");
        assert!(matches!(e, Some(Event::Message(Envelope { size: 8, .. }))));
        m.answered("250 2.0.0 Sent\r\n");
        let (r, _, _) = run(&mut m, b"DATA\r\n");
        assert_eq!(r, "250 2.0.0 Sent\r\n503 5.5.1 Need MAIL command first\r\n");
    }

    #[test]
    fn a_refused_chunk_is_read_and_dropped() {
        let mut m = Submission::new(Limits::default());
        let (r, data, e) = run(&mut m, b"BDAT 8 LAST\r\nMAIL F\r\nNOOP\r\n");
        assert_eq!(
            r, "503 5.5.1 Need MAIL command first\r\n250 2.0.0 OK\r\n",
            "the chunk's bytes are not read as commands"
        );
        assert!(data.is_empty());
        assert_eq!(e, None);
    }

    #[test]
    fn order_syntax_and_limits_get_their_codes() {
        let mut m = Submission::new(small());
        let (r, _, e) = run(
            &mut m,
            b"RCPT TO:<b@y.test>\r\nDATA\r\nMAIL FROM:a@x.test\r\nMAIL FROM:<a@x.test> SIZE=65\r\nMAIL FROM:<a@x.test> FOO=1\r\nMAIL FROM:<a@x.test>\r\nMAIL FROM:<a@x.test>\r\nDATA\r\nRCPT TO:<no-at>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nRCPT TO:<d@y.test>\r\nAUTH PLAIN x\r\nSTARTTLS\r\nBDAT x\r\nFROB\r\n",
        );
        assert_eq!(
            r,
            "503 5.5.1 Need MAIL command first\r\n\
             503 5.5.1 Need MAIL command first\r\n\
             501 5.5.4 Syntax: MAIL FROM:<address>\r\n\
             552 5.3.4 The message is larger than the limit of 64 bytes\r\n\
             555 5.5.4 Unsupported MAIL parameter\r\n\
             250 2.1.0 Sender OK\r\n\
             503 5.5.1 Nested MAIL command\r\n\
             554 5.5.1 No valid recipients\r\n\
             501 5.1.3 Bad recipient address syntax\r\n\
             250 2.1.5 Recipient OK\r\n\
             250 2.1.5 Recipient OK\r\n\
             452 4.5.3 Too many recipients\r\n\
             503 5.5.1 Already authenticated\r\n\
             503 5.5.1 STARTTLS is not possible now\r\n\
             501 5.5.4 Syntax: BDAT size [LAST]\r\n\
             500 5.5.2 Command not recognized\r\n"
        );
        assert_eq!(e, None);
    }

    #[test]
    fn an_oversized_message_is_read_to_its_end_and_refused() {
        let mut m = Submission::new(small());
        run(
            &mut m,
            b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
        );
        let body = vec![b'x'; 100];
        m.feed(&body);
        let mut saw = Vec::new();
        let (r, _, _) = {
            let mut replies = String::new();
            m.feed(b"\r\n.\r\nNOOP\r\n");
            while let Some(e) = m.next_event() {
                match e {
                    Event::Reply(r) => replies.push_str(&String::from_utf8_lossy(&r)),
                    other => saw.push(other),
                }
            }
            (replies, (), ())
        };
        assert_eq!(
            r,
            "552 5.3.4 The message is larger than the limit of 64 bytes\r\n250 2.0.0 OK\r\n"
        );
        assert!(saw.contains(&Event::Discard), "{saw:?}");
        assert!(
            !saw.iter().any(|e| matches!(e, Event::Message(_))),
            "{saw:?}"
        );
        let handed: usize = saw
            .iter()
            .map(|e| match e {
                Event::Data(d) => d.len(),
                _ => 0,
            })
            .sum();
        assert!(
            handed <= 64,
            "no more than the limit is handed out: {handed}"
        );
    }

    #[test]
    fn reset_refusal_quit_and_long_lines() {
        let mut m = Submission::new(small());
        m.refuse_transactions(Some("451 4.7.0 Throttled; try again in 30 s\r\n".into()));
        let (r, _, _) = run(&mut m, b"MAIL FROM:<a@x.test>\r\n");
        assert_eq!(r, "451 4.7.0 Throttled; try again in 30 s\r\n");
        m.refuse_transactions(None);
        let (r, _, _) = run(
            &mut m,
            b"MAIL FROM:<a@x.test>\r\nRSET\r\nRCPT TO:<b@y.test>\r\n",
        );
        assert_eq!(
            r,
            "250 2.1.0 Sender OK\r\n250 2.0.0 Reset\r\n503 5.5.1 Need MAIL command first\r\n"
        );
        let (r, _, e) = run(&mut m, b"QUIT\r\nNOOP\r\n");
        assert_eq!(r, "221 2.0.0 Bye\r\n");
        assert_eq!(e, Some(Event::Close));
        assert_eq!(m.next_event(), None, "nothing after QUIT");

        let mut m = Submission::new(small());
        let (r, _, e) = run(&mut m, &[b'N'; 200]);
        assert_eq!(r, "500 5.5.6 Line too long\r\n");
        assert_eq!(e, Some(Event::Close));
    }

    #[test]
    fn ehlo_lists_the_extensions_and_resets() {
        let mut m = Submission::new(small());
        let (r, _, _) = run(
            &mut m,
            b"MAIL FROM:<a@x.test>\r\nEHLO client\r\nRCPT TO:<b@y.test>\r\n",
        );
        assert_eq!(
            r,
            "250 2.1.0 Sender OK\r\n250-mailgate\r\n250-SIZE 64\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n503 5.5.1 Need MAIL command first\r\n"
        );
    }

    #[test]
    fn addresses_and_paths() {
        assert_eq!(
            path_after("FROM: <a@x.test> SIZE=3", "FROM:"),
            Some(("a@x.test".into(), "SIZE=3".into()))
        );
        assert_eq!(
            path_after("to:<@relay.test:b@y.test>", "TO:"),
            Some(("b@y.test".into(), String::new()))
        );
        assert_eq!(path_after("FROM:a@x.test", "FROM:"), None);
        assert!(is_address("ü@bücher.test"));
        assert!(!is_address("a b@x.test"));
        assert!(!is_address("@x.test"));
        assert!(!is_address("a@"));
    }
}
