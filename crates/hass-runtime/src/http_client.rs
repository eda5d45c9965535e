//! The HTTP/1 client the exporter and the config watcher use to reach Home
//! Assistant (and the exporter the bridges' `/readyz`): one pooled hyper
//! client, a deadline on the whole exchange (connect, headers and body), a cap
//! on the body, and one rule for what a base URL may be.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Cloning shares the connection pool.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An answer, whatever its status.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Why no whole answer came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The connection could not be opened, so the request was never sent.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No whole answer in time; the request may have been sent.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The connection broke after the request left, or the answer was not HTTP.
    #[error("{0}")]
    Broken(String),
}

impl HttpError {
    /// A bounded label value for error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout(_) => "timeout",
            Self::BodyTooLarge(_) => "too_large",
            Self::Broken(_) => "other",
        }
    }
}

/// One request: built with [`HttpRequest::new`] and the setters.
#[derive(Debug)]
pub struct HttpRequest {
    method: Method,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Bytes>,
    /// Set when a part could not be made a header: the request is then never
    /// sent, rather than sent without it.
    unsendable: Option<&'static str>,
}

impl HttpRequest {
    pub fn new(method: Method, uri: Uri) -> Self {
        Self {
            method,
            uri,
            headers: vec![(ACCEPT, HeaderValue::from_static("application/json"))],
            body: None,
            unsendable: None,
        }
    }

    pub fn get(uri: Uri) -> Self {
        Self::new(Method::GET, uri)
    }

    /// `Authorization: Bearer <token>`, marked sensitive so hyper never
    /// prints it. A token that cannot be a header value (a control
    /// character) makes the request fail unsent: sent without the token it
    /// would count as a failed login towards Home Assistant's IP ban.
    pub fn bearer(mut self, token: &str) -> Self {
        match HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.headers.push((AUTHORIZATION, value));
            }
            Err(_) => self.unsendable = Some("the token holds a character a header cannot carry"),
        }
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A JSON body, with its content type.
    pub fn json(mut self, body: Bytes) -> Self {
        self.headers
            .push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        self.body = Some(body);
        self
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new(None)
    }
}

impl HttpClient {
    /// `connect_timeout` bounds the connect alone, so a peer that never
    /// accepts shows as [`HttpError::Connect`] (the request never left)
    /// rather than as a [`HttpError::Timeout`] of the whole exchange.
    pub fn new(connect_timeout: Option<Duration>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(connect_timeout);
        let client = Client::builder(TokioExecutor::new())
            // Idle connections are kept briefly: a poll every few seconds
            // reuses one, a restarted server is not fed a dead socket for long.
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Self { client }
    }

    /// Sends `request` and reads the whole answer within `timeout`, the body
    /// cut off at `max_body` bytes.
    pub async fn send(
        &self,
        request: HttpRequest,
        timeout: Duration,
        max_body: usize,
    ) -> Result<HttpReply, HttpError> {
        if let Some(reason) = request.unsendable {
            return Err(HttpError::Broken(format!(
                "cannot build the request: {reason}"
            )));
        }
        let mut builder = Request::builder().method(request.method).uri(request.uri);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(request.body.unwrap_or_default()))
            .map_err(|e| HttpError::Broken(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    HttpError::Connect(error_chain(&e))
                } else {
                    HttpError::Broken(error_chain(&e))
                }
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::BodyTooLarge(max_body)
                    } else {
                        HttpError::Broken(format!("reading the answer: {e}"))
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

/// An `http://host[:port][/prefix]` base URL, without its trailing slash.
///
/// HTTPS is refused: Home Assistant and the bridges are reached inside the
/// pod or the cluster. A base with credentials (`http://user:pass@ha:8123`)
/// is refused, and not quoted: the URL shows up in errors, logs and the
/// unauthenticated probe answers, and Home Assistant takes a token, never a
/// password in the URL.
pub fn base_url(url: &str) -> Result<String, String> {
    let Some(rest) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            return Err(format!(
                "{url:?}: https is not supported; use the in-pod or in-cluster http:// address"
            ));
        }
        return Err(format!("{url:?} is not an http:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "the URL holds credentials (user:password@): leave them out, Home Assistant \
             takes a token and the URL is shown in errors and probes"
                .to_owned(),
        );
    }
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let base = url.trim_end_matches('/');
    base.parse::<Uri>()
        .map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
    Ok(base.to_owned())
}

/// `base` (checked by [`base_url`]) with `path` appended.
pub fn join(base: &str, path: &str) -> Result<Uri, String> {
    let url = format!("{}{path}", base_url(base)?);
    url.parse()
        .map_err(|e| format!("{url:?} is not a valid URL: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_http_with_a_host_and_lose_the_trailing_slash() {
        assert_eq!(
            base_url("http://127.0.0.1:8123/").as_deref(),
            Ok("http://127.0.0.1:8123")
        );
        assert_eq!(
            base_url("http://ha.local/prefix").as_deref(),
            Ok("http://ha.local/prefix")
        );
        assert_eq!(
            join("http://ha:8123/", "/api/core/state")
                .unwrap()
                .to_string(),
            "http://ha:8123/api/core/state"
        );
        assert!(base_url("https://ha.local").unwrap_err().contains("https"));
        assert!(base_url("ha:8123").is_err());
        assert!(base_url("http://").is_err());
        assert!(base_url("http://bad host").is_err());
    }

    /// A token that cannot be a header is never sent without it: nothing
    /// reaches the server, and the error does not quote the token.
    #[tokio::test]
    async fn a_token_that_cannot_be_a_header_fails_the_request_unsent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let uri = join(
            &format!("http://{}", listener.local_addr().unwrap()),
            "/api/",
        )
        .unwrap();
        let request = HttpRequest::get(uri).bearer("hunter2\nX-Evil: 1");
        let error = HttpClient::default()
            .send(request, Duration::from_secs(5), 1024)
            .await
            .unwrap_err();
        assert!(matches!(error, HttpError::Broken(_)), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "a connection reached the server"
        );
    }

    /// Credentials in the URL would be shown by every error and probe answer
    /// that names the URL; they are refused without being quoted.
    #[test]
    fn credentials_in_the_url_are_refused_unquoted() {
        let e = base_url("http://admin:hunter2@ha:8123").unwrap_err();
        assert!(e.contains("credentials"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(
            join("http://ha:8123/a@b", "/x").is_ok(),
            "an @ in the path is no login"
        );
    }
}
