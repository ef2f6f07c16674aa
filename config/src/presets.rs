//! The values each provider preset fills in (SPEC §3, table of presets).

use crate::{Flow, Preset};

pub(crate) struct PresetValues {
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub device_code_url: Option<String>,
    pub scopes: Vec<String>,
    pub imap: Option<&'static str>,
    pub pop3: Option<&'static str>,
    pub smtp: Option<&'static str>,
    pub default_tenant: Option<&'static str>,
}

const MS_DELEGATED_SCOPES: &[&str] = &[
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
];
const MS_APP_SCOPE: &str = "https://outlook.office365.com/.default";

pub(crate) fn values(preset: Preset, tenant: Option<&str>, flow: Flow) -> PresetValues {
    match preset {
        Preset::Office365 | Preset::Outlook => {
            let default_tenant = if preset == Preset::Office365 {
                "common"
            } else {
                "consumers"
            };
            let t = tenant.unwrap_or(default_tenant);
            let base = format!("https://login.microsoftonline.com/{t}/oauth2/v2.0");
            let scopes = if flow == Flow::ClientCredentials {
                vec![MS_APP_SCOPE.to_owned()]
            } else {
                MS_DELEGATED_SCOPES.iter().map(|s| s.to_string()).collect()
            };
            PresetValues {
                authorize_url: Some(format!("{base}/authorize")),
                token_url: Some(format!("{base}/token")),
                device_code_url: Some(format!("{base}/devicecode")),
                scopes,
                imap: Some("imaps://outlook.office365.com:993"),
                pop3: Some("pop3s://outlook.office365.com:995"),
                smtp: Some(if preset == Preset::Office365 {
                    "smtp://smtp.office365.com:587"
                } else {
                    "smtp://smtp-mail.outlook.com:587"
                }),
                default_tenant: Some(default_tenant),
            }
        }
        Preset::Gmail => PresetValues {
            authorize_url: Some("https://accounts.google.com/o/oauth2/v2/auth".into()),
            token_url: Some("https://oauth2.googleapis.com/token".into()),
            device_code_url: None,
            scopes: vec!["https://mail.google.com/".into()],
            imap: Some("imaps://imap.gmail.com:993"),
            pop3: Some("pop3s://pop.gmail.com:995"),
            smtp: Some("smtps://smtp.gmail.com:465"),
            default_tenant: None,
        },
        Preset::Custom => PresetValues {
            authorize_url: None,
            token_url: None,
            device_code_url: None,
            scopes: Vec::new(),
            imap: None,
            pop3: None,
            smtp: None,
            default_tenant: None,
        },
    }
}
