//! The sign-in round trip: the address form, the provider's redirect (the
//! session's own `state`, once; the identity check before anything else),
//! and the password that seals the tokens.

use super::*;

#[derive(Deserialize)]
pub(super) struct AddressForm {
    #[serde(default)]
    address: String,
}

/// The address form: from a session (its CSRF token) or before one (the
/// form cookie's token). Each client may start [`SIGN_INS_PER_MINUTE`]
/// sign-ins a minute; no password is checked here, so password backoff
/// plays no part. The session is made now, when a sign-in starts.
pub(super) async fn sign_in(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<WithCsrf<AddressForm>>,
) -> Response {
    let session = app.sessions.find(&headers).filter(|h| {
        app.sessions
            .with(h, |s| s.csrf_ok(&form.csrf))
            .unwrap_or(false)
    });
    if session.is_none() && !app.sessions.form_token_ok(&headers, &form.csrf) {
        return csrf_refused();
    }
    let page = |status, address: &str, error: String| {
        index_page(&form.csrf, None, status, address, Some(error))
    };
    let address = one_line(form.rest.address.trim(), 320);
    let Some(user) = crate::accounts::account_name(&address).filter(|u| u.contains('@')) else {
        return page(
            StatusCode::BAD_REQUEST,
            &address,
            "Enter your whole e-mail address, e.g. name@example.com.".into(),
        );
    };
    if !app.sign_ins.take(peer.ip()) {
        info!(client = %peer.ip(), "portal: too many sign-ins started by this client");
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            &address,
            "Too many sign-ins were started from here. Wait a minute, then try again.".into(),
        );
    }
    let config = app.ctx.config();
    let Some(provider) = config
        .find_account(&user)
        .and_then(|a| config.provider(&a.provider))
        .cloned()
    else {
        info!(user = %user, "portal: an address that no account matches");
        return page(
            StatusCode::NOT_FOUND,
            &address,
            format!(
                "{user} is not served by this gateway. Check the address, or ask your administrator."
            ),
        );
    };
    let h = match session {
        Some(h) => h,
        None => match app.sessions.create() {
            Some(h) => h,
            None => {
                warn!("portal: every session is under way; no new one now");
                return message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Busy",
                    "The gateway has too many sign-ins under way. Try again in a few minutes.",
                );
            }
        },
    };
    start_sign_in(&app, &h, user, provider, false).await
}

/// Sends the browser to the provider's sign-in for `user` (or, for a
/// device-code provider, to the page with the code to enter there).
pub(super) async fn start_sign_in(
    app: &App,
    h: &Handle,
    user: String,
    provider: Arc<Provider>,
    again: bool,
) -> Response {
    match provider.flow {
        Flow::AuthorizationCode => {}
        Flow::DeviceCode => return start_device(app, h, user, provider, again).await,
        Flow::ClientCredentials | Flow::ServiceAccount => {
            return message(
                StatusCode::BAD_REQUEST,
                "No sign-in needed",
                format!(
                    "{user} is served with the organisation's own credentials: your administrator gives you its password."
                ),
            );
        }
    }
    let Some(redirect) = effective_redirect(&app.config, app.bound, &provider) else {
        warn!(
            provider = %provider.name,
            redirect_uri = %provider.redirect_uri,
            portal = %app.base,
            "portal: the provider's redirect_uri does not point at the portal"
        );
        return advice(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not set up for the portal",
            format!("This gateway cannot sign in {user} here yet."),
            format!(
                "The administrator must register {} as a redirect URI of the app and set redirect_uri to it in provider {}.",
                app.base, provider.name
            ),
        );
    };
    let request = match app
        .ctx
        .accounts
        .sign_in()
        .authorization_request(&provider, &redirect, &user)
    {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "portal: cannot build the sign-in request");
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in unavailable",
                e.to_string(),
            );
        }
    };
    let to = request.url.to_string();
    let stored = app.sessions.with(h, |s| {
        s.pending = Some(PendingSignIn {
            request,
            user: user.clone(),
            provider: provider.clone(),
            again,
            started: Instant::now(),
        })
    });
    if stored.is_none() {
        return not_signed_in();
    }
    info!(user = %user, again, "portal: sign-in sent to the provider");
    with_cookie(app, h, see_other(&to))
}

/// The provider's redirect: the session's own sign-in (its `state`, once),
/// else nothing.
pub(super) async fn callback(
    app: &App,
    headers: &HeaderMap,
    q: HashMap<String, String>,
) -> Response {
    let state = q.get("state").map(String::as_str).unwrap_or("");
    let h = app.sessions.find(headers);
    let pending = h
        .as_ref()
        .and_then(|h| {
            app.sessions.with(h, |s| {
                let mine = s.pending.as_ref().is_some_and(|p| {
                    bool::from(
                        p.request
                            .state
                            .expose_secret()
                            .as_bytes()
                            .ct_eq(state.as_bytes()),
                    )
                });
                if mine { s.pending.take() } else { None }
            })
        })
        .flatten();
    let (Some(h), Some(pending)) = (h, pending) else {
        app.ctx.metrics.portal_sign_in("unknown_state");
        info!("portal: a redirect for no sign-in of this browser was ignored");
        return message(
            StatusCode::BAD_REQUEST,
            "Sign-in not recognised",
            "This sign-in was started in another browser, has expired, or was already used. Start again from the first page.",
        );
    };
    if pending.started.elapsed() > sessions::SIGN_IN {
        app.ctx.metrics.portal_sign_in("unknown_state");
        return message(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "The sign-in took too long. Start again from the first page.",
        );
    }
    let csrf = csrf_of(app, &h);
    let user = pending.user.clone();
    if let Some(error) = q.get("error") {
        let error = one_line(error, 100);
        let description = one_line(q.get("error_description").map_or("", String::as_str), 300);
        app.ctx.metrics.portal_sign_in("provider_error");
        info!(user = %user, error = %error, "portal: the provider refused the sign-in");
        return render(
            StatusCode::BAD_REQUEST,
            &pages::ProviderError {
                csrf: &csrf,
                address: &user,
                advice: pages::provider_advice(&error, &description),
                error: &error,
                description: &description,
            },
        );
    }
    let Some(code) = q.get("code") else {
        app.ctx.metrics.portal_sign_in("failed");
        return message(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The provider sent no authorisation. Start again from the first page.",
        );
    };
    let provider = pending.provider.clone();
    let grant = match app
        .ctx
        .accounts
        .sign_in()
        .exchange_code(
            &provider,
            &pending.request,
            &SecretString::from(code.clone()),
        )
        .await
    {
        Ok(g) => g,
        Err(e) => {
            app.ctx.metrics.portal_sign_in("failed");
            warn!(user = %user, error = %e, "portal: the authorization code exchange failed");
            return sign_in_failed(&e);
        }
    };
    finish(
        app,
        &h,
        &user,
        provider,
        grant,
        Some(&pending.request.nonce),
        pending.again,
    )
    .await
}

/// A sign-in's grant, back from the provider (a redirect's code, or an
/// approved device code): checks that it is the account's identity, then
/// either asks for the password that will seal it or, when the account's
/// stored tokens are still good and nobody asked to authorise again, goes
/// to the account page.
async fn finish(
    app: &App,
    h: &Handle,
    user: &str,
    provider: Arc<Provider>,
    grant: crate::accounts::oauth::Grant,
    nonce: Option<&SecretString>,
    again: bool,
) -> Response {
    let user = user.to_owned();
    let csrf = csrf_of(app, h);
    let (replaces, usable) = match app.ctx.accounts.record(&user).await {
        Ok(Some(f)) => {
            let usable = !f.needs_authorization;
            (Some(f), usable)
        }
        Ok(None) => (None, false),
        Err(e) => {
            app.ctx.metrics.portal_sign_in("failed");
            warn!(user = %user, error = %e, "portal: cannot read the account's tokens");
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Account unavailable",
                "The gateway cannot read this account's stored access now. Tell your administrator (the error is in the gateway's log).",
            );
        }
    };
    let upstream_user = app.ctx.accounts.upstream_user_of(&user);
    let checked = identity::confirm(
        &provider,
        grant,
        identity::Expected {
            user: &user,
            upstream_user: &upstream_user,
            nonce,
            tenant: replaces.as_ref().and_then(|f| f.tenant.as_deref()),
        },
        &app.prover(),
    )
    .await;
    let confirmed = match checked {
        Ok(c) => c,
        Err(IdentityError::Mismatch {
            signed_in,
            expected,
        }) => {
            app.ctx.metrics.portal_sign_in("wrong_identity");
            info!(user = %user, signed_in = %signed_in, "portal: the sign-in was for another identity; nothing stored");
            return render(
                StatusCode::FORBIDDEN,
                &pages::WrongIdentity {
                    csrf: &csrf,
                    signed_in: &signed_in,
                    expected: &expected,
                },
            );
        }
        Err(e) => {
            app.ctx.metrics.portal_sign_in("wrong_identity");
            warn!(user = %user, error = %e, "portal: the sign-in's identity is not the account's; nothing stored");
            return message(StatusCode::FORBIDDEN, "Sign-in not accepted", e.to_string());
        }
    };
    if again {
        let same = app
            .sessions
            .with(h, |s| {
                s.signed_in.as_ref().is_some_and(|si| si.user == user)
            })
            .unwrap_or(false);
        if !same {
            app.ctx.metrics.portal_sign_in("failed");
            return not_signed_in();
        }
    }
    let wants_password = again || !usable;
    // The confirmed tokens wait with the accounts (sealed in the fleet's
    // shared state); this session holds only their ticket.
    let ticket = if wants_password {
        match app.ctx.accounts.hold(&confirmed, replaces.as_ref()).await {
            Ok(t) => Some(SecretString::from(t)),
            Err(e) => {
                app.ctx.metrics.portal_sign_in("failed");
                warn!(user = %user, error = %e, "portal: the sign-in cannot wait for its password");
                return message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again",
                    "The gateway cannot keep this sign-in now. Try again in a moment.",
                );
            }
        }
    } else {
        None
    };
    let Some(h) = app.sessions.renew(h) else {
        return not_signed_in();
    };
    app.sessions.with(&h, |s| {
        s.signed_in = Some(SignedIn {
            user: user.clone(),
            provider,
            unsealed: ticket.map(|ticket| Unsealed {
                ticket,
                at: Instant::now(),
            }),
        })
    });
    app.ctx.metrics.portal_sign_in("ok");
    info!(user = %user, identity = %confirmed.identity(), "portal: signed in as the account's identity");
    with_cookie(
        app,
        &h,
        see_other(if wants_password {
            "/password"
        } else {
            "/account"
        }),
    )
}

/// The page of a sign-in the token endpoint refused: what it said, and
/// what to do about it.
fn sign_in_failed(e: &crate::accounts::oauth::OAuthError) -> Response {
    use crate::accounts::oauth::OAuthError as E;
    let (code, detail) = match e {
        E::InvalidGrant(d) => ("invalid_grant", d.as_str()),
        E::Declined(d) => ("access_denied", d.as_str()),
        E::Expired => ("expired_token", ""),
        E::Other { code, description } => (code.as_str(), description.as_str()),
        _ => ("", ""),
    };
    advice(
        StatusCode::BAD_GATEWAY,
        "Sign-in failed",
        e.to_string(),
        pages::provider_advice(code, detail),
    )
}

/// Starts a device sign-in for `user` and sends the browser to its page.
async fn start_device(
    app: &App,
    h: &Handle,
    user: String,
    provider: Arc<Provider>,
    again: bool,
) -> Response {
    let details = match app.ctx.accounts.sign_in().start_device(&provider).await {
        Ok(d) => d,
        Err(e) => {
            warn!(user = %user, error = %e, "portal: cannot start the device sign-in");
            return advice(
                StatusCode::BAD_GATEWAY,
                "Sign-in unavailable",
                format!("The provider did not start a sign-in for {user}."),
                "Try again in a moment; if it keeps failing, tell your administrator (the error is in the gateway's log).".into(),
            );
        }
    };
    let interval = details.interval().max(Duration::from_secs(1));
    let now = Instant::now();
    let stored = app.sessions.with(h, |s| {
        s.pending = None;
        s.device = Some(PendingDevice {
            details,
            user: user.clone(),
            provider,
            again,
            started: now,
            next_poll: now + interval,
            interval,
        })
    });
    if stored.is_none() {
        return not_signed_in();
    }
    info!(user = %user, again, "portal: device sign-in started");
    with_cookie(app, h, see_other("/device"))
}

/// The device sign-in's page: the code to enter at the provider. Each
/// view asks the provider once (no more often than it allows) whether the
/// person entered it; the page reloads itself until then.
pub(super) async fn device(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(h) = app.sessions.find(&headers) else {
        return not_signed_in();
    };
    let now = Instant::now();
    let due = app
        .sessions
        .with(&h, |s| {
            s.device.as_ref().map(|d| {
                (
                    d.next_poll <= now,
                    d.started.elapsed() >= d.details.expires_in(),
                    d.user.clone(),
                    d.provider.clone(),
                    d.again,
                )
            })
        })
        .flatten();
    let Some((due, expired, user, provider, again)) = due else {
        return not_signed_in();
    };
    if expired {
        app.sessions.with(&h, |s| s.device = None);
        app.ctx.metrics.portal_sign_in("failed");
        return message(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "The code expired before it was entered. Start again from the first page.",
        );
    }
    if due {
        let Some(details) = app
            .sessions
            .with(&h, |s| s.device.as_ref().map(|d| d.details.clone()))
            .flatten()
        else {
            return not_signed_in();
        };
        let polled = app
            .ctx
            .accounts
            .sign_in()
            .poll_device_once(&provider, &details)
            .await;
        let slow_down = matches!(polled, Ok(crate::accounts::oauth::Poll::SlowDown));
        match polled {
            Ok(crate::accounts::oauth::Poll::Granted(grant)) => {
                app.sessions.with(&h, |s| s.device = None);
                return finish(&app, &h, &user, provider, grant, None, again).await;
            }
            Ok(_) => {
                app.sessions.with(&h, |s| {
                    if let Some(d) = s.device.as_mut() {
                        if slow_down {
                            d.interval += Duration::from_secs(5);
                        }
                        d.next_poll = Instant::now() + d.interval;
                    }
                });
            }
            Err(e) => {
                app.sessions.with(&h, |s| s.device = None);
                app.ctx.metrics.portal_sign_in("provider_error");
                warn!(user = %user, error = %e, "portal: the device sign-in failed");
                return sign_in_failed(&e);
            }
        }
    }
    let Some((uri, code, wait)) = app
        .sessions
        .with(&h, |s| {
            s.device.as_ref().map(|d| {
                (
                    d.details.verification_uri().to_string(),
                    d.details.user_code().secret().clone(),
                    d.next_poll.saturating_duration_since(Instant::now()),
                )
            })
        })
        .flatten()
    else {
        return not_signed_in();
    };
    render(
        StatusCode::OK,
        &pages::Device {
            user: &user,
            verification_uri: &uri,
            code: &code,
            refresh: wait.as_secs().max(1),
        },
    )
}

/// Whether the session holds tokens that wait for a password.
pub(super) fn has_unsealed(app: &App, h: &Handle) -> bool {
    app.sessions
        .with(h, |s| {
            s.signed_in
                .as_ref()
                .and_then(|si| si.unsealed.as_ref())
                .is_some_and(|u| u.at.elapsed() < sessions::UNSEALED)
        })
        .unwrap_or(false)
}

pub(super) async fn password_form(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(h) = app.sessions.find(&headers) else {
        return not_signed_in();
    };
    let Some((user, provider, csrf)) = signed_in(&app, &h) else {
        return not_signed_in();
    };
    if !has_unsealed(&app, &h) {
        return see_other("/account");
    }
    password_page(&csrf, &user, &provider, StatusCode::OK, None)
}

pub(super) fn password_page(
    csrf: &str,
    user: &str,
    provider: &Provider,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let provider_name = match provider.preset {
        mailgate_config::Preset::Gmail => "Google",
        mailgate_config::Preset::Office365 | mailgate_config::Preset::Outlook => "Microsoft",
        _ => "mail provider",
    };
    render(
        status,
        &pages::Password {
            csrf,
            user,
            provider_name,
            error,
            min: MIN,
        },
    )
}

#[derive(Deserialize)]
pub(super) struct PasswordForm {
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

/// Checks a new password typed twice.
pub(super) fn new_password(first: &str, second: &str) -> Result<SecretString, String> {
    if first != second {
        return Err("The two passwords differ. Type the same password twice.".into());
    }
    if first.chars().count() < MIN {
        return Err(format!("The password must have at least {MIN} characters."));
    }
    Ok(SecretString::from(first.to_owned()))
}

pub(super) async fn password_save(
    State(app): State<Arc<App>>,
    Posted { session: h, form }: Posted<PasswordForm>,
) -> Response {
    let Some((user, provider, csrf)) = signed_in(&app, &h) else {
        return not_signed_in();
    };
    if !has_unsealed(&app, &h) {
        return message(
            StatusCode::BAD_REQUEST,
            "Sign in again",
            "This sign-in is no longer waiting for a password. Start again from the first page.",
        );
    }
    let password = match new_password(&form.password, &form.confirm) {
        Ok(p) => p,
        Err(e) => return password_page(&csrf, &user, &provider, StatusCode::BAD_REQUEST, Some(e)),
    };
    // Taken out, so that the same tokens are never sealed twice.
    let Some(Some(unsealed)) = app.sessions.with(&h, |s| {
        s.signed_in.as_mut().and_then(|si| si.unsealed.take())
    }) else {
        return not_signed_in();
    };
    let sealed = app
        .ctx
        .accounts
        .seal_held(unsealed.ticket.expose_secret(), &user, &password)
        .await;
    match sealed {
        Ok(false) => message(
            StatusCode::BAD_REQUEST,
            "Sign in again",
            "This sign-in is no longer waiting for a password. Start again from the first page.",
        ),
        Ok(true) => {
            info!(user = %user, "portal: tokens stored, sealed with the password the owner chose");
            see_other("/settings?saved=1")
        }
        Err(FlowError::Store(StoreError::Changed { .. })) => message(
            StatusCode::CONFLICT,
            "Changed meanwhile",
            "This account was changed meanwhile (from another browser or on the gateway); nothing was stored. Start again from the first page.",
        ),
        Err(e) => {
            warn!(user = %user, error = %e, "portal: the tokens could not be stored");
            // The cause (a store, a path) is for the administrator's log.
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Not stored",
                "The gateway could not store the access now; nothing was stored. Start again in a moment; if it keeps failing, tell your administrator (the error is in the gateway's log).",
            )
        }
    }
}
