//! What a submission is given (its limits) and what it hands out
//! (events, a message's envelope).

/// The limits of a submission.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest message, in bytes (announced as `SIZE`).
    pub max_message: usize,
    /// The longest command line, CRLF included.
    pub max_line: usize,
    /// Recipients per message.
    pub max_recipients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 35 * 1000 * 1000,
            max_line: 8 * 1024,
            max_recipients: 500,
        }
    }
}

/// The EHLO keywords of a submission with `limits` (after the greeting
/// line; `AUTH` and `STARTTLS` are the pre-auth machine's).
pub fn extensions(limits: &Limits) -> Vec<String> {
    vec![
        format!("SIZE {}", limits.max_message),
        "8BITMIME".into(),
        "SMTPUTF8".into(),
        "PIPELINING".into(),
        "CHUNKING".into(),
        "ENHANCEDSTATUSCODES".into(),
    ]
}

/// A complete message's envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse path (`MAIL FROM`), empty for a null sender (`<>`).
    pub from: String,
    /// The forward paths (`RCPT TO`), in order, without duplicates.
    pub recipients: Vec<String>,
    /// The message's size in bytes (after unstuffing).
    pub size: usize,
}

/// What the machine asks of its caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Write these bytes to the client.
    Reply(Vec<u8>),
    /// The next bytes of the current message (unstuffed).
    Data(Vec<u8>),
    /// The current message is complete: send it, then call
    /// [`Submission::answered`] with the reply for the client.
    Message(Envelope),
    /// The current message's bytes so far are to be forgotten (it was
    /// reset, or it is over the size limit).
    Discard,
    /// Close the connection after the replies before.
    Close,
}
