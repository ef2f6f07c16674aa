//! The binary's argument handling. (Living in this package also makes
//! `cargo test --workspace` build the `mailgate` binary that the end-to-end
//! tests in `tests/` drive.)

use std::process::Command;

fn mailgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mailgate"))
        .args(args)
        .env_remove("MAILGATE_CONFIG")
        .output()
        .expect("run mailgate")
}

#[test]
fn help_lists_the_commands() {
    let out = mailgate(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "run",
        "check",
        "token",
        "accounts",
        "forget",
        "hash-password",
    ] {
        assert!(text.contains(cmd), "{cmd} missing from --help:\n{text}");
    }
}

#[test]
fn bad_arguments_and_missing_config_are_user_errors() {
    let out = mailgate(&["frobnicate"]);
    assert!(!out.status.success());
    let out = mailgate(&["-c", "/nonexistent/mailgate.toml", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/mailgate.toml") && err.contains("does not exist"),
        "{err}"
    );
}
