//! The HTTP client of every OAuth exchange: an answer is read up to
//! [`MAX_ANSWER`] bytes only.

use super::answer::{HttpError, MAX_ANSWER};

/// Reads a response's body, refusing one over [`MAX_ANSWER`] bytes
/// (announced or not) without reading further.
pub(super) async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, HttpError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER as u64)
    {
        return Err(HttpError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(HttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The `oauth2` crate's HTTP client: reqwest, with answers capped at
/// [`MAX_ANSWER`] bytes.
pub(super) struct Capped(pub(super) reqwest::Client);

impl<'c> oauth2::AsyncHttpClient<'c> for Capped {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = self.0.execute(request).await?;
            let mut builder = oauth2::http::Response::builder()
                .status(response.status())
                .version(response.version());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = read_capped(response).await?;
            Ok(builder.body(body)?)
        })
    }
}
