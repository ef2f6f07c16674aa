#![no_main]
use libfuzzer_sys::fuzz_target;
use mailgate_proto::sasl::decode_error_challenge;

fuzz_target!(|data: &[u8]| {
    let _ = decode_error_challenge(data);
});
