//! `mailgate login` and `mailgate token import`: the local password, the
//! sign-in flows, the identity check and the sealing.

use std::io::{IsTerminal, Read};
use std::sync::Arc;

use mailgate_config::Config;
use secrecy::{ExposeSecret, SecretString};

use crate::accounts::oauth::OAuth;

use super::args::LoginFlow;
use super::common::{CliError, CliResult, open_store, out};

/// The local password: `$MAILGATE_PASSWORD`, or a prompt (twice when
/// `confirm`, which is when a password is being set: it then has the one
/// minimum length that `passwd` and the portal ask for too).
pub(super) fn read_password(prompt: &str, confirm: bool) -> Result<SecretString, CliError> {
    let password = match std::env::var("MAILGATE_PASSWORD") {
        Ok(p) if p.is_empty() => {
            return Err(CliError::User(
                "MAILGATE_PASSWORD is empty; set a non-empty password".into(),
            ));
        }
        Ok(p) => SecretString::from(p),
        Err(_) => prompt_password(prompt, confirm)?,
    };
    let min = crate::accounts::flows::MIN_PASSWORD;
    if confirm && password.expose_secret().chars().count() < min {
        return Err(CliError::User(format!(
            "the local password must have at least {min} characters; choose a longer one"
        )));
    }
    Ok(password)
}

/// Asks for a password on the terminal (twice when `confirm`).
fn prompt_password(prompt: &str, confirm: bool) -> Result<SecretString, CliError> {
    if !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal() {
        return Err(CliError::User(
            "no terminal to ask for the local password; set MAILGATE_PASSWORD".into(),
        ));
    }
    let ask = |p: &str| {
        rpassword::prompt_password(format!("{p}: "))
            .map(SecretString::from)
            .map_err(|e| {
                CliError::User(format!(
                    "cannot read the password ({e}); set MAILGATE_PASSWORD instead"
                ))
            })
    };
    let first = ask(prompt)?;
    if first.expose_secret().is_empty() {
        return Err(CliError::User("the password must not be empty".into()));
    }
    if confirm {
        let second = ask("Repeat it")?;
        if first.expose_secret() != second.expose_secret() {
            return Err(CliError::User("the two passwords differ; try again".into()));
        }
    }
    Ok(first)
}

/// The account and provider of `user`, or a user error.
fn account_provider(cfg: &Config, user: &str) -> Result<Arc<mailgate_config::Provider>, CliError> {
    let account = cfg.find_account(user).ok_or_else(|| {
        CliError::User(format!(
            "{user} matches no [[account]] in {}; add it first",
            cfg.file.display()
        ))
    })?;
    cfg.provider(&account.provider)
        .cloned()
        .ok_or_else(|| CliError::Internal("account without provider".into()))
}

pub(super) fn sign_in(
    cfg: &Config,
    user: &str,
    flow: Option<LoginFlow>,
    no_browser: bool,
    timeout: std::time::Duration,
) -> CliResult {
    use mailgate_config::Flow;
    let user = user.trim().to_lowercase();
    let provider = account_provider(cfg, &user)?;
    let flow = match (flow, provider.flow) {
        (_, f @ (Flow::ClientCredentials | Flow::ServiceAccount)) => {
            return Err(CliError::User(format!(
                "provider {} uses {f}: its accounts need no login; their local password is the account's password_hash",
                provider.name
            )));
        }
        (Some(f), _) => f,
        (None, Flow::DeviceCode) => LoginFlow::Device,
        (None, Flow::AuthorizationCode) => LoginFlow::Browser,
    };
    if flow == LoginFlow::Device && provider.device_code_url.is_none() {
        return Err(CliError::User(format!(
            "provider {} has no device_code_url (Google does not allow the device flow for mail); use --flow browser or --flow paste",
            provider.name
        )));
    }
    let password = read_password(&format!("Local password for {user}"), true)?;
    let oauth =
        OAuth::new(cfg.gateway.upstream_timeout).map_err(|e| CliError::Internal(e.to_string()))?;
    let failed = |e: crate::accounts::flows::FlowError| {
        let e = e.to_string();
        if e.contains("nothing was stored") {
            CliError::User(e)
        } else {
            CliError::User(format!("{e}; nothing was stored"))
        }
    };
    // The sign-in instructions must reach the user: a closed standard output
    // ends the login (nothing is stored) instead of panicking.
    let say = |text: String| {
        out!("{text}").map_err(|_| {
            crate::accounts::flows::FlowError::Input(
                "cannot write the sign-in instructions to standard output".into(),
            )
        })
    };
    let rt = super::common::runtime()?;
    let (grant, nonce) = rt.block_on(async {
        match flow {
            LoginFlow::Browser => {
                let server = crate::accounts::redirect::RedirectServer::bind(&provider.redirect_uri).await?;
                let sign_in = crate::accounts::flows::browser_request(&oauth, &provider, &server, &user)?;
                let url = sign_in.request.url.clone();
                let nonce = sign_in.request.nonce.clone();
                say(format!("Open this URL in a browser and sign in as {user}:\n\n{url}\n"))?;
                let _page = if no_browser {
                    None
                } else {
                    let state_dir = std::path::absolute(&cfg.gateway.state_dir)
                        .unwrap_or_else(|_| cfg.gateway.state_dir.clone());
                    match crate::accounts::flows::open_browser(&url, &state_dir) {
                        Ok(page) => Some(page),
                        Err(_) => {
                            eprintln!("(no browser could be opened; open the URL yourself)");
                            None
                        }
                    }
                };
                eprintln!(
                    "Waiting for the sign-in at {} (up to {})...",
                    server.redirect_uri,
                    humantime::format_duration(timeout)
                );
                let grant =
                    crate::accounts::flows::browser_finish(&oauth, &provider, &server, sign_in, timeout).await?;
                Ok((grant, Some(nonce)))
            }
            LoginFlow::Device => {
                let d = oauth.start_device(&provider).await?;
                say(crate::accounts::flows::device_instructions(&d))?;
                eprintln!("Waiting for the sign-in...");
                Ok((oauth.poll_device(&provider, &d).await?, None))
            }
            LoginFlow::Paste => {
                let req = oauth.authorization_request(&provider, &provider.redirect_uri, &user)?;
                say(format!(
                    "Open this URL in a browser and sign in as {user}:\n\n{}\n\nThe browser then ends on an address starting with {} (the page may not load).\nCopy that whole address from the address bar and paste it here:",
                    req.url, provider.redirect_uri
                ))?;
                let line = tokio::task::spawn_blocking(|| {
                    let mut l = String::new();
                    std::io::stdin().read_line(&mut l).map(|_| l)
                })
                .await
                .map_err(|e| crate::accounts::flows::FlowError::Input(e.to_string()))?
                .map_err(|e| crate::accounts::flows::FlowError::Input(format!("cannot read the address: {e}")))?;
                let grant = crate::accounts::flows::paste_finish(&oauth, &provider, &req, &line).await?;
                Ok((grant, Some(req.nonce.clone())))
            }
        }
    })
    .map_err(failed)?;
    let store = open_store(&rt, cfg)?;
    let recorded = recorded_tenant(&rt, &store, &user);
    let confirmed = confirm_identity(
        &rt,
        cfg,
        &provider,
        &user,
        grant,
        nonce.as_ref(),
        recorded.as_deref(),
    )
    .map_err(|e| failed(e.into()))?;
    let identity = confirmed.identity().to_owned();
    rt.block_on(crate::accounts::grants::store_confirmed(
        &crate::accounts::changes::Changes::new(store),
        confirmed,
        &password,
        crate::accounts::store::Expect::Any,
    ))
    .map_err(failed)?;
    out!(
        "stored the tokens of {user} (provider {}, signed in as {identity})",
        provider.name
    )
}

/// The tenant the stored tokens of `user` came from (Microsoft), if any.
fn recorded_tenant(
    rt: &tokio::runtime::Runtime,
    store: &crate::accounts::store::Store,
    user: &str,
) -> Option<String> {
    rt.block_on(store.load(user)).ok().flatten()?.tenant
}

/// Checks that `grant` is `user`'s account (its ID token, else one
/// upstream login as its upstream user); the identity that signed in.
fn confirm_identity(
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    provider: &Arc<mailgate_config::Provider>,
    user: &str,
    grant: crate::accounts::oauth::Grant,
    nonce: Option<&SecretString>,
    tenant: Option<&str>,
) -> Result<crate::accounts::identity::ConfirmedGrant, crate::accounts::identity::IdentityError> {
    let upstream_user = cfg
        .find_account(user)
        .and_then(|a| a.upstream_user.clone())
        .unwrap_or_else(|| user.to_owned());
    rt.block_on(crate::accounts::identity::confirm(
        provider,
        grant,
        crate::accounts::identity::Expected {
            user,
            upstream_user: &upstream_user,
            nonce,
            tenant,
        },
        &crate::accounts::identity::Prover {
            timeout: cfg.gateway.upstream_timeout,
            hostname: cfg.gateway.hostname.clone(),
            prove: crate::protocols::proof::prove,
        },
    ))
}

pub(super) fn token_import(cfg: &Config, user: &str, no_verify: bool) -> CliResult {
    let user = user.trim().to_lowercase();
    let provider = account_provider(cfg, &user)?;
    if std::io::stdin().is_terminal() {
        eprintln!("Paste the refresh token and press Enter:");
    }
    let mut input = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| CliError::User(format!("cannot read the refresh token from stdin: {e}")))?;
    let rt = input.trim();
    if rt.is_empty() || rt.contains(char::is_whitespace) {
        return Err(CliError::User(
            "stdin must hold exactly one refresh token (no spaces); e.g. `mailgate token import USER < token.txt`".into(),
        ));
    }
    let rt = SecretString::from(rt.to_owned());
    // The password first: a refused one must not cost the token (a
    // provider that rotates spends the imported one on the refresh).
    let password = read_password(&format!("Local password for {user}"), true)?;
    let runtime = super::common::runtime()?;
    let store = open_store(&runtime, cfg)?;
    let confirmed = if no_verify {
        crate::accounts::identity::asserted(&user, &provider.name, rt)
    } else {
        let oauth = OAuth::new(cfg.gateway.upstream_timeout)
            .map_err(|e| CliError::Internal(e.to_string()))?;
        let mut grant = runtime
            .block_on(oauth.refresh(&provider, &rt, crate::accounts::store::Audience::Mail))
            .map_err(|e| {
                CliError::User(format!("the token does not work: {e}; nothing was stored"))
            })?;
        // A provider that rotated the token on the refresh gave a new one.
        grant.refresh_token = grant.refresh_token.or(Some(rt));
        let recorded = recorded_tenant(&runtime, &store, &user);
        confirm_identity(
            &runtime,
            cfg,
            &provider,
            &user,
            grant,
            None,
            recorded.as_deref(),
        )
        .map_err(|e| CliError::User(e.to_string()))?
    };
    runtime
        .block_on(crate::accounts::grants::store_confirmed(
            &crate::accounts::changes::Changes::new(store),
            confirmed,
            &password,
            crate::accounts::store::Expect::Any,
        ))
        .map_err(|e| CliError::User(e.to_string()))?;
    out!(
        "stored the tokens of {user} (provider {}){}",
        provider.name,
        if no_verify {
            ", not verified"
        } else {
            ", verified with one refresh and its identity checked"
        }
    )
}

/// `mailgate passwd USER`: the old password opens the tokens, the new one
/// (twice) seals them.
pub(super) fn passwd(cfg: &Config, user: &str) -> CliResult {
    let Some(name) = crate::accounts::account_name(user) else {
        return Err(CliError::User(format!(
            "{user:?} cannot be an account name"
        )));
    };
    account_provider(cfg, &name)?;
    let runtime = super::common::runtime()?;
    let store = open_store(&runtime, cfg)?;
    if !matches!(runtime.block_on(store.load(&name)), Ok(Some(_))) {
        return Err(CliError::User(format!(
            "no tokens are stored for {name}; run `mailgate login {name}` first"
        )));
    }
    let old = read_password(&format!("Current local password for {name}"), false)?;
    let new = match std::env::var("MAILGATE_NEW_PASSWORD") {
        Ok(p) => SecretString::from(p),
        Err(_) if std::env::var_os("MAILGATE_PASSWORD").is_some() => {
            return Err(CliError::User(
                "MAILGATE_PASSWORD is set but MAILGATE_NEW_PASSWORD is not; set both, or neither to be asked"
                    .into(),
            ));
        }
        Err(_) => prompt_password(&format!("New local password for {name}"), true)?,
    };
    let changes = crate::accounts::changes::Changes::new(store.clone());
    match runtime.block_on(crate::accounts::flows::change_password(
        &changes, &store, &name, &old, &new,
    )) {
        Ok(()) => out!(
            "the local password of {name} is changed; mail clients must use the new one from their next login"
        ),
        Err(e) => Err(CliError::User(format!("{e}; nothing was changed"))),
    }
}
