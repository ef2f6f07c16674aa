//! Account names: the one spelling of a login name that the tokens, the
//! backoff and the provider see.

use tracing::info;

/// The longest login name accepted (an e-mail address is at most 254
/// octets; this leaves room for `upstream_user` style names).
pub const MAX_USER: usize = 320;

/// The lower-cased account name of a login name, or `None` when it cannot
/// be one: empty, longer than [`MAX_USER`], or with control characters
/// (they would reach the XOAUTH2 `user=` field, file names and logs).
///
/// This name, never the login as typed, is what the tokens, the backoff
/// and the provider see. Full Unicode lower-casing can turn a character
/// into another one (the Kelvin sign `K` into `k`): a login whose folding
/// changes a non-ASCII character is accepted only when its compatibility
/// form (NFKC) folds to the same name, so that two spellings never name
/// two accounts nor one account under two names.
pub fn account_name(login: &str) -> Option<String> {
    use unicode_normalization::UnicodeNormalization as _;
    let user = login.trim();
    if user.is_empty() || user.len() > MAX_USER || user.chars().any(char::is_control) {
        return None;
    }
    let folded = user.to_lowercase();
    let changes_non_ascii = user
        .chars()
        .any(|c| !c.is_ascii() && c.to_lowercase().ne(std::iter::once(c)));
    if changes_non_ascii && user.nfkc().collect::<String>().to_lowercase() != folded {
        info!("a login name whose lower-casing is not its compatibility form's was refused");
        return None;
    }
    Some(folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_fold_to_one_spelling() {
        let cases = [
            ("  Alice@Example.TEST ", Some("alice@example.test")),
            // The Kelvin sign folds to an ASCII k, as its NFKC form does.
            ("\u{212A}im@example.test", Some("kim@example.test")),
            (
                "M\u{00DC}ller@example.test",
                Some("m\u{00FC}ller@example.test"),
            ),
            // A titlecase digraph folds to one character, its NFKC form to
            // two: two spellings, refused.
            ("\u{01C5}ana@example.test", None),
            ("", None),
            ("a\rb@example.test", None),
        ];
        for (login, name) in cases {
            assert_eq!(account_name(login).as_deref(), name, "{login:?}");
        }
    }

    #[test]
    fn names_that_cannot_be_accounts() {
        assert_eq!(
            account_name(" Alice@X.test ").as_deref(),
            Some("alice@x.test")
        );
        assert_eq!(account_name(""), None);
        assert_eq!(account_name("   "), None);
        assert_eq!(
            account_name("al\u{1}ice@x.test"),
            None,
            "the XOAUTH2 separator"
        );
        assert_eq!(account_name("al\nice@x.test"), None);
        assert_eq!(account_name(&"a".repeat(321)), None);
        assert!(account_name(&"a".repeat(320)).is_some());
    }
}
