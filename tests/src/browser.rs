//! Playing the browser on a sign-in URL that mailgate showed.

/// An HTTP client that does not follow redirects (each hop is checked).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// The first `http://` URL in a message.
pub fn url_in(text: &str) -> String {
    let start = text.find("http://").expect("a URL in the message");
    text[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Opens the sign-in URL, follows the provider's redirect to mailgate's
/// listener and checks that it took the code.
pub async fn sign_in(url: &str) {
    let r = http().get(url).send().await.expect("authorize");
    assert_eq!(r.status().as_u16(), 302);
    let to = r.headers()["location"]
        .to_str()
        .expect("a location")
        .to_string();
    let page = http().get(&to).send().await.expect("redirect");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap_or_default().contains("Signed in"));
}

/// A browser's visit to the portal without a browser: cookies and CSRF
/// tokens carried by hand, redirects followed one by one.
#[derive(Debug)]
pub struct PortalVisit {
    base: String,
    cookie: Option<String>,
}

impl PortalVisit {
    /// A visit to the portal at `base` (`http://host:port/`).
    pub fn new(base: &str) -> PortalVisit {
        PortalVisit {
            base: base.to_owned(),
            cookie: None,
        }
    }

    fn remember(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap_or_default();
            let pair = v.split(';').next().unwrap_or_default();
            if pair.contains('=') {
                self.cookie = Some(pair.to_owned());
            }
        }
    }

    /// GET `url` (absolute, or a path of the portal) with the session.
    pub async fn get(&mut self, url: &str) -> reqwest::Response {
        let url = self.absolute(url);
        let mut req = http().get(url);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        let r = req.send().await.expect("a portal GET");
        self.remember(&r);
        r
    }

    /// POSTs a form to a path of the portal with the session.
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut req = http().post(self.absolute(path)).form(form);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        let r = req.send().await.expect("a portal POST");
        self.remember(&r);
        r
    }

    fn absolute(&self, url: &str) -> String {
        if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{}{}", self.base, url.trim_start_matches('/'))
        }
    }

    /// The CSRF token of the page at `path`.
    pub async fn csrf(&mut self, path: &str) -> String {
        let page = self.get(path).await.text().await.unwrap_or_default();
        let at = page.find("name=\"csrf\" value=\"").expect("a form") + 19;
        page[at..].split('"').next().unwrap_or_default().to_owned()
    }

    /// The whole first sign-in of `address` at the fake provider, which
    /// approves it, then `password` chosen: the authorization code that
    /// went through.
    pub async fn sign_in(&mut self, address: &str, password: &str) -> String {
        let csrf = self.csrf(&format!("?address={address}")).await;
        let r = self
            .post("sign-in", &[("csrf", &csrf), ("address", address)])
            .await;
        assert_eq!(r.status().as_u16(), 303, "to the provider");
        let authorize = r.headers()["location"].to_str().unwrap().to_owned();
        let r = http().get(&authorize).send().await.expect("authorize");
        assert_eq!(r.status().as_u16(), 302, "back to the portal");
        let back = r.headers()["location"].to_str().unwrap().to_owned();
        let code = url::Url::parse(&back)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .expect("a code");
        let r = self.get(&back).await;
        assert_eq!(r.status().as_u16(), 303);
        assert_eq!(r.headers()["location"], "/password");
        let csrf = self.csrf("password").await;
        let r = self
            .post(
                "password",
                &[
                    ("csrf", &csrf),
                    ("password", password),
                    ("confirm", password),
                ],
            )
            .await;
        assert_eq!(r.status().as_u16(), 303, "sealed");
        code
    }
}
