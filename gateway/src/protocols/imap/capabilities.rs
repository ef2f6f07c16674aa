//! The one place where IMAP capabilities are written (ARCHITECTURE practice 4).

/// What the gateway announces before login (greeting and `CAPABILITY`):
/// `STARTTLS` when offered, and `LOGINDISABLED` instead of `AUTH=PLAIN`
/// while authentication must wait for TLS.
pub fn pre_auth(starttls: bool, login_allowed: bool) -> String {
    let mut caps = String::from("IMAP4rev1 SASL-IR LITERAL+ ID");
    if login_allowed {
        caps.push_str(" AUTH=PLAIN");
    }
    if starttls {
        caps.push_str(" STARTTLS");
    }
    if !login_allowed {
        caps.push_str(" LOGINDISABLED");
    }
    caps
}

/// The upstream's post-login capabilities as passed to the client: without
/// the `AUTH=` mechanisms and the pre-login-only `STARTTLS` and
/// `LOGINDISABLED`, which mean nothing once logged in.
pub fn post_login(upstream: &[String]) -> String {
    upstream
        .iter()
        .filter(|c| {
            let u = c.to_ascii_uppercase();
            !u.starts_with("AUTH=") && u != "STARTTLS" && u != "LOGINDISABLED"
        })
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_login_drops_auth_entries() {
        let up: Vec<String> =
            "IMAP4rev1 SASL-IR AUTH=XOAUTH2 auth=plain IDLE STARTTLS LOGINDISABLED MOVE"
                .split(' ')
                .map(String::from)
                .collect();
        assert_eq!(post_login(&up), "IMAP4rev1 SASL-IR IDLE MOVE");
    }
}
