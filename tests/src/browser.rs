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
