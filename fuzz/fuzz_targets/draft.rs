#![no_main]
//! See `mailgate_fuzzing` for what this target checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mailgate_fuzzing::run("draft", data));
