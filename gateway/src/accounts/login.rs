//! A login: the local password checked (from the key cache, or one bounded
//! Argon2 derivation that opens the sealed tokens) and a fresh access token.

use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};

use crate::accounts::app_tokens::app_subject;
use crate::accounts::errors::{LoginError, Unavailable, Unusable};
use crate::accounts::names::account_name;
use crate::accounts::service::{Accounts, Authorized};
use crate::accounts::state::{AccountState, CachedKey};
use crate::accounts::store::Audience;
use crate::accounts::store::{Expect, SealingKey, StoreError};
use mailgate_config::Provider;

impl Accounts {
    /// Checks the local password of `login` and returns a mail access token
    /// that lives at least the provider's `min_token_life`.
    pub async fn authenticate(
        &self,
        login: &str,
        password: &SecretString,
        peer: IpAddr,
    ) -> Result<Authorized, LoginError> {
        self.authenticate_for(login, password, peer, Audience::Mail)
            .await
    }

    /// As [`Accounts::authenticate`], with a token for `audience` (Graph,
    /// for a session that sends through it). A login `DELEGATE\\SHARED`
    /// checks the delegate's password and opens the shared mailbox with the
    /// delegate's token, when the delegate's account lists it in `shared`.
    pub async fn authenticate_for(
        &self,
        login: &str,
        password: &SecretString,
        peer: IpAddr,
        audience: Audience,
    ) -> Result<Authorized, LoginError> {
        let (delegate, shared) = match super::shared::split(login) {
            Ok(s) => s,
            Err(why) => {
                info!(%why, "shared-mailbox login refused");
                return Err(LoginError::Shared(why));
            }
        };
        let Some(shared) = shared else {
            return self
                .authenticate_account(login, password, peer, audience)
                .await;
        };
        let mut auth = match self
            .authenticate_account(delegate, password, peer, audience)
            .await
        {
            Err(LoginError::NoToken) => {
                info!("shared-mailbox login of a delegate without tokens");
                return Err(LoginError::Shared(format!(
                    "{} has no stored authorisation yet: sign in as {} first, then open {shared}",
                    delegate.trim(),
                    delegate.trim()
                )));
            }
            other => other?,
        };
        self.may_open(&auth.user, &shared)?;
        info!(shared = %shared, "a delegate opens a shared mailbox");
        auth.shared = Some(shared);
        Ok(auth)
    }

    /// Checks the password of the account `login` (see
    /// [`Accounts::authenticate_for`]).
    async fn authenticate_account(
        &self,
        login: &str,
        password: &SecretString,
        peer: IpAddr,
        audience: Audience,
    ) -> Result<Authorized, LoginError> {
        let Some(user) = account_name(login) else {
            info!("login with a name that cannot be an account");
            return Err(LoginError::BadCredentials);
        };
        let config = self.config();
        let Some(account) = config.find_account(&user) else {
            info!("login for an unknown user");
            return Err(self.refuse_after_dummy(&user, password, peer, false).await);
        };
        let Some(provider) = config.provider(&account.provider).cloned() else {
            return Err(LoginError::Unavailable(Unavailable::NoProvider(
                account.provider.clone(),
            )));
        };
        if let Some(hash) = &account.password_hash
            && !self.check_hash(&user, hash, password, peer).await?
        {
            info!("wrong local password (password_hash)");
            self.failure(&user, peer, true, false);
            return Err(LoginError::BadCredentials);
        }
        // The configured name, else the folded one: never the login as
        // typed (the string authorised is the string sent).
        let upstream_user = account
            .upstream_user
            .clone()
            .unwrap_or_else(|| user.clone());
        if provider.is_app_only() {
            // App-only access: the password_hash (required by the
            // configuration) was the password check. Client credentials:
            // one token serves every mailbox of the provider; a service
            // account: one token per mailbox.
            self.success(&user, peer, false, false);
            let access_token = self
                .app_token(
                    &provider,
                    app_subject(&provider, &upstream_user),
                    None,
                    audience,
                )
                .await?;
            return Ok(Authorized {
                user,
                upstream_user,
                provider,
                access_token,
                audience,
                shared: None,
            });
        }

        let state = self.state(&user);
        let mut st = state.lock().await;
        if let Err(e) = self.unlock(&user, &provider, password, peer, &mut st).await {
            // Nothing learnt about this name (no token, wrong password):
            // forget its state, so names tried against a `*@domain`
            // account do not pile up.
            if st.key.is_none() && st.tokens.is_none() {
                drop(st);
                self.forget_if_idle(&user, &state);
            }
            return Err(e);
        }
        let access_token = self
            .fresh_token(&user, &provider, &mut st, None, audience)
            .await?;
        Ok(Authorized {
            user,
            upstream_user,
            provider,
            access_token,
            audience,
            shared: None,
        })
    }

    /// The upstream rejected `auth.access_token`: drop it and refresh, once.
    /// When another login already replaced it, that newer token is returned.
    pub async fn token_rejected(&self, auth: &Authorized) -> Result<SecretString, LoginError> {
        if auth.provider.is_app_only() {
            let subject = app_subject(&auth.provider, &auth.upstream_user);
            return self
                .app_token(
                    &auth.provider,
                    subject,
                    Some(&auth.access_token),
                    auth.audience,
                )
                .await;
        }
        let state = self.state(&auth.user);
        let mut st = state.lock().await;
        self.fresh_token(
            &auth.user,
            &auth.provider,
            &mut st,
            Some(&auth.access_token),
            auth.audience,
        )
        .await
    }

    /// Checks a `password_hash`, remembering a match (for that hash) so
    /// that later logins with the same password skip Argon2.
    async fn check_hash(
        &self,
        user: &str,
        hash: &str,
        password: &SecretString,
        peer: IpAddr,
    ) -> Result<bool, LoginError> {
        let check = self.check_of(password);
        let slot = (user.to_owned(), hash.to_owned());
        let cached = {
            let map = self.hash_checks.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&slot).is_some_and(|c| bool::from(c.ct_eq(&check)))
        };
        if cached {
            return Ok(true);
        }
        let (h, pw) = (hash.to_owned(), password.clone());
        let ok = self
            .gated(user, peer, false, "checked", move || verify_hash(&h, &pw))
            .await?;
        if ok {
            let mut map = self.hash_checks.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(slot, check);
        }
        Ok(ok)
    }

    /// Opens the account's tokens with `password`: from the key cache when
    /// the password matches it and the store still holds the file the cache
    /// came from, else from the sealed file (one bounded derivation).
    async fn unlock(
        &self,
        user: &str,
        provider: &Provider,
        password: &SecretString,
        peer: IpAddr,
        st: &mut AccountState,
    ) -> Result<(), LoginError> {
        let check = self.check_of(password);
        let loaded = self.store.load(user).await;
        match &loaded {
            Ok(Some(file))
                if st.disk.as_ref() != Some(file) && self.adopt(user, st, file.clone()) =>
            {
                // Re-sealed under the same key: another instance refreshed.
                debug!("newer tokens from the store, opened with the cached key");
            }
            Ok(file) if file.as_ref() != st.disk.as_ref() => {
                if st.key.is_some() {
                    info!(
                        "the token file changed or was removed behind the gateway; the cached key and tokens are dropped"
                    );
                }
                *st = AccountState::default();
            }
            Ok(_) => {}
            Err(StoreError::Io { .. } | StoreError::Unavailable { .. }) => {
                // Unreadable now: what is cached (if anything) keeps serving.
            }
            Err(_) => *st = AccountState::default(),
        }
        let here = crate::accounts::backoff::familiar_id(user, peer);
        let familiar = matches!(&loaded, Ok(Some(f)) if f.familiar.contains(&here));
        let cached_ok = st
            .key
            .as_ref()
            .is_some_and(|k| bool::from(k.check.ct_eq(&check)))
            && st.tokens.is_some();
        if cached_ok {
            self.success(user, peer, false, familiar);
            if st.unsaved {
                // A refresh whose write failed: written now.
                self.persist(
                    user,
                    provider,
                    st,
                    super::refresh::Persist::Refreshed(Audience::Mail),
                )
                .await;
            }
            if !familiar {
                self.remember_address(st, here).await;
            }
            return self.check_usable(st);
        }
        let file = match loaded {
            Ok(Some(f)) => f,
            Ok(None) => {
                info!("no token stored for this account");
                return match self.refuse_after_dummy(user, password, peer, true).await {
                    LoginError::BadCredentials => Err(LoginError::NoToken),
                    other => Err(other),
                };
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                warn!(error = %e, "token file is damaged");
                return Err(LoginError::NeedsAuthorization {
                    why: Unusable::Damaged,
                    file: None,
                });
            }
            Err(e) => {
                warn!(error = %e, "cannot read the token store");
                return Err(LoginError::Unavailable(Unavailable::Store));
            }
        };
        let pw = password.clone();
        let sealed = file.clone();
        let path = self.store.location(user);
        let opened = self
            .gated(user, peer, familiar, "checked", move || {
                let key = SealingKey::derive(&pw, &sealed.kdf)?;
                let tokens = sealed.open(&key, &path)?;
                Ok::<_, StoreError>((key, tokens))
            })
            .await?;
        match opened {
            Ok((key, tokens)) => {
                self.success(user, peer, true, familiar);
                st.key = Some(CachedKey { key, check });
                st.tokens = Some(tokens);
                st.disk = Some(file);
                st.unsaved = false;
                if !familiar {
                    self.remember_address(st, here).await;
                }
                self.check_usable(st)
            }
            Err(StoreError::WrongPassword) => {
                info!(familiar, "wrong local password");
                self.failure(user, peer, true, familiar);
                Err(LoginError::BadCredentials)
            }
            Err(e) => {
                warn!(error = %e, "cannot open the token file");
                Err(LoginError::NeedsAuthorization {
                    why: Unusable::Unopenable,
                    file: None,
                })
            }
        }
    }

    /// Remembers, with the account's tokens, that its owner logged in from
    /// the address named `id` ([`crate::accounts::backoff::familiar_id`]):
    /// the newest first, at most [`crate::accounts::backoff::MAX_FAMILIAR`].
    /// A compare-and-swap on the file the login opened: when another write
    /// came first, the next login from here tries again.
    async fn remember_address(&self, st: &mut AccountState, id: String) {
        let Some(disk) = st.disk.clone() else {
            return;
        };
        let mut next = disk.clone();
        next.familiar.retain(|f| *f != id);
        next.familiar.insert(0, id);
        next.familiar
            .truncate(crate::accounts::backoff::MAX_FAMILIAR);
        match self.changes.save(&next, Expect::Same(&disk), None).await {
            Ok(saved) => {
                info!("the owner's address is remembered as familiar");
                st.disk = Some(saved);
            }
            Err(e) => debug!(error = %e, "the familiar address was not recorded this time"),
        }
    }

    fn check_usable(&self, st: &AccountState) -> Result<(), LoginError> {
        match &st.disk {
            Some(f) if f.needs_authorization => Err(LoginError::NeedsAuthorization {
                why: Unusable::Marked,
                file: Some(Box::new(f.clone())),
            }),
            _ => Ok(()),
        }
    }
}

/// Checks a `password_hash` PHC string (blocking: Argon2).
fn verify_hash(hash: &str, password: &SecretString) -> bool {
    use argon2::PasswordVerifier;
    argon2::PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::oauth::OAuth;
    use rand_core::OsRng;
    use std::sync::Arc;
    use std::time::Duration;

    fn hash_of(pw: &str) -> String {
        use argon2::PasswordHasher;
        let salt = argon2::password_hash::SaltString::generate(&mut OsRng);
        argon2::Argon2::default()
            .hash_password(pw.as_bytes(), &salt)
            .expect("hash")
            .to_string()
    }

    /// A match remembered for one `password_hash` says nothing about
    /// another (a reload that changed the hash while a check was under way
    /// cannot let the old password in).
    #[tokio::test]
    async fn password_hash_matches_are_remembered_per_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:0\"\n[provider.p]\npreset = \"office365\"\nclient_id = \"x\"\n[[account]]\nuser = \"a@x.test\"\nprovider = \"p\"\n",
        )
        .expect("write");
        let config = mailgate_config::load_with_env(&file, Vec::new()).expect("config");
        let oauth = OAuth::new(Duration::from_secs(1)).expect("oauth");
        let store = (
            crate::accounts::store::files(&config.gateway.state_dir),
            crate::accounts::fleet::local(),
        );
        let accounts = Accounts::new(
            Arc::new(config),
            store,
            oauth,
            Arc::new(crate::observe::metrics::Metrics::new()),
        );
        let (old, new) = (hash_of("old-password"), hash_of("new-password"));
        let pw = SecretString::from("old-password");
        let peer: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(
            accounts
                .check_hash("a@x.test", &old, &pw, peer)
                .await
                .expect("check")
        );
        assert!(
            !accounts
                .check_hash("a@x.test", &new, &pw, peer)
                .await
                .expect("check"),
            "the old password's match is not taken for the new hash"
        );
    }
}
