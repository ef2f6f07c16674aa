#![no_main]
use libfuzzer_sys::fuzz_target;
use mailgate_proto::pop3::decode_multiline;

fuzz_target!(|data: &[u8]| {
    if let Ok((rest, _)) = decode_multiline(data) {
        assert!(rest.len() < data.len());
    }
});
