//! The operator's view of the broker's state: who is connected, which
//! sessions are kept, what is retained. Each call copies one page out under
//! the router's lock, so a large broker is never copied whole; every string
//! in it came from a client and is escaped by whoever renders it (JSON by
//! serde, HTML by maud).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Serialize;

use crate::codec::Version;
use crate::router::Inspect;
use crate::session::Session;

/// Items per page when the request does not say.
pub const DEFAULT_PAGE: usize = 100;
/// The most items one page holds, whatever the request says.
pub const MAX_PAGE: usize = 1000;

/// Which page: at most `limit` items whose key sorts after `after`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct PageRequest {
    pub limit: Option<usize>,
    pub after: Option<String>,
}

impl PageRequest {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
    }
}

/// One page of a listing, in key order; `next` is the `after` of the next
/// page, absent on the last.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Items in the whole listing, on every page.
    pub total: usize,
    pub next: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ClientView {
    pub client_id: String,
    pub username: Option<String>,
    /// `3.1.1` or `5`.
    pub protocol: &'static str,
    /// `ip:port`; absent for the broker's in-process clients.
    pub address: Option<String>,
    pub connected_at: String,
    /// Seconds; 0: none.
    pub keep_alive: u16,
    pub subscriptions: Vec<SubscriptionView>,
    /// Messages waiting to be sent.
    pub queued: usize,
    pub queued_bytes: usize,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Messages meant for the client and lost (shed under a limit, expired,
    /// or no longer allowed by the ACL), over the session's life.
    pub dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct SubscriptionView {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub identifier: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct SessionView {
    pub client_id: String,
    /// The user that made the session; absent for an anonymous client.
    pub owner: Option<String>,
    pub online: bool,
    /// Seconds the session outlives its connection; absent: forever
    /// (MQTT 3.1.1 `clean_session = false`).
    pub expiry_interval: Option<u32>,
    pub disconnected_at: Option<String>,
    /// When an offline session will be forgotten.
    pub expires_at: Option<String>,
    pub subscriptions: usize,
    pub queued: usize,
    pub inflight: usize,
    pub dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct RetainedView {
    pub topic: String,
    /// Payload size.
    pub bytes: usize,
    pub qos: u8,
    /// Absent for messages stored before the broker kept the time.
    pub received_at: Option<String>,
    pub expires_at: Option<String>,
    /// The payload as text, when shown (`operator_view.payloads`) and UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload in base64, when shown and not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

/// Counts for the page's heading.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub connected: usize,
    pub sessions: usize,
    pub retained: usize,
    pub retained_bytes: usize,
    pub queued_bytes: usize,
}

/// `2026-12-06T17:20:00Z`; clamped to 1970..=9999, which is all RFC 3339
/// can say (a time from a corrupt store must not panic the formatter).
pub fn timestamp(at: SystemTime) -> String {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(LAST_SECOND_OF_9999);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

pub fn summary(state: &Inspect<'_>) -> Summary {
    Summary {
        connected: state.sessions.values().filter(|s| s.link.is_some()).count(),
        sessions: state
            .sessions
            .values()
            .filter(|s| s.is_persistent())
            .count(),
        retained: state.retained.client_len(),
        retained_bytes: state.retained.bytes(),
        queued_bytes: state.queued_bytes,
    }
}

/// Connected clients, by client id.
pub fn clients(state: &Inspect<'_>, page: &PageRequest) -> Page<ClientView> {
    paged(
        state.sessions.values().filter(|s| s.link.is_some()),
        page,
        client,
    )
}

/// Sessions that outlive their connection, online or not, by client id.
pub fn sessions(state: &Inspect<'_>, page: &PageRequest) -> Page<SessionView> {
    paged(
        state.sessions.values().filter(|s| s.is_persistent()),
        page,
        session,
    )
}

/// Retained messages whose topic starts with `prefix`, by topic. The
/// broker's own `$SYS/` topics are listed only for a prefix starting `$`.
pub fn retained(
    state: &Inspect<'_>,
    prefix: &str,
    page: &PageRequest,
    payloads: bool,
) -> Page<RetainedView> {
    let now = SystemTime::now();
    let under_prefix = || {
        state
            .retained
            .under(prefix)
            .filter(|m| prefix.starts_with('$') || !m.topic.starts_with('$'))
            .filter(|m| !m.is_expired(now))
    };
    let total = under_prefix().count();
    let after = page.after.as_deref().unwrap_or("");
    let limit = page.limit();
    let mut items = Vec::with_capacity(limit.min(total));
    let mut next = None;
    for message in under_prefix().filter(|m| &*m.topic > after) {
        if items.len() == limit {
            next = items.last().map(|v: &RetainedView| v.topic.clone());
            break;
        }
        let (payload, payload_base64) = match (payloads, std::str::from_utf8(&message.payload)) {
            (false, _) => (None, None),
            (true, Ok(text)) => (Some(text.to_owned()), None),
            (true, Err(_)) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&message.payload)),
            ),
        };
        items.push(RetainedView {
            topic: message.topic.to_string(),
            bytes: message.payload.len(),
            qos: message.qos as u8,
            received_at: message.received_at.map(timestamp),
            expires_at: message.expires_at.map(timestamp),
            payload,
            payload_base64,
        });
    }
    Page { items, total, next }
}

/// Sorts `sessions` by client id and renders the page after `page.after`.
fn paged<'a, T>(
    sessions: impl Iterator<Item = &'a Box<Session>>,
    page: &PageRequest,
    view: impl Fn(&Session) -> T,
) -> Page<T> {
    let mut chosen: Vec<&Session> = sessions.map(|s| &**s).collect();
    let total = chosen.len();
    let after = page.after.as_deref().unwrap_or("");
    chosen.retain(|s| &*s.client_id > after);
    chosen.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
    let limit = page.limit();
    let next = (chosen.len() > limit).then(|| chosen[limit - 1].client_id.to_string());
    let items = chosen.into_iter().take(limit).map(view).collect();
    Page { items, total, next }
}

fn client(session: &Session) -> ClientView {
    let link = session.link.as_ref();
    let mut subscriptions: Vec<SubscriptionView> = session
        .subscriptions
        .iter()
        .map(|(filter, options)| SubscriptionView {
            filter: filter.clone(),
            qos: options.qos as u8,
            no_local: options.no_local,
            retain_as_published: options.retain_as_published,
            retain_handling: options.retain_handling,
            identifier: (options.identifier > 0).then_some(options.identifier),
        })
        .collect();
    subscriptions.sort_unstable_by(|a, b| a.filter.cmp(&b.filter));
    ClientView {
        client_id: session.client_id.to_string(),
        username: link.and_then(|l| l.username.as_deref().map(str::to_owned)),
        protocol: match link.map(|l| l.version) {
            Some(Version::V4) => "3.1.1",
            _ => "5",
        },
        address: link.and_then(|l| l.peer).map(|p| p.to_string()),
        connected_at: link.map_or_else(String::new, |l| timestamp(l.connected_at)),
        keep_alive: link.map_or(0, |l| l.signal.keep_alive()),
        subscriptions,
        queued: session.queue.len(),
        queued_bytes: session.queued_bytes,
        inflight: session.inflight.len(),
        dropped: session.dropped,
    }
}

fn session(session: &Session) -> SessionView {
    let forever = session.expiry_interval == u32::MAX;
    SessionView {
        client_id: session.client_id.to_string(),
        owner: session
            .owner
            .as_deref()
            .filter(|o| !o.is_empty())
            .map(str::to_owned),
        online: session.link.is_some(),
        expiry_interval: (!forever).then_some(session.expiry_interval),
        disconnected_at: session.disconnected_at.map(timestamp),
        expires_at: session
            .disconnected_at
            .filter(|_| !forever)
            .and_then(|at| at.checked_add(Duration::from_secs(u64::from(session.expiry_interval))))
            .map(timestamp),
        subscriptions: session.subscriptions.len(),
        queued: session.queue.len(),
        inflight: session.inflight.len(),
        dropped: session.dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_outside_rfc_3339_are_clamped_not_panicked_on() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(timestamp(before), "1970-01-01T00:00:00Z");
        let far = UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 1000);
        assert_eq!(timestamp(far), "9999-12-31T23:59:59Z");
    }
}
