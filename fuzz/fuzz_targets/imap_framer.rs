#![no_main]
//! The framer never panics, never reports a message longer than its input,
//! and never accepts a line or message over its caps.
use libfuzzer_sys::fuzz_target;
use mailgate_proto::imap::{Frame, Framer, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_line: 256,
        max_literal: 128,
        max_message: 1024,
    };
    let mut f = Framer::new(limits);
    // Feed growing prefixes, as bytes arrive from a socket.
    for end in (0..=data.len()).step_by(7).chain([data.len()]) {
        match f.next_message(&data[..end]) {
            Frame::Complete(n) => {
                assert!(n <= end && n <= limits.max_message);
                f.reset();
            }
            Frame::LineTooLong | Frame::MessageTooLarge => return,
            Frame::Incomplete | Frame::SyncLiteral { .. } => {}
        }
    }
    let _ = Framer::new(limits).next_line(data);
});
