//! Properties every decoder of the crate shares, checked the same way for
//! each protocol's tests.

use std::fmt::Debug;

use crate::DecodeError;

/// Every strict prefix of each message decodes to `Incomplete`, and each
/// whole message decodes with nothing left over.
pub fn prefixes_are_incomplete<T: Debug>(
    decode: impl Fn(&[u8]) -> Result<(&[u8], T), DecodeError>,
    messages: &[&[u8]],
) {
    for msg in messages {
        for end in 0..msg.len() {
            match decode(&msg[..end]) {
                Err(DecodeError::Incomplete) => {}
                other => panic!(
                    "prefix {end} of {}: {other:?}",
                    String::from_utf8_lossy(msg)
                ),
            }
        }
        match decode(msg) {
            Ok((rest, _)) => assert!(rest.is_empty(), "{}", String::from_utf8_lossy(msg)),
            Err(e) => panic!("{}: {e:?}", String::from_utf8_lossy(msg)),
        }
    }
}

/// Each input is refused as malformed (not taken as a prefix).
pub fn all_malformed<T: Debug>(
    decode: impl Fn(&[u8]) -> Result<(&[u8], T), DecodeError>,
    inputs: &[&[u8]],
) {
    for input in inputs {
        let got = decode(input);
        assert!(
            matches!(got, Err(DecodeError::Failed { .. })),
            "{}: {got:?}",
            String::from_utf8_lossy(input)
        );
    }
}
