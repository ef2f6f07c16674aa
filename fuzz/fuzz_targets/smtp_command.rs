#![no_main]
use libfuzzer_sys::fuzz_target;
use mailgate_proto::smtp::decode_command;

fuzz_target!(|data: &[u8]| {
    if let Ok((rest, _)) = decode_command(data) {
        assert!(rest.len() < data.len());
    }
});
