//! Which account events are changes of state: an account that needs a
//! sign-in is told once (not at every login that finds it so), and once
//! more when it is ready again; a throttled account at most once an hour;
//! an expiring credential once per reason (its text counts the days, so
//! daily). Passing failures (a token endpoint that does not answer) are
//! not a state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::accounts::AccountEvent;

/// The last state told per account.
#[derive(Debug, Default)]
pub struct States {
    needs_sign_in: HashMap<String, String>,
    throttled: HashMap<String, Instant>,
    credentials: HashMap<String, String>,
}

/// How often a throttled account is told at most.
const THROTTLED_AGAIN: Duration = Duration::from_secs(3600);

impl States {
    /// The change `event` makes, if any: (kind, user, reason).
    pub fn on(&mut self, event: &AccountEvent) -> Option<(&'static str, String, String)> {
        match event {
            AccountEvent::NeedsSignIn { user, reason } => {
                if self.needs_sign_in.get(user) == Some(reason) {
                    return None;
                }
                self.needs_sign_in.insert(user.clone(), reason.clone());
                Some(("needs_sign_in", user.clone(), reason.clone()))
            }
            AccountEvent::TokensStored { user } | AccountEvent::Refreshed { user } => self
                .needs_sign_in
                .remove(user)
                .map(|_| ("ready", user.clone(), String::new())),
            AccountEvent::Forgotten { user } => {
                self.needs_sign_in.remove(user);
                None
            }
            AccountEvent::RefreshFailed { .. } | AccountEvent::PasswordChanged { .. } => None,
            AccountEvent::Throttled { user, reason } => {
                let now = Instant::now();
                self.throttled
                    .retain(|_, t| now.duration_since(*t) < THROTTLED_AGAIN);
                if self.throttled.contains_key(user) {
                    return None;
                }
                self.throttled.insert(user.clone(), now);
                Some(("throttled", user.clone(), reason.clone()))
            }
            AccountEvent::CredentialExpiring { provider, reason } => {
                if self.credentials.get(provider) == Some(reason) {
                    return None;
                }
                self.credentials.insert(provider.clone(), reason.clone());
                // No one account: the reason names the provider.
                Some(("credential_expiring", String::new(), reason.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_once() {
        let mut s = States::default();
        let dead = AccountEvent::NeedsSignIn {
            user: "a@x".into(),
            reason: "invalid_grant".into(),
        };
        assert_eq!(
            s.on(&dead),
            Some(("needs_sign_in", "a@x".into(), "invalid_grant".into()))
        );
        assert_eq!(s.on(&dead), None, "not again for the same reason");
        let failed = AccountEvent::RefreshFailed {
            user: "a@x".into(),
            reason: "timeout".into(),
        };
        assert_eq!(s.on(&failed), None);
        let back = AccountEvent::TokensStored { user: "a@x".into() };
        assert_eq!(s.on(&back), Some(("ready", "a@x".into(), String::new())));
        assert_eq!(s.on(&back), None, "ready only after a need");
        assert_eq!(s.on(&AccountEvent::Refreshed { user: "b@x".into() }), None);
        let held = AccountEvent::Throttled {
            user: "a@x".into(),
            reason: "wait 30 s".into(),
        };
        assert_eq!(s.on(&held).map(|e| e.0), Some("throttled"));
        assert_eq!(s.on(&held), None, "at most once an hour");
        let expiring = |days: u32| AccountEvent::CredentialExpiring {
            provider: "p".into(),
            reason: format!("expires in {days} days"),
        };
        assert_eq!(s.on(&expiring(9)).map(|e| e.0), Some("credential_expiring"));
        assert_eq!(s.on(&expiring(9)), None);
        assert_eq!(s.on(&expiring(8)).map(|e| e.0), Some("credential_expiring"));
    }
}
