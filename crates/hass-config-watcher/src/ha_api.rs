//! The few Home Assistant REST calls the watcher makes, always with the bearer
//! token, retried with capped exponential backoff and jitter while Home
//! Assistant is down or starting.
//!
//! Nothing here calls `/api/` without a token: Home Assistant counts failed
//! logins per IP and can ban the pod's address (`ip_ban_enabled`). For the
//! same reason a 401 or 403 is never retried.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use hass_runtime::backoff::Backoff;
use hass_runtime::http_client::{HttpClient, HttpError, HttpRequest};
use hass_runtime::logging::Untrusted;
use hass_runtime::secret::{ExposeSecret, SecretSource, SecretString};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde_json::Value as Json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tracing::{debug, warn};

use crate::config::HomeAssistantConfig;
use crate::watch_metrics::{ApiErrorKind, WatchMetrics};

/// `/api/services` lists every service of every loaded integration: a few
/// hundred kilobytes on a big install.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// The largest WebSocket message read (`http/config` is under a kilobyte).
const MAX_WS_MESSAGE: usize = 1024 * 1024;
/// Frames read while waiting for a command's result.
const MAX_WS_FRAMES: usize = 64;
/// HTTP 500 from a service call is usually the integration failing; a couple of
/// retries cover a reload racing with startup, more would only add load.
const SERVER_ERROR_ATTEMPTS: u32 = 3;

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApiError {
    /// No HTTP answer: connection refused or reset, timeout.
    #[error("Home Assistant is unreachable: {0}")]
    Unreachable(String),
    /// The connection could not even be opened, so the request was never sent.
    #[error("Home Assistant is unreachable: {0}")]
    NotConnected(String),
    #[error("Home Assistant refused the token (HTTP {0}); check home_assistant.token")]
    Unauthorized(u16),
    #[error("Home Assistant answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("Home Assistant sent an unexpected answer: {0}")]
    BadResponse(String),
    /// A WebSocket command Home Assistant answered with an error.
    #[error("Home Assistant refused {command}: {code}: {message}")]
    Refused {
        command: String,
        code: String,
        message: String,
    },
    #[error("shutting down")]
    ShuttingDown,
}

impl ApiError {
    fn kind(&self) -> Option<ApiErrorKind> {
        Some(match self {
            Self::Unreachable(_) | Self::NotConnected(_) => ApiErrorKind::Unreachable,
            Self::Unauthorized(_) => ApiErrorKind::Unauthorized,
            Self::Status { status, .. } if *status >= 500 => ApiErrorKind::ServerError,
            Self::Status { .. } | Self::Refused { .. } => ApiErrorKind::ClientError,
            Self::BadResponse(_) => ApiErrorKind::BadResponse,
            Self::ShuttingDown => return None,
        })
    }
}

/// What Home Assistant's `check_config` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HaCheck {
    /// Set when it calls the config invalid.
    pub(crate) errors: Option<String>,
    /// Other integrations' schema errors, among real warnings.
    pub(crate) warnings: Option<String>,
}

impl HaCheck {
    /// Whether it found something wrong with `domain`'s config: an error, or
    /// a warning in the form Home Assistant gives schema errors ("Invalid
    /// config for 'domain' at …").
    pub(crate) fn rejects(&self, domain: &str) -> bool {
        let named = format!("Invalid config for '{domain}'");
        self.errors.is_some() || self.warnings.as_deref().is_some_and(|w| w.contains(&named))
    }
}

/// Whether a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Idempotent calls (reloads, reads): retry while Home Assistant is
    /// unreachable or starting (502/503/504), and a few times on 500.
    Idempotent,
    /// `homeassistant.restart`: only when the request never left (connection
    /// refused); a dropped connection after sending means it is restarting.
    OnlyIfNotSent,
}

/// A client for one Home Assistant instance.
#[derive(Debug, Clone)]
pub(crate) struct HaApi {
    base: String,
    token_source: SecretSource,
    client: HttpClient,
    request_timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    metrics: WatchMetrics,
    shutdown: hass_runtime::shutdown::Shutdown,
}

impl HaApi {
    pub(crate) fn new(
        base: String,
        token_source: SecretSource,
        config: &HomeAssistantConfig,
        metrics: WatchMetrics,
        shutdown: hass_runtime::shutdown::Shutdown,
    ) -> Self {
        Self {
            base,
            token_source,
            client: HttpClient::new(Some(config.request_timeout)),
            request_timeout: config.request_timeout,
            retry_initial: config.retry_initial,
            retry_max: config.retry_max,
            metrics,
            shutdown,
        }
    }

    /// Every domain Home Assistant has loaded, with its service names.
    pub(crate) async fn services(&self) -> Result<BTreeMap<String, BTreeSet<String>>, ApiError> {
        let body = self
            .call(Method::GET, "/api/services", None, Retry::Idempotent)
            .await?;
        parse_services(&body)
    }

    /// `POST /api/services/<domain>/<service>` with `data` (or `{}`).
    pub(crate) async fn call_service(
        &self,
        domain: &str,
        service: &str,
        data: Option<Json>,
        retry: Retry,
    ) -> Result<(), ApiError> {
        let body = data.unwrap_or_else(|| Json::Object(Default::default()));
        self.call(
            Method::POST,
            &format!("/api/services/{domain}/{service}"),
            Some(body),
            retry,
        )
        .await
        .map(drop)
    }

    /// Whether Home Assistant says it is RUNNING (`GET /api/config`'s
    /// `state`); retried while it is unreachable, so bound it by a timeout.
    pub(crate) async fn running(&self) -> Result<bool, ApiError> {
        let body = self
            .call(Method::GET, "/api/config", None, Retry::Idempotent)
            .await?;
        let config: Json = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadResponse(format!("/api/config: {e}")))?;
        Ok(config.get("state").and_then(Json::as_str) == Some("RUNNING"))
    }

    /// Raises (or replaces) the persistent notification `id`. A failure is
    /// logged, not returned: a notification is never worth stopping for.
    pub(crate) async fn notify(&self, id: &str, title: &str, message: &str) {
        let data = serde_json::json!({"notification_id": id, "title": title, "message": message});
        self.notification("create", data).await;
    }

    /// Dismisses the persistent notification `id`, if it is up.
    pub(crate) async fn dismiss(&self, id: &str) {
        self.notification("dismiss", serde_json::json!({"notification_id": id}))
            .await;
    }

    async fn notification(&self, service: &str, data: Json) {
        let called = self
            .call_service(
                "persistent_notification",
                service,
                Some(data),
                Retry::Idempotent,
            )
            .await;
        match called {
            Ok(()) | Err(ApiError::ShuttingDown) => {}
            Err(e) => tracing::warn!("persistent_notification.{service}: {e}"),
        }
    }

    /// Home Assistant's own check of the config on disk. It calls the
    /// config invalid only for errors of the core and the frontend's
    /// dependencies; every other integration's schema errors come back as
    /// warnings, with the config still "valid".
    pub(crate) async fn check_config(&self) -> Result<HaCheck, ApiError> {
        let body = self
            .call(
                Method::POST,
                "/api/config/core/check_config",
                None,
                Retry::Idempotent,
            )
            .await?;
        let json: Json = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadResponse(format!("check_config: {e}")))?;
        let text = |key: &str| {
            json.get(key).filter(|v| !v.is_null()).map(|e| match e {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        match json.get("result").and_then(Json::as_str) {
            Some("valid") => Ok(HaCheck {
                errors: None,
                warnings: text("warnings"),
            }),
            Some(_) => Ok(HaCheck {
                errors: Some(text("errors").unwrap_or_else(|| "no details".to_owned())),
                warnings: text("warnings"),
            }),
            None => Err(ApiError::BadResponse(format!(
                "check_config: no \"result\" in {json}"
            ))),
        }
    }

    /// One call, retried as `retry` allows, until it succeeds, fails for good or
    /// shutdown starts.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Json>,
        retry: Retry,
    ) -> Result<Bytes, ApiError> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let mut backoff = Backoff::new(self.retry_initial, self.retry_max).with_jitter();
        let mut server_errors: u32 = 0;
        loop {
            let result = tokio::select! {
                result = self.attempt(method.clone(), path, body.clone()) => result,
                () = self.shutdown.cancelled() => Err(ApiError::ShuttingDown),
            };
            let error = match result {
                Ok(bytes) => {
                    self.metrics.ha_up.set(1);
                    return Ok(bytes);
                }
                Err(e) => e,
            };
            if let Some(kind) = error.kind() {
                self.metrics.count_api_error(kind);
            }
            let again = match (&error, retry) {
                (ApiError::NotConnected(_), _) => true,
                (ApiError::Unreachable(_), Retry::Idempotent) => true,
                (ApiError::Status { status, .. }, Retry::Idempotent) => match *status {
                    502..=504 => true,
                    500 => {
                        server_errors += 1;
                        server_errors < SERVER_ERROR_ATTEMPTS
                    }
                    _ => false,
                },
                _ => false,
            };
            if matches!(error, ApiError::Unreachable(_) | ApiError::NotConnected(_)) {
                self.metrics.ha_up.set(0);
            }
            if !again {
                return Err(error);
            }
            let wait = backoff.next_delay();
            let attempt = backoff.attempts();
            debug!(%method, path, attempt, ?wait, "retrying: {error}");
            if attempt == 1 || attempt.is_multiple_of(10) {
                warn!(%method, path, attempt, "{error}; retrying with backoff");
            }
            if !self.shutdown.sleep(wait).await {
                return Err(ApiError::ShuttingDown);
            }
        }
    }

    async fn attempt(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, ApiError> {
        let (status, bytes) = self.exchange(method, path, body, None).await?;
        match status {
            s if s.is_success() => Ok(bytes),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(ApiError::Unauthorized(status.as_u16()))
            }
            // Escaped and cut as any peer's text in a log line.
            s => Err(ApiError::Status {
                status: s.as_u16(),
                body: Untrusted(&String::from_utf8_lossy(&bytes[..bytes.len().min(300)]))
                    .to_string(),
            }),
        }
    }

    /// One GET with the token, and an `X-Forwarded-For` as a proxy sends
    /// it; not retried: the status Home Assistant answered.
    pub(crate) async fn status_of(
        &self,
        path: &str,
        forwarded_for: Option<IpAddr>,
    ) -> Result<u16, ApiError> {
        let (status, _) = self
            .exchange(Method::GET, path, None, forwarded_for)
            .await?;
        Ok(status.as_u16())
    }

    /// One request and its whole answer, within `request_timeout`.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        forwarded_for: Option<IpAddr>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let token = self.token()?;
        let uri = hass_runtime::http_client::join(&self.base, path)
            .map_err(|e| ApiError::BadResponse(format!("cannot build the request: {e}")))?;
        let mut request = HttpRequest::new(method, uri).bearer(token.expose_secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(client) = forwarded_for {
            // An address's text is always a valid header value.
            if let Ok(value) = HeaderValue::from_str(&client.to_string()) {
                request = request.header(HeaderName::from_static("x-forwarded-for"), value);
            }
        }
        let reply = self
            .client
            .send(request, self.request_timeout, MAX_BODY)
            .await
            .map_err(|e| match e {
                HttpError::Connect(e) => ApiError::NotConnected(e),
                HttpError::BodyTooLarge(_) => ApiError::BadResponse(e.to_string()),
                HttpError::Timeout(_) | HttpError::Broken(_) => {
                    ApiError::Unreachable(e.to_string())
                }
            })?;
        Ok((reply.status, reply.body))
    }

    /// One WebSocket API command (`{"type": …}`; the id is added) and its
    /// `result`, not retried. Home Assistant's refusal (`success: false`)
    /// is [`ApiError::Refused`].
    pub(crate) async fn websocket(&self, mut command: Json) -> Result<Json, ApiError> {
        let token = self.token()?;
        let authority = self.base["http://".len()..]
            .split('/')
            .next()
            .unwrap_or_default();
        let address = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let url = format!("ws://{}/api/websocket", &self.base["http://".len()..]);
        let kind = command
            .get("type")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned();
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(&address)
                .await
                .map_err(|e| ApiError::NotConnected(format!("{address}: {e}")))?;
            let _ = stream.set_nodelay(true);
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_WS_MESSAGE))
                .max_frame_size(Some(MAX_WS_MESSAGE));
            let (mut socket, _) = client_async_with_config(url.as_str(), stream, Some(config))
                .await
                .map_err(|e| ApiError::Unreachable(format!("WebSocket handshake: {e}")))?;
            let hello = next_json(&mut socket).await?;
            if hello.get("type").and_then(Json::as_str) != Some("auth_required") {
                return Err(ApiError::BadResponse(
                    "the WebSocket API did not ask for auth".to_owned(),
                ));
            }
            let auth = serde_json::json!({"type": "auth", "access_token": token.expose_secret()});
            send_json(&mut socket, &auth).await?;
            match next_json(&mut socket)
                .await?
                .get("type")
                .and_then(Json::as_str)
            {
                Some("auth_ok") => {}
                Some("auth_invalid") => return Err(ApiError::Unauthorized(401)),
                _ => {
                    return Err(ApiError::BadResponse(
                        "the WebSocket API answered auth with something else".to_owned(),
                    ));
                }
            }
            command["id"] = Json::from(1);
            send_json(&mut socket, &command).await?;
            // Nothing is subscribed, so the result comes first; a few other
            // frames are tolerated, not an endless stream.
            for _ in 0..MAX_WS_FRAMES {
                let answer = next_json(&mut socket).await?;
                if answer.get("id") == Some(&Json::from(1))
                    && answer.get("type").and_then(Json::as_str) == Some("result")
                {
                    let _ = socket.close(None).await;
                    if answer.get("success") == Some(&Json::Bool(true)) {
                        return Ok(answer.get("result").cloned().unwrap_or(Json::Null));
                    }
                    let error = answer.get("error");
                    let text = |key: &str| {
                        error
                            .and_then(|e| e.get(key))
                            .and_then(Json::as_str)
                            .unwrap_or_default()
                            .chars()
                            .take(300)
                            .collect::<String>()
                    };
                    return Err(ApiError::Refused {
                        command: kind.clone(),
                        code: text("code"),
                        message: text("message"),
                    });
                }
            }
            Err(ApiError::BadResponse(format!("{kind}: no result")))
        };
        let result = tokio::select! {
            result = tokio::time::timeout(self.request_timeout, exchange) => result
                .unwrap_or_else(|_| Err(ApiError::Unreachable(format!(
                    "no WebSocket answer within {:?}", self.request_timeout
                )))),
            () = self.shutdown.cancelled() => Err(ApiError::ShuttingDown),
        };
        if let Err(e) = &result
            && let Some(kind) = e.kind()
        {
            self.metrics.count_api_error(kind);
        }
        result
    }

    /// The token as the Secret holds it now (a rotated Kubernetes Secret is
    /// picked up). Unreadable now means no call at all.
    fn token(&self) -> Result<SecretString, ApiError> {
        self.token_source
            .load()
            .map_err(|e| ApiError::BadResponse(format!("no token to send: {e}")))
    }
}

/// The next text frame as JSON.
async fn next_json(socket: &mut WebSocketStream<tokio::net::TcpStream>) -> Result<Json, ApiError> {
    use futures_util::StreamExt;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text)
                    .map_err(|e| ApiError::BadResponse(format!("WebSocket message: {e}")));
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(ApiError::Unreachable("the WebSocket closed".to_owned()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ApiError::Unreachable(format!("WebSocket: {e}"))),
        }
    }
}

async fn send_json(
    socket: &mut WebSocketStream<tokio::net::TcpStream>,
    value: &Json,
) -> Result<(), ApiError> {
    use futures_util::SinkExt;
    socket
        .send(Message::text(value.to_string()))
        .await
        .map_err(|e| ApiError::Unreachable(format!("WebSocket: {e}")))
}

fn parse_services(body: &[u8]) -> Result<BTreeMap<String, BTreeSet<String>>, ApiError> {
    let json: Json = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadResponse(format!("/api/services: {e}")))?;
    let Some(list) = json.as_array() else {
        return Err(ApiError::BadResponse(
            "/api/services: not a list".to_owned(),
        ));
    };
    let mut services = BTreeMap::new();
    for entry in list {
        let Some(domain) = entry.get("domain").and_then(Json::as_str) else {
            continue;
        };
        let names = entry
            .get("services")
            .and_then(Json::as_object)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        services.insert(domain.to_owned(), names);
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client for `addr` with a 2 s timeout and a token file in `dir`.
    fn client(addr: std::net::SocketAddr, dir: &std::path::Path) -> HaApi {
        let info = hass_runtime::ComponentInfo {
            name: "config-watcher",
            version: "test",
            admin_port: 0,
        };
        let metrics = WatchMetrics::register(&hass_runtime::metrics::Metrics::new(&info));
        let config = HomeAssistantConfig {
            request_timeout: Duration::from_secs(2),
            ..HomeAssistantConfig::default()
        };
        let token = dir.join("token");
        std::fs::write(&token, "token").unwrap();
        HaApi::new(
            format!("http://{addr}"),
            SecretSource::File(token),
            &config,
            metrics,
            hass_runtime::shutdown::Shutdown::new(),
        )
    }

    /// Home Assistant 2026.11's answers: an integration's schema error is a
    /// warning naming it; an error rejects every domain.
    #[test]
    fn a_check_rejects_the_domains_its_findings_name() {
        let warned = HaCheck {
            errors: None,
            warnings: Some("Invalid config for 'input_boolean' at configuration.yaml, line 6: invalid boolean value".to_owned()),
        };
        assert!(warned.rejects("input_boolean"));
        assert!(!warned.rejects("input_number"), "another domain's warning");
        assert!(!warned.rejects("input"), "a prefix of the name");
        let failed = HaCheck {
            errors: Some("Integration error: http".to_owned()),
            warnings: None,
        };
        assert!(failed.rejects("automation"));
        let clean = HaCheck {
            errors: None,
            warnings: None,
        };
        assert!(!clean.rejects("automation"));
    }

    /// What a hostile server sends after auth.
    type Script = fn() -> Vec<Message>;

    /// A WebSocket server that accepts auth and then plays `after_auth`.
    async fn hostile_server(after_auth: Script) -> std::net::SocketAddr {
        use futures_util::SinkExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let _ = ws.send(Message::text(r#"{"type":"auth_required"}"#)).await;
            let _ = next_json(&mut ws).await;
            let _ = ws.send(Message::text(r#"{"type":"auth_ok"}"#)).await;
            let _ = next_json(&mut ws).await;
            for message in after_auth() {
                if ws.send(message).await.is_err() {
                    return;
                }
            }
            // Then silence, with the connection open.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        addr
    }

    /// A peer that floods, oversizes or stalls costs the watcher a bounded
    /// read and an error, never unbounded memory or a hang.
    #[tokio::test]
    async fn websocket_answers_are_bounded_in_size_count_and_time() {
        let cases: [(Script, &str); 3] = [
            (
                || vec![Message::text("x".repeat(2 * MAX_WS_MESSAGE))],
                "too long",
            ),
            (
                || {
                    (0..1000)
                        .map(|_| Message::text(r#"{"type":"event"}"#))
                        .collect()
                },
                "no result",
            ),
            (Vec::new, "no WebSocket answer within"),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (play, expected) in cases {
            let addr = hostile_server(play).await;
            let started = std::time::Instant::now();
            let error = client(addr, dir.path())
                .websocket(serde_json::json!({"type": "http/config"}))
                .await
                .unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
            assert!(started.elapsed() < Duration::from_secs(5), "{error}");
        }
    }

    #[test]
    fn services_by_domain() {
        let body = br#"[{"domain":"automation","services":{"reload":{},"trigger":{}}},
                        {"domain":"mqtt","services":{"publish":{}}}, {"bogus":1}]"#;
        let services = parse_services(body).unwrap_or_default();
        assert!(services["automation"].contains("reload"));
        assert!(!services["mqtt"].contains("reload"));
        assert_eq!(services.len(), 2);
        assert!(parse_services(b"{}").is_err());
    }
}
