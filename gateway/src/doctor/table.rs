//! The known failures of Microsoft's and Google's mail and token services,
//! each with what it means, what to do, and its section of
//! `docs/troubleshooting.md` (a test checks that every section exists).
//! `mailgate doctor` explains every failure it meets with this table.

/// One known failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// Text that identifies it in an error (matched without regard to case).
    pub marks: &'static [&'static str],
    pub meaning: &'static str,
    pub what_to_do: &'static str,
    /// The heading's anchor in `docs/troubleshooting.md`.
    pub anchor: &'static str,
}

/// Where the sections are, as a link.
pub const DOC: &str = "docs/troubleshooting.md";

/// Every known failure; the first whose mark an error contains explains it.
pub const KNOWN: &[Known] = &[
    Known {
        marks: &["5.7.139"],
        meaning: "the tenant or the mailbox has SMTP AUTH (authenticated client submission) turned off",
        what_to_do: "turn on Authenticated SMTP for the mailbox (Microsoft 365 admin center → Users → the user → Mail → Manage email apps), or send through Microsoft Graph: smtp = \"graph\" or \"auto\" in the provider",
        anchor: "smtp-57139-smtp-auth-is-off",
    },
    Known {
        marks: &["5.7.3 "],
        meaning: "Exchange refused the SMTP login of this mailbox (often app-only access without its service principal or mailbox permission, or SMTP AUTH off for the mailbox)",
        what_to_do: "for app-only access run New-ServicePrincipal and Add-MailboxPermission (docs/office365.md); otherwise turn on Authenticated SMTP for the mailbox",
        anchor: "smtp-573-authentication-unsuccessful",
    },
    Known {
        marks: &["5.7.57"],
        meaning: "the server wanted an authenticated client before MAIL FROM",
        what_to_do: "send to mailgate's SMTP listener with AUTH, and point the provider's smtp at the submission port (smtp.office365.com:587)",
        anchor: "smtp-5757-client-not-authenticated",
    },
    Known {
        marks: &["5.7.30"],
        meaning: "something tried a password (Basic authentication) at Microsoft's SMTP server, which accepts only OAuth",
        what_to_do: "make the mail program send to mailgate (which logs in with XOAUTH2), not straight to smtp.office365.com",
        anchor: "smtp-5730-basic-authentication-is-not-supported",
    },
    Known {
        marks: &["User is authenticated but not connected"],
        meaning: "the token was accepted but the mailbox cannot be opened: IMAP is off for it, or the token's user may not open it (app-only access without FullAccess, a wrong upstream_user)",
        what_to_do: "turn on IMAP for the mailbox; for app-only access run Add-MailboxPermission -AccessRights FullAccess for the application; check the account's upstream_user",
        anchor: "imap-user-is-authenticated-but-not-connected",
    },
    Known {
        marks: &["AADSTS50076", "AADSTS50079"],
        meaning: "multi-factor authentication is required (Conditional Access)",
        what_to_do: "sign in interactively once more (the portal, or mailgate login USER) and complete the MFA prompt",
        anchor: "aadsts50076-aadsts50079-mfa-required",
    },
    Known {
        marks: &["AADSTS53003"],
        meaning: "a Conditional Access policy blocks this sign-in",
        what_to_do: "ask the tenant's administrator to allow the application from the gateway's location (Entra admin center → Sign-in logs show the policy)",
        anchor: "aadsts53003-blocked-by-conditional-access",
    },
    Known {
        marks: &["AADSTS54005"],
        meaning: "the authorisation code was already redeemed",
        what_to_do: "start the sign-in again (a code works once)",
        anchor: "aadsts54005-code-already-redeemed",
    },
    Known {
        marks: &["AADSTS65001"],
        meaning: "the user or the administrator has not consented to a permission the application asks for (for example Mail.Send for Graph)",
        what_to_do: "sign in again and accept; in an organisation, an administrator grants admin consent (App registrations → API permissions → Grant admin consent)",
        anchor: "aadsts65001-consent-required",
    },
    Known {
        marks: &["AADSTS70043"],
        meaning: "the refresh token expired under a Conditional Access sign-in frequency policy",
        what_to_do: "sign in again; an administrator can lengthen the sign-in frequency for the application",
        anchor: "aadsts70043-sign-in-frequency",
    },
    Known {
        marks: &["AADSTS700016"],
        meaning: "Microsoft does not know this client_id in this tenant (a placeholder, a typo, or a single-tenant app with tenant = \"common\")",
        what_to_do: "copy the Application (client) ID from Entra admin center → App registrations into client_id; for a single-tenant app set tenant to its tenant",
        anchor: "aadsts700016-application-not-found",
    },
    Known {
        marks: &["AADSTS700027"],
        meaning: "the client assertion's signature does not verify: the certificate is not the one registered with the application",
        what_to_do: "upload the certificate (its .pem or .cer) under App registrations → Certificates & secrets; mailgate check shows its thumbprint",
        anchor: "aadsts700027-invalid-client-assertion",
    },
    Known {
        marks: &["AADSTS7000215"],
        meaning: "the client secret is wrong (often the secret's ID was copied instead of its value)",
        what_to_do: "create a new client secret, copy its Value into client_secret_file, then systemctl reload mailgate",
        anchor: "aadsts7000215-aadsts7000222-client-secret",
    },
    Known {
        marks: &["AADSTS7000222"],
        meaning: "the client secret has expired",
        what_to_do: "create a new client secret, copy its Value into client_secret_file, then systemctl reload mailgate",
        anchor: "aadsts7000215-aadsts7000222-client-secret",
    },
    Known {
        marks: &["Token has been expired or revoked"],
        meaning: "Google ended the grant: refresh tokens of an app whose consent screen is in \"Testing\" live 7 days; or the user revoked access or changed the password",
        what_to_do: "publish the app (Google Auth Platform → Audience → Publish app), then sign in again",
        anchor: "google-invalid_grant-token-has-been-expired-or-revoked",
    },
    Known {
        marks: &["unauthorized_client"],
        meaning: "the client may not use this grant or these scopes (a client that is not a Desktop app, or a service account without domain-wide delegation)",
        what_to_do: "use an OAuth client of type Desktop app; for a service account add its client ID and scopes under Admin console → Security → API controls → Domain-wide delegation",
        anchor: "google-unauthorized_client",
    },
    Known {
        marks: &["admin_policy_enforced"],
        meaning: "the Google Workspace administrator restricts third-party apps",
        what_to_do: "ask the administrator to mark the OAuth client as trusted (Admin console → Security → API controls → App access control)",
        anchor: "google-admin_policy_enforced",
    },
    Known {
        marks: &[
            "00000000-0000-0000-0000-000000000000",
            "examples' placeholder",
        ],
        meaning: "the provider's client_id is the examples' placeholder",
        what_to_do: "register an application (docs/office365.md, docs/gmail.md) and put its client ID in client_id",
        anchor: "aadsts700016-application-not-found",
    },
    Known {
        marks: &[
            "NotValidYet",
            "not valid yet",
            "certificate expired",
            "peer certificate: Expired",
            "is not valid after",
        ],
        meaning: "a certificate is not valid at this machine's time: the clock is wrong, or the certificate expired",
        what_to_do: "check this machine's clock (timedatectl; enable NTP), then the server's certificate",
        anchor: "tls-certificate-expired-or-not-yet-valid",
    },
    Known {
        marks: &[
            "cannot resolve",
            "dns error",
            "cannot connect",
            "cannot be reached",
            "did not answer in time",
        ],
        meaning: "this machine cannot reach the server: DNS, the network, a firewall or a proxy",
        what_to_do: "check DNS (resolvectl query HOST), that outbound ports 443, 993, 995, 587 and 465 are open, and [gateway] proxy if connections must go through one",
        anchor: "the-mail-server-cannot-be-reached-did-not-answer-or-failed",
    },
];

/// The known failure `text` shows, if any.
pub fn explain(text: &str) -> Option<&'static Known> {
    let lower = text.to_lowercase();
    KNOWN
        .iter()
        .find(|k| k.marks.iter().any(|m| lower.contains(&m.to_lowercase())))
}

impl Known {
    /// The link to its section.
    pub fn link(&self) -> String {
        format!("{DOC}#{}", self.anchor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's anchor of a heading: lower case, punctuation dropped,
    /// spaces to hyphens.
    fn anchor(heading: &str) -> String {
        heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    }

    #[test]
    fn every_row_has_its_section() {
        let doc = include_str!("../../../docs/troubleshooting.md");
        let anchors: Vec<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("### ").or_else(|| l.strip_prefix("## ")))
            .map(anchor)
            .collect();
        for k in KNOWN {
            assert!(
                anchors.iter().any(|a| a == k.anchor),
                "no section for {}: {anchors:?}",
                k.anchor
            );
        }
    }

    #[test]
    fn errors_are_explained() {
        let cases = [
            (
                "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant",
                "smtp-57139-smtp-auth-is-off",
            ),
            (
                "invalid_client: AADSTS7000215: Invalid client secret provided",
                "aadsts7000215-aadsts7000222-client-secret",
            ),
            (
                "a NO AUTHENTICATE failed. User is authenticated but not connected.",
                "imap-user-is-authenticated-but-not-connected",
            ),
            (
                "invalid_grant: Token has been expired or revoked.",
                "google-invalid_grant-token-has-been-expired-or-revoked",
            ),
        ];
        for (text, anchor) in cases {
            assert_eq!(explain(text).map(|k| k.anchor), Some(anchor), "{text}");
        }
        assert_eq!(explain("everything is fine"), None);
    }
}
