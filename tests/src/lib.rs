//! Test support for mailgate's end-to-end tests. Everything listens on
//! 127.0.0.1 (or 127.0.0.2) with ports from `:0`; nothing reaches further.
//!
//! - [`ca::TestCa`]: a CA and a server certificate made at test time;
//! - [`oauth::FakeOAuth`]: a token endpoint (refresh grant with knobs for
//!   lifetime, rotation and failures) and an RFC 7662 introspection endpoint;
//! - [`imap_server::FakeImap`]: a scripted XOAUTH2-only IMAP server over TLS
//!   that records the exact bytes it receives;
//! - [`client::LineClient`]: a line-oriented client for driving the gateway;
//! - [`harness`]: configuration files, sealed tokens and an in-process gateway;
//! - [`dovecot`]: a real Dovecot started with its own configuration;
//! - [`browser`]: playing the browser on a sign-in URL;
//! - [`chrome`]: a real headless Chromium driven through ChromeDriver;
//! - [`harness::Running`]: the real binary, its addresses read from its log;
//! - [`portal`]: the binary with its web portal, and a browser's steps on it;
//! - [`redis`]: a real Redis server;
//! - [`proxies`]: test HTTP (CONNECT) and SOCKS5 proxies that log what they forward;
//! - [`rsa`]: RSA keys and client certificates (Entra certificate credentials).

#![allow(clippy::unwrap_used, missing_debug_implementations)]

pub mod balancer;
pub mod browser;
pub mod ca;
pub mod chrome;
pub mod client;
pub mod dovecot;
pub mod fake;
pub mod fleet;
pub mod graph;
pub mod harness;
pub mod imap_server;
pub mod login;
pub mod oauth;
pub mod pop3_server;
pub mod portal;
pub mod proxies;
pub mod redis;
pub mod relay_sink;
pub mod rsa;
pub mod sentinel;
pub mod service_account;
pub mod smtp_server;
