//! The binary's argument handling. (Living in this package also makes
//! `cargo test --workspace` build the `mailgate` binary that the end-to-end
//! tests in `tests/` drive.)

fn mailgate(args: &[&str]) -> std::process::Output {
    mailgate_tests::harness::mailgate(None)
        .args(args)
        .output()
        .expect("run mailgate")
}

#[test]
fn help_lists_the_commands() {
    let out = mailgate(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // The first word of each line of the "Commands:" section, not any
    // mention of the word elsewhere in the help.
    let commands: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for cmd in [
        "run",
        "check",
        "login",
        "token",
        "accounts",
        "forget",
        "hash-password",
    ] {
        assert!(
            commands.contains(&cmd),
            "{cmd} missing from the commands of --help ({commands:?}):\n{text}"
        );
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

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    for (shell, marker) in [
        ("bash", "_mailgate()"),
        ("zsh", "#compdef mailgate"),
        ("fish", "complete -c mailgate"),
    ] {
        let out = mailgate(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        for cmd in ["accounts", "hash-password", "completions", "log-level"] {
            assert!(text.contains(cmd), "{shell} completion lacks {cmd}");
        }
    }
    let out = mailgate(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    let out = mailgate(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH mailgate 1"), "{page}");
    for section in [
        "MAILGATE LOGIN",
        "MAILGATE TOKEN IMPORT",
        "MAILGATE ACCOUNTS",
        "\\-\\-json",
        "\\-\\-flow",
    ] {
        assert!(page.contains(section), "man page lacks {section}");
    }
    // One page: nothing points at per-command pages that do not exist.
    assert!(!page.contains("mailgate\\-run(1)"), "{page}");
    assert!(
        !page.contains("mailgate\\-"),
        "a reference to another page:\n{page}"
    );
    assert!(page.contains(".SH COMMANDS"), "{page}");
    assert!(page.contains("hash\\-password"), "{page}");
}

#[test]
fn version_names_the_revision_it_was_built_from() {
    let out = mailgate(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let version = env!("CARGO_PKG_VERSION");
    assert!(text.starts_with(&format!("mailgate {version} (")), "{text}");
    // A checkout's short commit hash, or "unknown revision" when built
    // outside git with no MAILGATE_REVISION.
    let rev = text
        .trim_end()
        .strip_prefix(&format!("mailgate {version} ("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        rev == "unknown revision" || (rev.len() >= 7 && rev.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
    if std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.git")).exists() {
        assert_ne!(rev, "unknown revision", "built in a git checkout: {text}");
    }
}

/// Runs `mailgate` with its standard output a pipe whose reader is already
/// gone, as in `mailgate accounts | head -0`.
fn mailgate_into_closed_pipe(args: &[&str]) -> std::process::Output {
    let (reader, writer) = os_pipe::pipe().expect("pipe");
    drop(reader);
    let child = mailgate_tests::harness::mailgate(None)
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mailgate");
    child.wait_with_output().expect("wait for mailgate")
}

#[test]
fn a_closed_standard_output_ends_quietly_without_a_panic() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cfg = dir.path().join("mailgate.toml");
    std::fs::write(
        &cfg,
        r#"
[gateway]
state_dir = "state"
[[listener]]
protocol = "imap"
address = "127.0.0.1:1143"
[provider.gmail]
preset = "gmail"
client_id = "id.apps.googleusercontent.com"
[[account]]
user = "a@example.com"
provider = "gmail"
"#,
    )
    .expect("write the configuration");
    let cfg = cfg.to_str().expect("UTF-8 path");
    for args in [
        &["completions", "bash"][..],
        &["completions", "zsh"],
        &["man"],
        &["-c", cfg, "check"],
        &["-c", cfg, "accounts"],
        &["-c", cfg, "accounts", "--json"],
    ] {
        let out = mailgate_into_closed_pipe(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
