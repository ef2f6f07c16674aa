//! A sign-in's grant once its identity is known to be the account's: the
//! only thing the accounts seal.

use std::time::Duration;

use secrecy::SecretString;

use crate::accounts::oauth::Grant;

/// What a sign-in granted, once its identity was found to be the account's:
/// the only thing the accounts seal ([`crate::accounts::Accounts`]'s
/// `seal_confirmed` and `hold`). Only this module makes one: [`confirm`],
/// or [`asserted`] for a refresh token an administrator imports without
/// verification.
pub struct ConfirmedGrant {
    user: String,
    provider: String,
    refresh_token: Option<SecretString>,
    /// The access token the provider granted, and for how long; `None`
    /// for an asserted import (the first login refreshes).
    access: Option<(SecretString, Option<Duration>)>,
    /// Who signed in (for messages).
    identity: String,
    tenant: Option<String>,
}

impl std::fmt::Debug for ConfirmedGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmedGrant")
            .field("user", &self.user)
            .field("provider", &self.provider)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ConfirmedGrant {
    /// A grant [`super::confirm`] found to be the account's.
    pub(super) fn new(
        user: &str,
        provider: &str,
        identity: String,
        tenant: Option<String>,
        grant: Grant,
    ) -> ConfirmedGrant {
        ConfirmedGrant {
            user: user.to_owned(),
            provider: provider.to_owned(),
            refresh_token: grant.refresh_token,
            access: Some((grant.access_token, grant.expires_in)),
            identity,
            tenant,
        }
    }

    /// The account's (lower-cased) name.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// Who signed in.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Microsoft: the tenant the sign-in came from.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The refresh token, if the provider sent one.
    pub(in crate::accounts) fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh_token.as_ref()
    }

    /// The access token and its lifetime (`None`: an asserted import).
    pub(in crate::accounts) fn access(&self) -> Option<&(SecretString, Option<Duration>)> {
        self.access.as_ref()
    }

    /// Its content, to be sealed where it waits for a password
    /// ([`crate::accounts::Accounts`]'s `hold`).
    pub(in crate::accounts) fn held(&self) -> HeldGrant {
        HeldGrant {
            user: self.user.clone(),
            provider: self.provider.clone(),
            identity: self.identity.clone(),
            tenant: self.tenant.clone(),
            access_token: self.access.as_ref().map(|(t, _)| t.clone()),
            refresh_token: self.refresh_token.clone(),
            expires_in: self
                .access
                .as_ref()
                .and_then(|(_, life)| life.map(|d| d.as_secs())),
        }
    }

    /// A grant confirmed earlier, back from where it waited (sealed, under
    /// a key only its holder's ticket gives).
    pub(in crate::accounts) fn from_held(h: HeldGrant) -> ConfirmedGrant {
        ConfirmedGrant {
            user: h.user,
            provider: h.provider,
            identity: h.identity,
            tenant: h.tenant,
            refresh_token: h.refresh_token,
            access: h
                .access_token
                .map(|t| (t, h.expires_in.map(Duration::from_secs))),
        }
    }
}

/// A confirmed grant as it waits, sealed, for its password.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct HeldGrant {
    user: String,
    provider: String,
    identity: String,
    tenant: Option<String>,
    #[serde(with = "crate::accounts::store::serde_secret::option")]
    access_token: Option<SecretString>,
    #[serde(with = "crate::accounts::store::serde_secret::option")]
    refresh_token: Option<SecretString>,
    expires_in: Option<u64>,
}

/// A refresh token an administrator imports without verification (`token
/// import --no-verify`): their word, on the gateway's own machine, is the
/// identity check. It carries no access token (the first login refreshes).
pub fn asserted(user: &str, provider: &str, refresh_token: SecretString) -> ConfirmedGrant {
    ConfirmedGrant {
        user: user.to_owned(),
        provider: provider.to_owned(),
        identity: user.to_owned(),
        tenant: None,
        refresh_token: Some(refresh_token),
        access: None,
    }
}

impl std::fmt::Debug for HeldGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldGrant")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}
