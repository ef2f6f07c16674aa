//! The one place where an account's state changes: every write of the
//! accounts' records (new tokens sealed, tokens refreshed, a refresh
//! refused, an account marked as needing a sign-in, a password changed,
//! an account forgotten) goes through [`Changes`], which tells whoever
//! listens ([`Changes::subscribe`]) what changed, after the store took it.
//! Events carry names and reasons, never a token.

use tokio::sync::broadcast;

use crate::accounts::store::{Expect, Store, StoreError, TokenFile};

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountEvent {
    /// A sign-in's tokens were sealed (portal, `mailgate login`, `token
    /// import`).
    TokensStored { user: String },
    /// The access token was refreshed (and the refresh token rotated,
    /// where the provider does that).
    Refreshed { user: String },
    /// A refresh failed for a reason that may pass (the token endpoint,
    /// the network, the client's credentials).
    RefreshFailed { user: String, reason: String },
    /// The provider refused the refresh token (`invalid_grant`): the owner
    /// must sign in again.
    NeedsSignIn { user: String, reason: String },
    /// The local password was changed.
    PasswordChanged { user: String },
    /// The account's tokens were deleted.
    Forgotten { user: String },
    /// The provider asked the account to wait (Microsoft Graph's
    /// `Retry-After`).
    Throttled { user: String, reason: String },
    /// A provider's client credential (its certificate) expires soon: every
    /// account it serves stops then.
    CredentialExpiring { provider: String, reason: String },
}

/// Events kept for a slow listener before it misses some.
const BACKLOG: usize = 256;

/// The writes that change accounts, and the events they cause.
#[derive(Debug, Clone)]
pub struct Changes {
    store: Store,
    events: broadcast::Sender<AccountEvent>,
}

impl Changes {
    pub fn new(store: Store) -> Changes {
        Changes {
            store,
            events: broadcast::channel(BACKLOG).0,
        }
    }

    /// The events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AccountEvent> {
        self.events.subscribe()
    }

    /// Writes `file` (a compare-and-swap, see [`Store::save`]); once the
    /// store took it, `event` (if any) is told.
    pub async fn save(
        &self,
        file: &TokenFile,
        expected: Expect<'_>,
        event: Option<AccountEvent>,
    ) -> Result<TokenFile, StoreError> {
        let written = self.store.save(file, expected).await?;
        if let Some(e) = event {
            self.tell(e);
        }
        Ok(written)
    }

    /// Deletes `user`'s tokens; `Ok(false)` when there were none.
    pub async fn forget(&self, user: &str) -> Result<bool, StoreError> {
        let removed = self.store.remove(user).await?;
        if removed {
            self.tell(AccountEvent::Forgotten {
                user: user.to_owned(),
            });
        }
        Ok(removed)
    }

    pub(super) fn tell(&self, e: AccountEvent) {
        tracing::debug!(event = ?e, "account changed");
        // No listener is not an error.
        let _ = self.events.send(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_hear_what_the_store_took_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let changes = Changes::new(crate::accounts::store::files(dir.path()));
        let mut heard = changes.subscribe();
        let key = crate::accounts::store::SealingKey::derive(
            &secrecy::SecretString::from("pw"),
            &crate::accounts::store::Kdf {
                m_cost: 64,
                t_cost: 1,
                ..crate::accounts::store::Kdf::generate()
            },
        )
        .expect("key");
        let file = TokenFile::seal("a@x.test", "p", &key, &Default::default()).expect("seal");
        let stored = AccountEvent::TokensStored {
            user: "a@x.test".into(),
        };
        changes
            .save(&file, Expect::Absent, Some(stored.clone()))
            .await
            .expect("saved");
        assert_eq!(heard.try_recv().expect("told"), stored);
        // A write the store refuses tells nothing.
        assert!(
            changes
                .save(&file, Expect::Absent, Some(stored.clone()))
                .await
                .is_err()
        );
        assert!(matches!(
            heard.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ));
        assert!(changes.forget("a@x.test").await.expect("forget"));
        assert_eq!(
            heard.try_recv().expect("told"),
            AccountEvent::Forgotten {
                user: "a@x.test".into()
            }
        );
        assert!(!changes.forget("a@x.test").await.expect("forget"));
        assert!(
            matches!(
                heard.try_recv(),
                Err(tokio::sync::broadcast::error::TryRecvError::Empty)
            ),
            "nothing was forgotten twice"
        );
    }
}
