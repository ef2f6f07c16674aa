//! `mailgate doctor [USER]`: see [`crate::doctor`].

use std::path::Path;

use super::common::{CliError, CliResult, load, out, permission_warnings, runtime};
use crate::doctor::{Line, Logins, Status};

pub(super) fn doctor(
    path: Option<&Path>,
    user: Option<String>,
    json: bool,
    no_login: bool,
    app_only: bool,
) -> CliResult {
    let cfg = load(path)?;
    let logins = match (&user, no_login, app_only) {
        (None, ..) | (_, true, _) => Logins::None,
        (Some(_), false, true) => Logins::AppOnly,
        (Some(_), false, false) => {
            Logins::Password(super::login::read_password("Local password", false)?)
        }
    };
    let warnings: Vec<String> = permission_warnings(&cfg)
        .into_iter()
        .chain(cfg.warnings())
        .chain(crate::tasks::certificate_warnings(
            &cfg,
            std::time::SystemTime::now(),
        ))
        .collect();
    // The checks' own gateway logs only what goes wrong.
    crate::observe::logging::init(
        mailgate_config::LogFormat::Text,
        crate::observe::logging::filter(None, "error").map_err(CliError::User)?,
    );
    let lines = runtime()?.block_on(crate::doctor::run(cfg, warnings, user.as_deref(), logins));
    let failed = lines.iter().filter(|l| l.status == Status::Fail).count();
    if json {
        let body = serde_json::json!({ "ok": failed == 0, "checks": lines });
        out!(
            "{}",
            serde_json::to_string_pretty(&body).map_err(|e| CliError::Internal(e.to_string()))?
        )?;
    } else {
        let text: Vec<String> = lines.iter().map(Line::render).collect();
        out!("{}", text.join("\n"))?;
    }
    if failed > 0 {
        return Err(CliError::User(format!(
            "{failed} check(s) failed; each says what to do"
        )));
    }
    Ok(())
}
