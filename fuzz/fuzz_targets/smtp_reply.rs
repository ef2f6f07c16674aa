#![no_main]
use libfuzzer_sys::fuzz_target;
use mailgate_proto::smtp::decode_reply;

fuzz_target!(|data: &[u8]| {
    if let Ok((rest, _)) = decode_reply(data) {
        assert!(rest.len() < data.len());
    }
});
