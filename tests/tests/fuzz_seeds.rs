//! Replays every committed fuzz input (`fuzz/seeds/TARGET/*`, and crash
//! reproducers in `fuzz/regressions/TARGET/*` once any exist) through the
//! same target bodies libFuzzer runs, under `cargo test`.

use std::path::Path;

#[test]
fn committed_fuzz_inputs_replay_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for kind in ["seeds", "regressions"] {
        for target in mailgate_fuzzing::TARGETS {
            let dir = root.join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let data = std::fs::read(e.path()).expect("readable input");
                mailgate_fuzzing::run(target, &data);
                replayed += 1;
            }
        }
    }
    // Every target has seeds.
    for target in mailgate_fuzzing::TARGETS {
        assert!(
            root.join("seeds").join(target).is_dir(),
            "no seeds for {target}"
        );
    }
    assert!(
        replayed >= mailgate_fuzzing::TARGETS.len(),
        "only {replayed} inputs"
    );
}
