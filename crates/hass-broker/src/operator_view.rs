//! The operator's view on the admin port, read-only: `/api/clients`,
//! `/api/sessions` and `/api/retained` as paged JSON, and `/` as one
//! server-rendered page without script, usable on a phone. Optionally behind
//! a token (`operator_view.token`), which a browser sends as the password of
//! HTTP Basic.

use std::sync::{Arc, LazyLock, OnceLock};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use hass_runtime::secret::{ExposeSecret, SecretString};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::inspect::{self, ClientView, Page, PageRequest, RetainedView, SessionView, Summary};
use crate::router::Router;

/// The retained listing's prefix when the page is opened without one:
/// Home Assistant's discovery topics.
pub const DEFAULT_PREFIX: &str = "homeassistant/";

/// What the routes share with the running broker.
#[derive(Debug)]
pub struct OperatorView {
    /// Set once the store is open and the router exists; until then the
    /// view answers 503.
    router: OnceLock<Arc<Router>>,
    payloads: bool,
    /// SHA-256 of the token: compared in constant time and at a fixed
    /// length, whatever length a guess has.
    token_digest: Option<[u8; 32]>,
    /// Requests refused for a missing or wrong token.
    pub unauthorized: Counter,
}

impl OperatorView {
    pub fn new(payloads: bool, token: Option<&SecretString>) -> Self {
        Self {
            router: OnceLock::new(),
            payloads,
            token_digest: token.map(|t| Sha256::digest(t.expose_secret().as_bytes()).into()),
            unauthorized: Counter::default(),
        }
    }

    /// Called by the broker once its router exists.
    pub fn attach(&self, router: Arc<Router>) {
        let _ = self.router.set(router);
    }

    /// Whether `headers` carry the token (always, without one).
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token_digest else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(presented_token);
        let admitted = presented.is_some_and(|token| {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            crate::auth::constant_time_eq(&digest, expected)
        });
        if !admitted {
            self.unauthorized.inc();
        }
        admitted
    }
}

/// The token of `Authorization: Bearer T`, or the password of
/// `Authorization: Basic base64(user:T)` (any user name).
fn presented_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text
            .split_once(':')
            .map(|(_, password)| password.to_owned());
    }
    None
}

/// The routes, to merge beside the shared admin endpoints.
pub fn routes(view: Arc<OperatorView>) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/api/clients", get(clients))
        .route("/api/sessions", get(sessions))
        .route("/api/retained", get(retained))
        .with_state(view)
}

/// Spelled out, not `#[serde(flatten)]`: flattened, the query parser
/// reads every value as a string and refuses `limit=10`.
#[derive(Debug, Default, Deserialize)]
struct RetainedQuery {
    prefix: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

impl RetainedQuery {
    fn page(&self) -> PageRequest {
        PageRequest {
            limit: self.limit,
            after: self.after.clone(),
        }
    }
}

async fn clients(
    State(view): State<Arc<OperatorView>>,
    headers: HeaderMap,
    Query(page): Query<PageRequest>,
) -> Response {
    guarded(&view, &headers, |router| {
        json(&router.inspect(|state| inspect::clients(state, &page)))
    })
}

async fn sessions(
    State(view): State<Arc<OperatorView>>,
    headers: HeaderMap,
    Query(page): Query<PageRequest>,
) -> Response {
    guarded(&view, &headers, |router| {
        json(&router.inspect(|state| inspect::sessions(state, &page)))
    })
}

async fn retained(
    State(view): State<Arc<OperatorView>>,
    headers: HeaderMap,
    Query(query): Query<RetainedQuery>,
) -> Response {
    let prefix = query.prefix.as_deref().unwrap_or("");
    guarded(&view, &headers, |router| {
        json(
            &router.inspect(|state| inspect::retained(state, prefix, &query.page(), view.payloads)),
        )
    })
}

async fn page(
    State(view): State<Arc<OperatorView>>,
    headers: HeaderMap,
    Query(query): Query<RetainedQuery>,
) -> Response {
    let prefix = query.prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
    guarded(&view, &headers, |router| {
        let first = PageRequest::default();
        let (summary, clients, sessions, retained) = router.inspect(|state| {
            (
                inspect::summary(state),
                inspect::clients(state, &first),
                inspect::sessions(state, &first),
                inspect::retained(state, prefix, &query.page(), view.payloads),
            )
        });
        let markup = render(&summary, &clients, &sessions, &retained, prefix);
        let mut response = markup.into_string().into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        response
    })
}

/// Answers 401 without the token, 503 before the router exists, else `answer`.
fn guarded(
    view: &OperatorView,
    headers: &HeaderMap,
    answer: impl FnOnce(&Router) -> Response,
) -> Response {
    if !view.admits(headers) {
        let mut response = (StatusCode::UNAUTHORIZED, "a token is required\n").into_response();
        // Basic first: a browser asks for it, and takes the token as password.
        let challenges = response.headers_mut();
        challenges.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"hass-broker\", charset=\"UTF-8\""),
        );
        challenges.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"hass-broker\""),
        );
        return no_store(response);
    }
    match view.router.get() {
        Some(router) => no_store(answer(router)),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is still opening its store\n",
        )
            .into_response(),
    }
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

const STYLE: &str = "\
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;padding:0 12px 24px;max-width:1100px;color:#1b1b1b}\
h1{font-size:1.3em;margin:14px 0 4px}h2{font-size:1.1em;margin:22px 0 6px}\
.summary{color:#555;margin:0}.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%;font-size:.92em}\
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #ddd;vertical-align:top;white-space:nowrap}\
td.wrap{white-space:normal;word-break:break-all;min-width:12em}\
th{background:#f3f3f3}code{font-size:.95em}ul{margin:4px 0;padding-left:18px}\
form{display:flex;gap:6px;flex-wrap:wrap;margin:0 0 8px}input{font:inherit;padding:4px;flex:1;min-width:10em}\
button{font:inherit;padding:4px 12px}.none{color:#777}";

/// The page may load nothing, run nothing, and style itself only with its
/// own style block (by hash, so an injected one would not apply).
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    let policy = format!(
        "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

fn render(
    summary: &Summary,
    clients: &Page<ClientView>,
    sessions: &Page<SessionView>,
    retained: &Page<RetainedView>,
    prefix: &str,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "hass-broker" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "hass-broker" }
                p.summary {
                    "Connected: " (summary.connected)
                    " · Sessions kept: " (summary.sessions)
                    " · Retained: " (summary.retained) " (" (bytes(summary.retained_bytes)) " in memory)"
                    " · Queued: " (bytes(summary.queued_bytes))
                }
                h2 id="clients" { "Connected clients" }
                (clients_table(clients))
                h2 id="sessions" { "Kept sessions" }
                (sessions_table(sessions))
                h2 id="retained" { "Retained messages" }
                form method="get" action="/" {
                    input name="prefix" value=(prefix) aria-label="Topic prefix" placeholder="topic prefix";
                    button type="submit" { "Show" }
                }
                (retained_table(retained, prefix))
            }
        }
    }
}

fn clients_table(clients: &Page<ClientView>) -> Markup {
    html! {
        @if clients.items.is_empty() {
            p.none { "No client is connected." }
        } @else {
            div.scroll { table {
                thead { tr {
                    th { "Client id" } th { "User" } th { "MQTT" } th { "Address" }
                    th { "Since" } th { "Keep Alive" } th { "Subscriptions" }
                    th { "Queued" } th { "In flight" } th { "Dropped" }
                } }
                tbody { @for c in &clients.items { tr {
                    td.wrap { code { (c.client_id) } }
                    td { (c.username.as_deref().unwrap_or("—")) }
                    td { (c.protocol) }
                    td { (c.address.as_deref().unwrap_or("—")) }
                    td { (c.connected_at) }
                    td { (c.keep_alive) " s" }
                    td.wrap {
                        @if c.subscriptions.is_empty() { "none" } @else {
                            details {
                                summary { (c.subscriptions.len()) }
                                ul { @for s in &c.subscriptions {
                                    li { code { (s.filter) } " QoS " (s.qos) }
                                } }
                            }
                        }
                    }
                    td { (c.queued) }
                    td { (c.inflight) }
                    td { (c.dropped) }
                } } }
            } }
            (more(clients.total, clients.items.len(), "/api/clients"))
        }
    }
}

fn sessions_table(sessions: &Page<SessionView>) -> Markup {
    html! {
        @if sessions.items.is_empty() {
            p.none { "No session outlives its connection." }
        } @else {
            div.scroll { table {
                thead { tr {
                    th { "Client id" } th { "Owner" } th { "Online" } th { "Expires" }
                    th { "Subscriptions" } th { "Queued" } th { "Dropped" }
                } }
                tbody { @for s in &sessions.items { tr {
                    td.wrap { code { (s.client_id) } }
                    td { (s.owner.as_deref().unwrap_or("—")) }
                    td { @if s.online { "yes" } @else { "no" } }
                    td {
                        @if let Some(at) = &s.expires_at { (at) }
                        @else if let (true, Some(seconds)) = (s.online, s.expiry_interval) {
                            (seconds) " s after it disconnects"
                        } @else { "never" }
                    }
                    td { (s.subscriptions) }
                    td { (s.queued) }
                    td { (s.dropped) }
                } } }
            } }
            (more(sessions.total, sessions.items.len(), "/api/sessions"))
        }
    }
}

fn retained_table(retained: &Page<RetainedView>, prefix: &str) -> Markup {
    let shows_payloads = retained
        .items
        .iter()
        .any(|r| r.payload.is_some() || r.payload_base64.is_some());
    html! {
        @if retained.items.is_empty() {
            p.none { "Nothing retained under this prefix." }
        } @else {
            p.summary { (retained.total) " under this prefix" }
            div.scroll { table {
                thead { tr {
                    th { "Topic" } th { "Size" } th { "QoS" } th { "Received" }
                    @if shows_payloads { th { "Payload" } }
                } }
                tbody { @for r in &retained.items { tr {
                    td.wrap { code { (r.topic) } }
                    td { (bytes(r.bytes)) }
                    td { (r.qos) }
                    td { (r.received_at.as_deref().unwrap_or("—")) }
                    @if shows_payloads {
                        td.wrap { code {
                            @if let Some(text) = &r.payload { (clip(text)) }
                            @else if let Some(b64) = &r.payload_base64 { "base64:" (clip(b64)) }
                        } }
                    }
                } } }
            } }
            @if let Some(after) = &retained.next {
                p { a href=(next_page(prefix, after)) { "Next page" } }
            }
        }
    }
}

/// "N more" with where to read them, when a listing has more than one page.
fn more(total: usize, shown: usize, api: &str) -> Markup {
    html! {
        @if total > shown {
            p.summary { (total - shown) " more: " a href=(api) { (api) } }
        }
    }
}

fn next_page(prefix: &str, after: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("prefix", prefix)
        .append_pair("after", after)
        .finish();
    format!("/?{query}#retained")
}

/// At most 200 characters of a payload on the page.
fn clip(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn bytes(n: usize) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_bearer_or_the_basic_password() {
        assert_eq!(presented_token("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(presented_token("bearer  abc ").as_deref(), Some("abc"));
        // "me:pa:ss" — the password may hold colons.
        assert_eq!(
            presented_token("Basic bWU6cGE6c3M=").as_deref(),
            Some("pa:ss")
        );
        assert_eq!(presented_token("Basic !!!"), None);
        assert_eq!(presented_token("Digest x"), None);
        assert_eq!(presented_token("Bearer"), None);
    }

    #[test]
    fn long_payloads_are_clipped_on_a_character_boundary() {
        let text = "é".repeat(300);
        let clipped = clip(&text);
        assert_eq!(clipped.chars().count(), 201);
        assert!(clipped.ends_with('…'));
        assert_eq!(clip("short"), "short");
    }
}
