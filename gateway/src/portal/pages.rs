//! The portal's pages: askama templates (under `gateway/templates/portal`,
//! escaped by default) and the plain-language advice for provider errors.

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::accounts::flows::MIN_PASSWORD;

#[derive(Debug, Template)]
#[template(path = "portal/index.html")]
pub struct Index<'a> {
    pub csrf: &'a str,
    pub address: &'a str,
    pub error: Option<String>,
}

#[derive(Debug, Template)]
#[template(path = "portal/message.html")]
pub struct Message<'a> {
    pub title: &'a str,
    pub text: String,
    pub advice: Option<String>,
    /// `error` or `ok`.
    pub class: &'a str,
}

#[derive(Debug, Template)]
#[template(path = "portal/wrong_identity.html")]
pub struct WrongIdentity<'a> {
    pub csrf: &'a str,
    pub signed_in: &'a str,
    pub expected: &'a str,
}

#[derive(Debug, Template)]
#[template(path = "portal/provider_error.html")]
pub struct ProviderError<'a> {
    pub csrf: &'a str,
    pub address: &'a str,
    pub error: &'a str,
    pub description: &'a str,
    pub advice: String,
}

/// A device sign-in's code, while the person enters it at the provider.
#[derive(Debug, Template)]
#[template(path = "portal/device.html")]
pub struct Device<'a> {
    pub user: &'a str,
    pub verification_uri: &'a str,
    pub code: &'a str,
    /// Seconds until the page reloads (and asks the provider again).
    pub refresh: u64,
}

#[derive(Debug, Template)]
#[template(path = "portal/password.html")]
pub struct Password<'a> {
    pub csrf: &'a str,
    pub user: &'a str,
    pub provider_name: &'a str,
    pub error: Option<String>,
    pub min: usize,
}

/// One listener as a mail program must be told.
#[derive(Debug, Clone)]
pub struct Setting {
    pub id: String,
    pub title: String,
    pub host: String,
    pub port: u16,
    pub encryption: &'static str,
    pub fingerprint: Option<String>,
    /// The same, as text to copy.
    pub text: String,
}

#[derive(Debug, Template)]
#[template(path = "portal/settings.html")]
pub struct Settings<'a> {
    pub user: &'a str,
    pub saved: bool,
    pub listeners: &'a [Setting],
}

#[derive(Debug, Template)]
#[template(path = "portal/account.html")]
pub struct Account<'a> {
    pub csrf: &'a str,
    pub user: &'a str,
    pub state: &'a str,
    pub expires: String,
    pub last_refresh: String,
    pub sealed_at: String,
    pub last_error: String,
    /// The shared mailboxes (or patterns) the account may open.
    pub shared: Vec<String>,
    pub message: Option<String>,
    pub error: Option<String>,
    pub min: usize,
}

#[derive(Debug, Template)]
#[template(path = "portal/help.html")]
pub struct Help {
    pub body: String,
}

/// Renders a page with `status`.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a portal page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// A page that says one thing.
pub fn message(status: StatusCode, title: &str, text: impl Into<String>) -> Response {
    let class = if status.is_success() { "ok" } else { "error" };
    render(
        status,
        &Message {
            title,
            text: text.into(),
            advice: None,
            class,
        },
    )
}

/// A page that says what failed and what to do.
pub fn advice(
    status: StatusCode,
    title: &str,
    text: impl Into<String>,
    advice: String,
) -> Response {
    render(
        status,
        &Message {
            title,
            text: text.into(),
            advice: Some(advice),
            class: "error",
        },
    )
}

/// The troubleshooting guide, as a page.
pub fn help() -> Response {
    let md = include_str!("../../../docs/troubleshooting.md");
    let mut body = String::new();
    let parser = pulldown_cmark::Parser::new_ext(md, pulldown_cmark::Options::ENABLE_TABLES)
        // The guide is ours, but no raw HTML passes anyway.
        .map(|ev| match ev {
            pulldown_cmark::Event::Html(h) | pulldown_cmark::Event::InlineHtml(h) => {
                pulldown_cmark::Event::Text(h)
            }
            other => other,
        });
    pulldown_cmark::html::push_html(&mut body, parser);
    render(StatusCode::OK, &Help { body })
}

pub const MIN: usize = MIN_PASSWORD;

/// What to do about an error the provider sent back on the redirect (the
/// troubleshooting guide's advice).
pub fn provider_advice(error: &str, description: &str) -> String {
    let aadsts = description
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| w.starts_with("AADSTS"))
        .unwrap_or("");
    let by_code = match aadsts {
        "AADSTS50011" => Some(
            "The redirect URI of this portal is not registered for the app: the administrator must register it exactly (slash included) in the app registration.",
        ),
        "AADSTS65001" => Some(
            "Consent is missing: sign in again and accept, or ask your administrator to grant admin consent for the app.",
        ),
        "AADSTS65004" => Some(
            "You declined the permissions mailgate asks for. Try again and accept them to let your mail program in.",
        ),
        "AADSTS700016" => Some(
            "The app is not known in your organisation: the administrator must check the client_id and tenant of the provider.",
        ),
        "AADSTS50076" | "AADSTS50079" => Some(
            "Your organisation requires multi-factor authentication: try again and complete it.",
        ),
        "AADSTS53003" => Some(
            "A conditional access policy of your organisation blocked the sign-in: ask your administrator to allow this app.",
        ),
        "AADSTS90072" | "AADSTS50020" => Some(
            "This account belongs to another organisation than the app: the administrator must use a multitenant app (tenant = \"common\") or your tenant.",
        ),
        "AADSTS70000" | "AADSTS70008" => {
            Some("The sign-in expired before it came back: try again.")
        }
        _ => None,
    };
    if let Some(a) = by_code {
        return a.to_owned();
    }
    match error {
        "access_denied" => "You (or a policy of your organisation) declined the permissions mailgate asks for. Try again and accept them; if an administrator must approve the app, ask them to grant consent.".into(),
        "invalid_grant" => "The sign-in expired or was already used: try again.".into(),
        "consent_required" | "interaction_required" | "login_required" => {
            "Your provider needs you to sign in and consent interactively: try again.".into()
        }
        "invalid_client" | "unauthorized_client" | "invalid_request" | "invalid_scope" => {
            "The gateway's app registration is not accepted by your provider: tell your administrator (the error is in the gateway's log).".into()
        }
        "temporarily_unavailable" | "server_error" => {
            "Your provider has a temporary problem: try again in a few minutes.".into()
        }
        _ => "Try again; if it keeps failing, tell your administrator the error shown here.".into(),
    }
}

/// The address form, with `csrf` its token (the session's, or the
/// pre-session form cookie's); `form_cookie` sets that cookie.
pub fn index_page(
    csrf: &str,
    form_cookie: Option<String>,
    status: StatusCode,
    address: &str,
    error: Option<String>,
) -> Response {
    let mut r = render(
        status,
        &Index {
            csrf,
            address,
            error,
        },
    );
    if let Some(c) = form_cookie
        && let Ok(v) = axum::http::HeaderValue::from_str(&c)
    {
        r.headers_mut().append(axum::http::header::SET_COOKIE, v);
    }
    r
}

/// A `303 See Other` to `to`.
pub fn see_other(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "bad redirect").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_for_known_errors() {
        assert!(
            provider_advice("access_denied", "AADSTS65004: User declined to consent")
                .contains("declined")
        );
        assert!(
            provider_advice("invalid_request", "AADSTS50011: redirect").contains("redirect URI")
        );
        assert!(provider_advice("access_denied", "").contains("consent"));
        assert!(provider_advice("whatever", "").contains("administrator"));
    }

    #[test]
    fn pages_escape_what_they_show() {
        let html = Index {
            csrf: "t",
            address: "\"><script>x</script>",
            error: None,
        }
        .render()
        .expect("renders");
        assert!(!html.contains("<script>x"));
        assert!(
            html.contains("&#34;&#62;&#60;script&#62;")
                || html.contains("&quot;&gt;&lt;script&gt;")
        );
    }

    #[test]
    fn the_help_page_renders_the_guide() {
        let r = help();
        assert_eq!(r.status(), StatusCode::OK);
    }
}
