//! What the portal and the CLI ask of the accounts: sealing a confirmed
//! sign-in, holding one while its owner chooses a password, changing the
//! password, forgetting an account, reading its record. Every write goes
//! through [`crate::accounts::changes`].

use std::net::IpAddr;
use std::time::Duration;

use secrecy::SecretString;
use tracing::info;

use crate::accounts::changes::{AccountEvent, Changes};
use crate::accounts::fleet::sealed::{self, Sealer};
use crate::accounts::flows::{FlowError, PasswordError, file_to_rekey, rekey, seal_confirmed};
use crate::accounts::identity::{ConfirmedGrant, HeldGrant};
use crate::accounts::random::random_token;
use crate::accounts::service::Accounts;
use crate::accounts::store::{Expect, StoreError, TokenFile};

/// How long a confirmed sign-in waits for its password.
pub const HELD: Duration = Duration::from_secs(10 * 60);

/// A confirmed sign-in held for its password, and the record it replaces.
#[derive(serde::Serialize, serde::Deserialize)]
struct Held {
    grant: HeldGrant,
    /// The generation of the record the new tokens replace (compare and
    /// swap), or none: a new account.
    replaces: Option<u64>,
}

fn busy(_: crate::accounts::argon::Busy) -> FlowError {
    FlowError::Busy
}

/// Seals a confirmed sign-in with `password` (within the process's Argon2
/// bound) and stores it through `changes` if the account is still what
/// `expect` says. The CLI's commands and the portal (through
/// [`Accounts::seal_confirmed`]) both come here.
pub async fn store_confirmed(
    changes: &Changes,
    confirmed: ConfirmedGrant,
    password: &SecretString,
    expect: Expect<'_>,
) -> Result<TokenFile, FlowError> {
    let pw = password.clone();
    let user = confirmed.user().to_owned();
    let file = crate::accounts::argon::limiter()
        .run(move || seal_confirmed(&confirmed, &pw))
        .await
        .map_err(busy)??;
    Ok(changes
        .save(&file, expect, Some(AccountEvent::TokensStored { user }))
        .await?)
}

impl Accounts {
    /// Seals a confirmed sign-in with `password` and stores it if the
    /// account is still what `expect` says (see [`store_confirmed`]).
    pub async fn seal_confirmed(
        &self,
        confirmed: ConfirmedGrant,
        password: &SecretString,
        expect: Expect<'_>,
    ) -> Result<TokenFile, FlowError> {
        let stored = store_confirmed(&self.changes, confirmed, password, expect).await;
        if matches!(&stored, Err(FlowError::Busy)) {
            self.metrics.password_check("refused_busy");
        }
        stored
    }

    /// Holds a confirmed sign-in (sealed, in the fleet's shared state, for
    /// [`HELD`]) until its owner chooses the password: the returned ticket
    /// is its only key. `replaces` is the record it will replace.
    pub async fn hold(
        &self,
        confirmed: &ConfirmedGrant,
        replaces: Option<&TokenFile>,
    ) -> Result<String, StoreError> {
        let ticket = random_token();
        let held = Held {
            grant: confirmed.held(),
            replaces: replaces.map(|f| f.generation),
        };
        sealed::put(
            &self.fleet,
            &Sealer::new("grant", ticket.as_bytes()),
            &held,
            HELD,
            true,
        )
        .await?;
        Ok(ticket)
    }

    /// Seals the sign-in `ticket` holds for `user` with `password`; the
    /// ticket is spent once the tokens are stored. `Ok(false)`: it holds
    /// nothing for `user` (expired, spent, or another's).
    pub async fn seal_held(
        &self,
        ticket: &str,
        user: &str,
        password: &SecretString,
    ) -> Result<bool, FlowError> {
        let sealer = Sealer::new("grant", ticket.as_bytes());
        let Some(held) = sealed::get::<Held>(&self.fleet, &sealer, false).await? else {
            return Ok(false);
        };
        let confirmed = ConfirmedGrant::from_held(held.grant);
        if confirmed.user() != user {
            return Ok(false);
        }
        let current = self.store.load(user).await?;
        let expect = match (held.replaces, &current) {
            (None, _) => Expect::Absent,
            (Some(g), Some(cur)) if cur.generation == g => Expect::Same(cur),
            (Some(_), _) => {
                return Err(FlowError::Store(StoreError::Changed {
                    user: user.to_owned(),
                }));
            }
        };
        self.seal_confirmed(confirmed, password, expect).await?;
        self.fleet.forget(sealer.name()).await?;
        Ok(true)
    }

    /// Changes `user`'s local password (the portal's form, in a session
    /// signed in at the provider as the account: its owner): refused
    /// without a check while the owner's own failures hold it back, run
    /// within the process's bound on Argon2 work, and a wrong old password
    /// counts as the owner's failed login.
    pub async fn change_password(
        &self,
        user: &str,
        old: &SecretString,
        new: &SecretString,
        peer: IpAddr,
    ) -> Result<(), PasswordError> {
        let file = file_to_rekey(&self.store, user, new).await?;
        let (f, o, n, at) = (
            file.clone(),
            old.clone(),
            new.clone(),
            self.store.location(user),
        );
        let next = self
            .gated(user, peer, true, "checked", move || rekey(&f, &o, &n, &at))
            .await
            .map_err(PasswordError::Refused)?;
        match &next {
            Ok(_) => self.success(user, peer, true, true),
            Err(PasswordError::WrongPassword) => self.failure(user, peer, true, true),
            Err(_) => {}
        }
        let event = AccountEvent::PasswordChanged {
            user: user.to_owned(),
        };
        self.changes
            .save(&next?, Expect::Same(&file), Some(event))
            .await
            .map_err(PasswordError::Store)?;
        Ok(())
    }

    /// Deletes `user`'s tokens; `Ok(false)` when there were none.
    pub async fn forget(&self, user: &str) -> Result<bool, StoreError> {
        let removed = self.changes.forget(user).await?;
        if removed {
            info!(user = %user, "the account's tokens were deleted");
        }
        Ok(removed)
    }

    /// Every account's record, and what could not be read.
    pub async fn records(&self) -> (Vec<TokenFile>, Vec<StoreError>) {
        self.store.list().await
    }

    /// `user`'s record (metadata and sealed tokens), if any.
    pub async fn record(&self, user: &str) -> Result<Option<TokenFile>, StoreError> {
        self.store.load(user).await
    }
}
