#![no_main]
//! See `mailgate::fuzzing` for what this target checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailgate::fuzzing::run("smtp_login", data));
