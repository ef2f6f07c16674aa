//! Which account events are changes of state: an account that needs a
//! sign-in is told once (not at every login that finds it so), and once
//! more when it is ready again. Passing failures (a token endpoint that
//! does not answer) are not a state.

use std::collections::HashMap;

use crate::accounts::AccountEvent;

/// The last state told per account.
#[derive(Debug, Default)]
pub struct States {
    needs_sign_in: HashMap<String, String>,
}

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
    }
}
