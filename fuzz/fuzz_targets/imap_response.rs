#![no_main]
use libfuzzer_sys::fuzz_target;
use mailgate_proto::imap::decode_response;

fuzz_target!(|data: &[u8]| {
    if let Ok((rest, r)) = decode_response(data) {
        assert!(rest.len() < data.len());
        let _ = r.capabilities();
    }
});
