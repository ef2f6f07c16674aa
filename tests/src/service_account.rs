//! Google service account keys for the tests: a fresh RSA key made with
//! `openssl`, written as the JSON file Google's console gives.

use std::path::{Path, PathBuf};

/// The address the test service account signs as.
pub const CLIENT_EMAIL: &str = "mailgate@test-project.iam.gserviceaccount.com";

/// Writes `name` (a JSON key for [`CLIENT_EMAIL`]) into `dir`; returns its
/// path and the public key (PEM) that verifies its signatures.
pub fn key_file(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let pem = dir.join(format!("{name}.pem"));
    let public = crate::rsa::key(&pem);
    let private = std::fs::read_to_string(&pem).expect("the key");
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "0123456789abcdef",
        "private_key": private,
        "client_email": CLIENT_EMAIL,
        "client_id": "111111111111111111111",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(&json).expect("JSON")).expect("write");
    (path, public)
}
