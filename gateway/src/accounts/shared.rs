//! Shared mailboxes and delegates: the login `DELEGATE\SHARED` (the form
//! Exchange documented) opens the mailbox SHARED with DELEGATE's own local
//! password and token, when DELEGATE's `[[account]]` lists SHARED in
//! `shared`. The provider then decides whether the delegate really has
//! the right (FullAccess, Send As); the gateway only decides who may ask.

use tracing::info;

use super::errors::LoginError;
use super::names::account_name;
use super::service::Accounts;

/// `login` split into the delegate's login and the shared mailbox
/// (lower-cased), or why it cannot be a login. A login without a backslash
/// is the account's own.
pub fn split(login: &str) -> Result<(&str, Option<String>), String> {
    let form = "write it as DELEGATE\\SHARED, e.g. carine@example.com\\info@example.com";
    match login.matches('\\').count() {
        0 => Ok((login, None)),
        1 => {
            let (delegate, shared) = login.split_once('\\').unwrap_or_default();
            if delegate.trim().is_empty() || shared.trim().is_empty() {
                return Err(format!(
                    "A shared-mailbox login names both mailboxes: {form}"
                ));
            }
            match account_name(shared) {
                Some(s) if s.contains('@') && !s.contains(char::is_whitespace) => {
                    Ok((delegate, Some(s)))
                }
                _ => Err(format!(
                    "`{}` is not a mailbox address; {form}",
                    shared.trim()
                )),
            }
        }
        _ => Err(format!("A login names at most one shared mailbox; {form}")),
    }
}

impl Accounts {
    /// Whether the account `user` (lower-cased, its password checked) may
    /// open `shared`: listed in its `shared`, and not an account of its own.
    pub(super) fn may_open(&self, user: &str, shared: &str) -> Result<(), LoginError> {
        let config = self.config();
        if config.find_account(shared).is_some() {
            info!(%shared, "shared-mailbox login of a mailbox that is an account itself");
            return Err(LoginError::Shared(format!(
                "{shared} is an account of its own on this gateway: log in as {shared} with its own password"
            )));
        }
        let allowed = config
            .find_account(user)
            .is_some_and(|a| a.may_open(shared));
        if !allowed {
            info!(%shared, "shared-mailbox login of a mailbox the delegate's account does not list");
            return Err(LoginError::Shared(format!(
                "{user} may not open {shared} through this gateway: the administrator lists it in `shared` of {user}'s [[account]]"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_split_into_delegate_and_shared() {
        assert_eq!(split("carine@x.test"), Ok(("carine@x.test", None)));
        assert_eq!(
            split("Carine@x.test\\Info@X.test"),
            Ok(("Carine@x.test", Some("info@x.test".to_owned())))
        );
        for bad in [
            "a@x\\b@x\\c@x",
            "\\info@x.test",
            "carine@x.test\\",
            "carine@x.test\\ ",
            "carine@x.test\\info",
        ] {
            assert!(split(bad).is_err(), "{bad}");
        }
    }
}
