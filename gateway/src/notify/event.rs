//! What the notifiers are told.

/// One event for the notifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `needs_sign_in`, `ready`, `throttled`, `credential_expiring` (no
    /// user: every account of the provider) or `test`.
    pub kind: &'static str,
    pub user: String,
    /// Why (empty for `ready`).
    pub reason: String,
    /// The portal's page that fixes it, when the portal runs.
    pub sign_in_url: String,
}

/// The event in one sentence, for chat webhooks.
pub fn text(e: &Event) -> String {
    let fix = if e.sign_in_url.is_empty() {
        format!("the administrator can run `mailgate login {}`", e.user)
    } else {
        format!("sign in again at {}", e.sign_in_url)
    };
    match e.kind {
        "needs_sign_in" => format!(
            "The mail program of {} cannot reach its mailbox until it is signed in again ({}): {fix}",
            e.user, e.reason
        ),
        "ready" => format!("{} is signed in again; its mail flows", e.user),
        "throttled" => format!("{}: {}", e.user, e.reason),
        "credential_expiring" => format!(
            "{}: every account it serves stops when it expires; renew it (docs/office365.md, Certificate credentials)",
            e.reason
        ),
        _ => format!("A test of mailgate's notifications for {}", e.user),
    }
}
