//! `[[account]]`: names and patterns, their provider, their password hash.

use super::*;

pub(super) fn accounts(
    raw: Vec<RawAccount>,
    providers: &BTreeMap<String, Arc<Provider>>,
    errs: &mut Errors<'_>,
) -> Vec<Account> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, a) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("account[{i}].{k}");
        let Some(user) = a.user.map(|u| u.trim().to_lowercase()) else {
            errs.push(
                key("user"),
                "missing; set the address the mail client logs in with",
            );
            continue;
        };
        let pattern = if let Some(domain) = user.strip_prefix("*@") {
            if domain.is_empty() || domain.contains(['@', '*', ' ']) {
                errs.push(
                    key("user"),
                    format!("`{user}`: write a domain pattern as *@example.org"),
                );
                continue;
            }
            UserPattern::Domain(domain.to_owned())
        } else {
            if user.is_empty()
                || user.contains(['*', ' ', '"', '\\'])
                || user.chars().any(char::is_control)
            {
                errs.push(
                    key("user"),
                    format!("`{user}` is not a user name: an address like alice@example.com, or *@example.com for a whole domain"),
                );
                continue;
            }
            UserPattern::Exact(user.clone())
        };
        if !seen.insert(pattern.clone()) {
            errs.push(key("user"), format!("`{pattern}` is listed twice"));
        }
        let provider_name = a.provider.unwrap_or_default();
        let provider = providers.get(&provider_name);
        if provider_name.is_empty() {
            errs.push(
                key("provider"),
                "missing; name one of the [provider.NAME] sections",
            );
        } else if provider.is_none() {
            let known: Vec<&str> = providers.keys().map(String::as_str).collect();
            errs.push(
                key("provider"),
                format!(
                    "no provider named `{provider_name}` (defined: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        if let Some(h) = &a.password_hash
            && argon2::PasswordHash::new(h).is_err()
        {
            errs.push(
                key("password_hash"),
                "not a PHC string; create one with `mailgate hash-password`",
            );
        }
        if let Some(p) = provider.filter(|p| p.is_app_only())
            && a.password_hash.is_none()
        {
            errs.push(
                key("password_hash"),
                format!(
                    "required with a {} provider (there is no user token to seal); create one with `mailgate hash-password`",
                    p.flow
                ),
            );
        }
        // One password for a whole domain's mailboxes, each opened with the
        // organisation's credentials: whoever knows it reads every mailbox.
        if let (UserPattern::Domain(domain), Some(p)) = (&pattern, provider)
            && p.is_app_only()
        {
            errs.push(
                key("user"),
                format!(
                    "`*@{domain}` with a {} provider would let whoever knows its one password_hash open every mailbox of {domain}; list each mailbox as its own [[account]] with its own password_hash",
                    p.flow
                ),
            );
        }
        let mut shared = Vec::new();
        for (j, s) in a.shared.unwrap_or_default().into_iter().enumerate() {
            let s = s.trim().to_lowercase();
            let k = format!("{}[{j}]", key("shared"));
            let parsed = match s.strip_prefix("*@") {
                Some(d) if !d.is_empty() && !d.contains(['@', '*', ' ', '\\']) => {
                    Some(UserPattern::Domain(d.to_owned()))
                }
                Some(_) => None,
                None => s
                    .split_once('@')
                    .filter(|(l, d)| {
                        !l.is_empty()
                            && !d.is_empty()
                            && !s.contains(['*', ' ', '"', '\\'])
                            && !s.chars().any(char::is_control)
                    })
                    .map(|_| UserPattern::Exact(s.clone())),
            };
            match parsed {
                Some(p) => shared.push(p),
                None => errs.push(
                    k,
                    format!(
                        "`{s}` is not a mailbox: an address like info@example.com, or *@example.com"
                    ),
                ),
            }
        }
        if !shared.is_empty() {
            if let Some(p) = provider.filter(|p| p.preset == Preset::Gmail) {
                errs.push(
                    key("shared"),
                    format!("provider {} is Gmail, which has no IMAP or SMTP delegation (Google's mail delegation is for the web interface only); remove shared", p.name),
                );
            }
            if matches!(pattern, UserPattern::Domain(_)) {
                errs.push(
                    key("shared"),
                    "a *@domain account cannot have shared mailboxes: list the delegate as its own [[account]]",
                );
            }
        }
        out.push(Account {
            user: pattern,
            provider: provider_name,
            upstream_user: a.upstream_user,
            password_hash: a.password_hash,
            shared,
        });
    }
    out
}
