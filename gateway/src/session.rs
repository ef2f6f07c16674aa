//! The async glue shared by every protocol's session: feed client bytes to
//! the protocol's pre-auth state machine under the pre-auth deadline, write
//! what it says, and hand its login requests to the caller until one
//! succeeds. The protocol logic itself lives in each `preauth` module.

use std::future::Future;
use std::time::Duration;

use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::login::Failure;

/// What a pre-auth state machine asks of its session.
#[derive(Debug)]
pub enum Event {
    /// Send these bytes to the client.
    Write(Vec<u8>),
    /// Authenticate; answer with [`PreAuth::login_failed`] or, on success,
    /// leave the machine (its residual bytes go to the relay).
    Login {
        user: String,
        password: SecretString,
    },
    /// Close the connection (after writing what came before).
    Close,
}

/// A protocol's pre-authentication state machine, sans I/O.
pub trait PreAuth {
    /// The greeting sent on connect.
    fn greeting(&self) -> Vec<u8>;
    fn feed(&mut self, data: &[u8]);
    /// The next thing to do; `None` when more input is needed (or while a
    /// login is pending).
    fn next_event(&mut self) -> Option<Event>;
    /// The pending login failed: queue the protocol's reply (and a close
    /// after too many credential failures).
    fn login_failed(&mut self, failure: &Failure);
    /// The reply sent when the pre-auth deadline passes.
    fn timeout_reply(&self, limit: Duration) -> Vec<u8>;
    /// The bytes the client sent after its login command.
    fn into_residual(self) -> Vec<u8>;
}

/// Runs the pre-auth dialogue on `client` until `login` succeeds (its value
/// is returned) or the client leaves, is closed, or runs out of time
/// (`None`).
pub async fn drive<C, M, T, F, Fut>(
    client: &mut C,
    m: &mut M,
    limit: Duration,
    mut login: F,
) -> Option<T>
where
    C: AsyncRead + AsyncWrite + Unpin,
    M: PreAuth,
    F: FnMut(&M, String, SecretString) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let deadline = Instant::now() + limit;
    client.write_all(&m.greeting()).await.ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(event) = m.next_event() {
            match event {
                Event::Write(bytes) => client.write_all(&bytes).await.ok()?,
                Event::Close => {
                    let _ = client.shutdown().await;
                    return None;
                }
                Event::Login { user, password } => {
                    tracing::Span::current().record("user", user.as_str());
                    let attempt = login(m, user, password);
                    match attempt.await {
                        Ok(t) => return Some(t),
                        Err(f) => {
                            info!(failure = f.kind(), "login failed");
                            m.login_failed(&f);
                        }
                    }
                }
            }
        }
        match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            Err(_) => {
                info!("closing: no login within the pre-auth timeout");
                let _ = client.write_all(&m.timeout_reply(limit)).await;
                return None;
            }
            Ok(Ok(0)) => {
                debug!("client closed before login");
                return None;
            }
            Ok(Ok(n)) => m.feed(&buf[..n]),
            Ok(Err(e)) => {
                debug!(error = %e, "client read failed");
                return None;
            }
        }
    }
}

/// Keeps a reply text on one line.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
