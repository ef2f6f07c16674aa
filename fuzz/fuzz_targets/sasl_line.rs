#![no_main]
use libfuzzer_sys::fuzz_target;
use mailgate_proto::sasl::decode_sasl_line;

fuzz_target!(|data: &[u8]| {
    let _ = decode_sasl_line(data);
});
