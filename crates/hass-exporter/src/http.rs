//! A small HTTP/1 GET client for Home Assistant's REST API and the bridges'
//! `/readyz`: one pooled hyper client, a deadline on the whole exchange
//! (connect, headers and body), and a cap on the body size.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Cloning shares the connection pool.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// An answer, whatever its status.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub body: Bytes,
}

/// Why no answer came back.
#[derive(Debug)]
pub enum HttpError {
    Timeout(Duration),
    Connect(String),
    BodyTooLarge(usize),
    Other(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout(d) => write!(f, "no answer within {d:?}"),
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::BodyTooLarge(limit) => write!(f, "body larger than {limit} bytes"),
            Self::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for HttpError {}

impl HttpError {
    /// A bounded label value for error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::BodyTooLarge(_) => "too_large",
            Self::Other(_) => "other",
        }
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // Idle connections are kept briefly: a poll every few seconds
            // reuses one, a restarted server is not fed a dead socket for long.
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Self { client }
    }

    /// `GET uri`, with `Authorization: Bearer <bearer>` when given.
    pub async fn get(
        &self,
        uri: &Uri,
        bearer: Option<&str>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<HttpReply, HttpError> {
        let mut request = Request::get(uri.clone()).header(header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| HttpError::Other(format!("bad request for {uri}: {e}")))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    HttpError::Connect(error_chain(&e))
                } else {
                    HttpError::Other(error_chain(&e))
                }
            })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::BodyTooLarge(max_body)
                    } else {
                        HttpError::Other(format!("reading body: {e}"))
                    }
                })?
                .to_bytes();
            Ok(HttpReply { status, body })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout(timeout)),
        }
    }
}

/// "error: cause: cause", so a log line says why (refused, reset, DNS).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Joins a base URL (`http://ha:8123` or `http://ha:8123/`) and a path.
///
/// A base with credentials (`http://user:pass@ha:8123`) is refused, and not
/// quoted: the URL shows up in errors, logs and the unauthenticated probe
/// answers, and Home Assistant takes a token, never a password in the URL.
pub fn join(base: &str, path: &str) -> Result<Uri, String> {
    let authority = base.split_once("://").map_or(base, |(_, rest)| rest);
    let authority = authority.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "the URL holds credentials (user:password@): leave them out, Home Assistant \
             takes a token (home_assistant.token) and the URL is shown in errors and probes"
                .to_owned(),
        );
    }
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => Ok(uri),
        Some("https") => Err(format!(
            "{base:?}: https is not supported yet; use the in-pod http:// address"
        )),
        _ => Err(format!("{base:?} is not an http:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_accepts_http_with_or_without_slash() {
        assert_eq!(
            join("http://ha:8123/", "/api/core/state")
                .unwrap()
                .to_string(),
            "http://ha:8123/api/core/state"
        );
        assert!(
            join("https://ha", "/api")
                .unwrap_err()
                .contains("not supported yet")
        );
        assert!(join("ha:8123", "/api").is_err());
    }

    /// Credentials in the URL would be shown by every error and probe answer
    /// that names the URL; they are refused without being quoted.
    #[test]
    fn credentials_in_the_url_are_refused_unquoted() {
        let e = join("http://admin:hunter2@ha:8123", "/api/core/state").unwrap_err();
        assert!(e.contains("credentials"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(
            join("http://ha:8123/a@b", "/x").is_ok(),
            "an @ in the path is no login"
        );
    }
}
