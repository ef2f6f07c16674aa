//! `mailgate login` run as the real binary: its printed lines read as
//! they come, and lines typed into it (the paste flow).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use crate::harness::{PASSWORD, mailgate};

/// A running `mailgate login`, with [`PASSWORD`] as the local password.
pub struct Login {
    child: Child,
    out: Receiver<String>,
}

impl Login {
    pub fn spawn(config: &Path, args: &[&str]) -> Login {
        let mut child = mailgate(Some(config))
            .arg("login")
            .args(args)
            .env("MAILGATE_PASSWORD", PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
        }
        Login { child, out: rx }
    }

    /// The first printed line starting with `prefix`.
    pub fn line_starting(&self, prefix: &str) -> String {
        loop {
            let l = self
                .out
                .recv_timeout(Duration::from_secs(20))
                .expect("mailgate printed no such line");
            if l.starts_with(prefix) {
                return l;
            }
        }
    }

    pub fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    /// Waits for the exit; returns (success, everything printed).
    /// Waits for the command to end: whether it succeeded, and what it
    /// printed. A failure must be exit code 1 (checked here).
    pub fn finish(mut self) -> (bool, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mailgate login did not finish"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(100));
        let text: Vec<String> = self.out.try_iter().collect();
        let text = text.join("\n");
        // A failed login is the user's error (exit 1), said in one line:
        // never a crash, a signal or an internal error.
        if !status.success() {
            assert_eq!(status.code(), Some(1), "{text}");
            assert!(!text.contains("panicked"), "{text}");
        }
        (status.success(), text)
    }
}
