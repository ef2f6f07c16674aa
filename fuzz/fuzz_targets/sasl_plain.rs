#![no_main]
use libfuzzer_sys::fuzz_target;
use mailgate_proto::sasl::{decode_base64, decode_plain};

fuzz_target!(|data: &[u8]| {
    let _ = decode_plain(data);
    if let Ok(raw) = decode_base64(data) {
        use mailgate_proto::ExposeSecret;
        let _ = decode_plain(raw.expose_secret());
    }
});
