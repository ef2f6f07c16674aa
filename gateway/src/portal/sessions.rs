//! The portal's browser sessions: a random cookie names a session held in
//! memory (only a hash of the cookie is kept as its key), with the CSRF
//! token of its forms, the sign-in it has under way, and the account it
//! signed in as. Sessions are short-lived: an idle limit and an absolute
//! one, and a cap on how many exist at once.
//!
//! With a shared fleet (the Redis store), sessions are the fleet's: each request loads its
//! session from Redis and writes it back after ([`Sessions::load_shared`],
//! [`Sessions::store_shared`]), sealed under a key derived from the
//! cookie, which Redis never sees (see [`crate::accounts::shared`]), so a
//! browser may reach any instance behind the load balancer. Two requests of
//! one browser at the same moment on two instances: the last to finish
//! wins.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::accounts::fleet::Fleet;
use crate::accounts::fleet::sealed::{self as shared, Sealer};
use crate::accounts::oauth::{AuthorizationRequest, DeviceAuthorization};
use crate::accounts::store::StoreError;
use crate::accounts::store::serde_secret;

/// A session unused this long is gone.
pub const IDLE: Duration = Duration::from_secs(15 * 60);
/// No session lives longer than this.
pub const ABSOLUTE: Duration = Duration::from_secs(60 * 60);
/// A sign-in at the provider must come back within this.
pub const SIGN_IN: Duration = Duration::from_secs(10 * 60);
/// The tokens of a sign-in wait this long for their password.
pub const UNSEALED: Duration = Duration::from_secs(10 * 60);
/// Sessions held at once; past it the least recently used one that holds
/// nothing under way goes, and when every one does, no new session is
/// made until some expire (a sign-in or unsealed tokens are never lost to
/// newcomers).
pub const MAX_SESSIONS: usize = 10_000;

/// A moment as Unix nanoseconds: what a session holds instead of an
/// `Instant`, so that it is plain data any instance of a fleet can read
/// (fine enough to order sessions made one after another).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Moment(u64);

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Moment {
    pub fn now() -> Moment {
        Moment(now_ns())
    }

    /// The time since this moment (zero for one to come).
    pub fn elapsed(self) -> Duration {
        Duration::from_nanos(now_ns().saturating_sub(self.0))
    }

    /// The time until this moment (zero for one past).
    pub fn until(self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(now_ns()))
    }

    pub fn after(self, d: Duration) -> Moment {
        Moment(self.0.saturating_add(d.as_nanos() as u64))
    }
}

/// A sign-in sent to the provider, waiting for its redirect.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingSignIn {
    pub request: AuthorizationRequest,
    /// The account's lower-cased name.
    pub user: String,
    /// The provider's name in the configuration.
    pub provider: String,
    /// Started from the account page ("authorise again").
    pub again: bool,
    pub started: Moment,
}

/// A device sign-in (RFC 8628) started here: the person enters its code
/// at the provider while this browser's page asks the provider, once per
/// interval, whether they did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingDevice {
    pub details: DeviceAuthorization,
    /// The account's lower-cased name.
    pub user: String,
    /// The provider's name in the configuration.
    pub provider: String,
    /// Started from the account page ("authorise again").
    pub again: bool,
    pub started: Moment,
    /// The provider is not asked again before this (its `interval`, plus
    /// 5 s for each `slow_down`).
    pub next_poll: Moment,
    /// Seconds between two polls.
    pub interval: u64,
}

/// A confirmed sign-in that waits for the password that will seal it: the
/// accounts hold it ([`crate::accounts::Accounts::hold`]); the session has
/// its ticket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unsealed {
    #[serde(with = "serde_secret")]
    pub ticket: SecretString,
    pub at: Moment,
}

/// The account a session proved it owns, by signing in at the provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedIn {
    pub user: String,
    /// The provider's name in the configuration.
    pub provider: String,
    pub unsealed: Option<Unsealed>,
}

/// A browser's session: plain data (Unix times, provider names), held in
/// memory or, sealed, in the fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub csrf: String,
    created: Moment,
    seen: Moment,
    pub pending: Option<PendingSignIn>,
    #[serde(default)]
    pub device: Option<PendingDevice>,
    pub signed_in: Option<SignedIn>,
}

impl Session {
    fn new(now: Moment) -> Session {
        Session {
            csrf: random_token(),
            created: now,
            seen: now,
            pending: None,
            device: None,
            signed_in: None,
        }
    }

    /// Whether the session holds a sign-in under way or tokens waiting
    /// for their password.
    fn busy(&self) -> bool {
        self.pending.is_some()
            || self.device.is_some()
            || self
                .signed_in
                .as_ref()
                .is_some_and(|s| s.unsealed.is_some())
    }

    fn expired(&self) -> bool {
        self.seen.elapsed() > IDLE || self.created.elapsed() > ABSOLUTE
    }

    /// Whether `token` is this session's CSRF token (constant time).
    pub fn csrf_ok(&self, token: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(token.as_bytes()))
    }
}

/// The cookie's value hashed: the key of a session.
type Key = [u8; 32];

fn key_of(cookie: &str) -> Key {
    Sha256::digest(cookie.as_bytes()).into()
}

pub use crate::accounts::random::random_token;

/// The value of the request's cookie `name`, if it has one.
fn cookie_named(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// All sessions of the portal.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<Key, Session>>,
    /// Cookies carry `Secure` (the portal is reached over HTTPS).
    secure: bool,
    /// The fleet's store, which holds the sessions of every instance.
    shared: Option<Fleet>,
}

/// A session found or made for a request: its cookie value (to set when
/// new) and key.
#[derive(Debug, Clone)]
pub struct Handle {
    key: Key,
    /// Set when the session was just created (or its id renewed): the
    /// response must set this cookie.
    pub new_cookie: Option<String>,
}

impl Sessions {
    pub fn new(secure: bool) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            secure,
            shared: None,
        }
    }

    /// Keeps the sessions in the fleet's store (see the module's notes).
    pub fn sharing(mut self, store: Option<Fleet>) -> Sessions {
        self.shared = store;
        self
    }

    /// Whether the sessions are the fleet's.
    pub fn shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The session cookie a response sets: `Some("")` when it removes it.
    pub fn cookie_set_by(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(axum::http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| cookie::Cookie::parse(v.to_owned()).ok())
            .filter(|c| c.name() == self.cookie_name())
            .last()
            .map(|c| c.value().to_owned())
    }

    /// Loads the session of `cookie` from the fleet's store into this
    /// instance (replacing what it had; none there: none here).
    pub async fn load_shared(&self, cookie: &str) -> Result<(), StoreError> {
        let Some(fleet) = &self.shared else {
            return Ok(());
        };
        let sealer = Sealer::new("session", cookie.as_bytes());
        let stored: Option<Session> = shared::get(fleet, &sealer, false).await?;
        let key = key_of(cookie);
        let mut map = self.lock();
        match stored {
            Some(st) => {
                map.insert(key, st);
            }
            None => {
                map.remove(&key);
            }
        }
        Ok(())
    }

    /// Writes the session of `cookie` to the fleet's store, for as long as
    /// it may live; a session that is gone here is deleted there.
    pub async fn store_shared(&self, cookie: &str) -> Result<(), StoreError> {
        let Some(fleet) = &self.shared else {
            return Ok(());
        };
        let sealer = Sealer::new("session", cookie.as_bytes());
        let stored = {
            let map = self.lock();
            map.get(&key_of(cookie)).filter(|s| !s.expired()).map(|s| {
                let life = IDLE.min(ABSOLUTE.saturating_sub(s.created.elapsed()));
                (s.clone(), life)
            })
        };
        match stored {
            Some((st, life)) if !life.is_zero() => {
                shared::put(fleet, &sealer, &st, life, false).await?;
            }
            _ => fleet.forget(sealer.name()).await?,
        }
        Ok(())
    }

    /// Deletes the session of `cookie`, here and in the fleet's store.
    pub async fn drop_shared(&self, cookie: &str) -> Result<(), StoreError> {
        self.lock().remove(&key_of(cookie));
        match &self.shared {
            Some(fleet) => {
                fleet
                    .forget(Sealer::new("session", cookie.as_bytes()).name())
                    .await
            }
            None => Ok(()),
        }
    }

    pub fn cookie_name(&self) -> &'static str {
        // `__Host-`: only ever set by this origin, over HTTPS, for `/`.
        if self.secure {
            "__Host-mailgate"
        } else {
            "mailgate"
        }
    }

    /// The `Set-Cookie` value for a session cookie.
    pub fn set_cookie(&self, value: &str) -> String {
        self.cookie(self.cookie_name(), value)
    }

    /// A cookie of the portal: for `/`, `HttpOnly`, `SameSite=Lax`, for a
    /// session's longest life, `Secure` over HTTPS.
    fn cookie(&self, name: &'static str, value: &str) -> String {
        let mut c = cookie::Cookie::build((name, value.to_owned()))
            .path("/")
            .http_only(true)
            .same_site(cookie::SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(ABSOLUTE.as_secs() as i64));
        if self.secure {
            c = c.secure(true);
        }
        c.build().to_string()
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear_cookie(&self) -> String {
        let mut c = cookie::Cookie::build((self.cookie_name(), ""))
            .path("/")
            .http_only(true)
            .same_site(cookie::SameSite::Lax)
            .max_age(cookie::time::Duration::ZERO);
        if self.secure {
            c = c.secure(true);
        }
        c.build().to_string()
    }

    /// The session cookie a request carries.
    pub fn cookie_in(&self, headers: &HeaderMap) -> Option<String> {
        cookie_named(headers, self.cookie_name())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Session>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live session the request's cookie names, if any.
    pub fn find(&self, headers: &HeaderMap) -> Option<Handle> {
        let key = key_of(&self.cookie_in(headers)?);
        let mut map = self.lock();
        match map.get_mut(&key) {
            Some(s) if !s.expired() => {
                s.seen = Moment::now();
                Some(Handle {
                    key,
                    new_cookie: None,
                })
            }
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// A new session (made only when a sign-in starts: a visit alone
    /// makes none); `None` when the portal holds as many as it may and
    /// each has something under way.
    pub fn create(&self) -> Option<Handle> {
        let cookie = random_token();
        let key = key_of(&cookie);
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| !s.expired());
        }
        if map.len() >= MAX_SESSIONS {
            let idle = map
                .iter()
                .filter(|(_, s)| !s.busy())
                .min_by_key(|(_, s)| s.seen)
                .map(|(k, _)| *k);
            map.remove(&idle?);
        }
        map.insert(key, Session::new(Moment::now()));
        Some(Handle {
            key,
            new_cookie: Some(cookie),
        })
    }

    /// The name of the cookie that carries the address form's token
    /// before any session exists.
    pub fn form_cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-mailgate-form"
        } else {
            "mailgate-form"
        }
    }

    /// The `Set-Cookie` value of the address form's token: the form
    /// carries the same value back (a double-submit token: no server
    /// state, and a page elsewhere can neither read nor set it).
    pub fn set_form_cookie(&self, value: &str) -> String {
        self.cookie(self.form_cookie_name(), value)
    }

    /// Whether `token` (a form's) is the request's form cookie.
    pub fn form_token_ok(&self, headers: &HeaderMap, token: &str) -> bool {
        cookie_named(headers, self.form_cookie_name())
            .is_some_and(|c| !token.is_empty() && bool::from(c.as_bytes().ct_eq(token.as_bytes())))
    }

    /// Runs `f` on the session (`None` when it is gone meanwhile).
    pub fn with<T>(&self, h: &Handle, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        self.lock().get_mut(&h.key).map(f)
    }

    /// Gives the session a new id (after a sign-in, so that an id known
    /// before it is worth nothing after), keeping its content; a new CSRF
    /// token too.
    pub fn renew(&self, h: &Handle) -> Option<Handle> {
        let mut map = self.lock();
        let mut s = map.remove(&h.key)?;
        s.csrf = random_token();
        let cookie = random_token();
        let key = key_of(&cookie);
        map.insert(key, s);
        Some(Handle {
            key,
            new_cookie: Some(cookie),
        })
    }

    /// Ends the session.
    pub fn end(&self, h: &Handle) {
        self.lock().remove(&h.key);
    }

    /// How many sessions exist (for tests).
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            format!("other=1; {name}={value}").parse().expect("header"),
        );
        h
    }

    #[test]
    fn a_cookie_finds_its_session_and_nothing_else() {
        let s = Sessions::new(false);
        let h = s.create().expect("room");
        let cookie = h.new_cookie.clone().expect("a new cookie");
        assert!(s.find(&with_cookie("mailgate", &cookie)).is_some());
        assert!(s.find(&with_cookie("mailgate", "forged")).is_none());
        assert!(s.find(&HeaderMap::new()).is_none());
        // After renewal the old id is worth nothing.
        let renewed = s.renew(&h).expect("renewed");
        assert!(s.find(&with_cookie("mailgate", &cookie)).is_none());
        let new = renewed.new_cookie.clone().expect("cookie");
        assert!(s.find(&with_cookie("mailgate", &new)).is_some());
        s.end(&renewed);
        assert!(s.find(&with_cookie("mailgate", &new)).is_none());
    }

    #[test]
    fn csrf_is_compared_exactly() {
        let s = Session::new(Moment::now());
        let t = s.csrf.clone();
        assert!(s.csrf_ok(&t));
        assert!(!s.csrf_ok(""));
        assert!(!s.csrf_ok(&t[..t.len() - 1]));
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_over_tls() {
        let plain = Sessions::new(false).set_cookie("v");
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Lax"));
        assert!(!plain.contains("Secure"));
        let tls = Sessions::new(true).set_cookie("v");
        assert!(tls.starts_with("__Host-mailgate=v") && tls.contains("Secure"));
    }

    #[test]
    fn the_number_of_sessions_is_capped_without_losing_sign_ins() {
        let s = Sessions::new(false);
        let first = s.create().expect("room");
        for _ in 0..MAX_SESSIONS + 5 {
            s.create().expect("idle sessions make room");
        }
        assert_eq!(s.count(), MAX_SESSIONS);
        assert!(s.with(&first, |_| ()).is_none(), "the oldest idle one went");
        // Every session busy: no new one, none lost.
        let mut map = s.lock();
        for v in map.values_mut() {
            v.signed_in = Some(SignedIn {
                user: "a@x.test".into(),
                provider: "p".into(),
                unsealed: Some(Unsealed {
                    ticket: SecretString::from("ticket"),
                    at: Moment::now(),
                }),
            });
        }
        drop(map);
        assert!(s.create().is_none());
        assert_eq!(s.count(), MAX_SESSIONS);
    }
}
