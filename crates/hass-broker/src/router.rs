//! The broker's shared state and every operation on it: sessions, routing
//! publishes to subscriptions, retained messages, acknowledgements, wills and
//! expiry. Connections call in under one lock and never block inside it; the
//! store receives the resulting changes in the same order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use hass_runtime::logging::Untrusted;
use rumqttd::protocol::QoS;
use tracing::{debug, warn};

use crate::acl::ClientAcl;
use crate::codec::{Version, min_qos};
use crate::message::Message;
use crate::retained::RetainedStore;
use crate::session::{
    CloseRequest, Delivery, Inflight, InflightState, Link, LinkSignal, Session,
    SubscriptionOptions, stored_subscription,
};
use crate::store::{Op, QueuedRecord, Recovered, Store};
use crate::subscription_index::{self, SubscriptionIndex};
use crate::topic;

/// Limits that keep memory bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Queued messages per session beyond which one is shed, as
    /// `slow_consumer` says (retained replays on subscribe are exempt: they
    /// are already in memory).
    pub max_queued_messages: usize,
    /// Bytes queued across all sessions; over it, the largest queue sheds
    /// its oldest messages.
    pub memory_budget: usize,
    /// QoS 1/2 deliveries in flight per MQTT 3.1.1 client (MQTT 5 clients say
    /// their own Receive Maximum; the lower of the two applies).
    pub max_inflight: u16,
    /// Which message a full queue loses.
    pub slow_consumer: SlowConsumer,
    /// Who may take over a session by connecting with its client id.
    pub client_id_takeover: ClientIdTakeover,
    /// Retained replays queued for one session and not yet sent. A client
    /// that asks for more (subscribing again and again without reading) is
    /// disconnected and its replays dropped.
    pub max_replay_messages: usize,
    /// Bytes one session's subscriptions may cost, by
    /// `subscription_index::cost` (an upper bound on what they hold).
    pub subscription_budget_per_client: usize,
    /// Bytes all sessions' subscriptions may cost, offline persistent
    /// sessions included.
    pub subscription_budget: usize,
    /// Bytes retained messages may hold (`Message::weight`); a retained
    /// message that would take them past it is delivered but not kept.
    pub retained_budget: usize,
    /// Persistent sessions, online or not, one user (or all anonymous
    /// clients) may hold; a CONNECT that would make one more is refused.
    pub max_persistent_sessions_per_user: usize,
}

/// Who may connect with a client id whose session belongs to another user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientIdTakeover {
    /// Only the user that made the session; anyone else is refused with
    /// CONNACK 0x85 (MQTT 3.1.1: rc 2, identifier rejected), and the session,
    /// its queue, its will and its live connection are untouched.
    #[default]
    SameUser,
    /// Anyone who may log in (Mosquitto's way): the new connection takes the
    /// session over, as from its owner.
    AnyUser,
}

/// Why `Router::connect` refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefused {
    /// The session belongs to another user (`ClientIdTakeover::SameUser`).
    #[error("the client id's session belongs to another user")]
    OwnedByAnother,
    /// A new persistent session for a user that holds
    /// `max_persistent_sessions_per_user` already.
    #[error("the user holds limits.max_persistent_sessions_per_user persistent sessions")]
    TooManySessions,
}

/// Which message a full queue loses, once it holds no live QoS 0 message
/// left to shed (a new QoS 1/2 message always displaces the oldest QoS 0 one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// Drop the oldest queued message for the new one: what reaches a client
    /// that fell behind (or was away) is the newest state, still in order,
    /// and its wait is bounded by how fast the queue turns over, not by how
    /// slowly the client drains it.
    #[default]
    DropOldest,
    /// Drop the new message, as Mosquitto does: the client gets the oldest
    /// messages, each having waited behind the whole queue.
    DropNewest,
    /// Drop the new message and disconnect a connected client (MQTT 5:
    /// reason 0x97 Quota exceeded); its persistent session keeps what was
    /// queued.
    Disconnect,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_queued_messages: 1_000,
            memory_budget: 256 * 1024 * 1024,
            max_inflight: 32,
            slow_consumer: SlowConsumer::DropOldest,
            client_id_takeover: ClientIdTakeover::SameUser,
            max_replay_messages: 100_000,
            // Home Assistant's filters cost ~800 bytes each
            // (`zigbee2mqtt/<device>/availability`): 10 000 of them.
            subscription_budget_per_client: 8 * 1024 * 1024,
            subscription_budget: 64 * 1024 * 1024,
            // Home Assistant's discovery is ~1-2 KB a topic: 60 000 or more.
            retained_budget: 128 * 1024 * 1024,
            // An offline session is ~700 bytes: 0.7 MB a user.
            max_persistent_sessions_per_user: 1_000,
        }
    }
}

/// Counters read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct RouterStats {
    pub publishes_routed: AtomicU64,
    pub deliveries_queued: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 messages shed from the full queue of a client that could
    /// take them now (connected, its socket not full): the publisher is
    /// outrunning it within one turn, and its connection yields.
    pub shed_before_a_ready_reader: AtomicU64,
    pub dropped_budget: AtomicU64,
    pub dropped_expired: AtomicU64,
    /// Queued deliveries the client's ACL no longer lets it read.
    pub dropped_acl: AtomicU64,
    /// Retained messages delivered but not kept: over `retained_budget`.
    pub retained_refused: AtomicU64,
    pub wills_published: AtomicU64,
    /// Wills not published because the ACL in force when they were due
    /// does not let their client write the topic.
    pub wills_refused: AtomicU64,
    /// Connections closed because their user's credentials were revoked.
    pub credentials_revoked: AtomicU64,
    pub sessions_expired: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    /// Queued retained replays dropped: replaced by a repeated SUBSCRIBE's,
    /// or dropped with a client cut off over its replay cap or the budget.
    pub replays_dropped: AtomicU64,
}

#[derive(Debug)]
pub struct Router {
    state: Mutex<RouterState>,
    store: Option<Store>,
    limits: Limits,
    pub stats: RouterStats,
}

#[derive(Debug, Default)]
struct RouterState {
    /// Boxed: the table keeps spare slots, and a slot should cost a pointer,
    /// not a whole session.
    sessions: HashMap<Arc<str>, Box<Session>>,
    /// Every session's non-shared filters, by level, for routing.
    index: SubscriptionIndex,
    /// Shared subscriptions by their full `$share/group/filter` string.
    shared: BTreeMap<String, SharedGroup>,
    /// MQTT 5 wills waiting out their Will Delay Interval, by client id.
    delayed_wills: HashMap<Arc<str>, DelayedWill>,
    retained: RetainedStore,
    queued_bytes: usize,
    /// Sum of every session's `subscription_bytes`.
    subscription_bytes: usize,
    next_conn_id: u64,
    /// Set by `close_all`: connections that attach later are told to close at once.
    closing: bool,
}

/// A will waiting for its delay, with what it is checked against when due.
#[derive(Debug)]
struct DelayedWill {
    due: SystemTime,
    message: Message,
    username: Option<Arc<str>>,
    acl: Option<Arc<ClientAcl>>,
}

/// The members of one shared subscription; each message goes to one of
/// them, in turn, preferring connected ones.
#[derive(Debug)]
struct SharedGroup {
    filter: String,
    members: Vec<Arc<str>>,
    next: usize,
}

impl SharedGroup {
    fn remove(&mut self, client_id: &str) {
        self.members.retain(|m| &**m != client_id);
    }
}

/// Read-only access to the state, for [`crate::inspect`].
#[derive(Debug)]
pub struct Inspect<'a> {
    pub sessions: &'a HashMap<Arc<str>, Box<Session>>,
    pub retained: &'a RetainedStore,
    pub queued_bytes: usize,
}

/// A point-in-time count of the router's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterSnapshot {
    pub sessions: usize,
    pub connected: usize,
    pub queued_messages: usize,
    pub queued_bytes: usize,
    pub subscriptions: usize,
    /// What the subscriptions cost, by `subscription_index::cost`.
    pub subscription_bytes: usize,
    pub retained_messages: usize,
    pub retained_bytes: usize,
}

/// What a connecting client asks for, after authentication.
#[derive(Debug)]
pub struct ConnectRequest {
    pub client_id: Arc<str>,
    pub clean_start: bool,
    pub expiry_interval: u32,
    pub will: Option<Message>,
    /// MQTT 5 Will Delay Interval, seconds.
    pub will_delay: u32,
    pub receive_maximum: u16,
    /// Keep Alive, seconds; 0: none.
    pub keep_alive: u16,
    pub version: Version,
    pub username: Option<String>,
    pub acl: Option<Arc<ClientAcl>>,
    /// Where the client connected from, for the operator's view.
    pub peer: Option<std::net::SocketAddr>,
}

/// A connection's handle on its session.
#[derive(Debug, Clone)]
pub struct Attached {
    pub conn_id: u64,
    pub session_present: bool,
    pub signal: Arc<LinkSignal>,
}

/// A packet the connection should write for its session.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Publish {
        delivery: Delivery,
        pkid: u16,
        dup: bool,
    },
    PubRel(u16),
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// DISCONNECT received: no will (unless MQTT 5 asked for it).
    Clean {
        publish_will: bool,
        expiry_override: Option<u32>,
    },
    /// Socket closed, keepalive timeout, protocol error: the will goes out.
    Abnormal,
    /// Another connection took the session over.
    TakenOver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeResult {
    Granted(QoS),
    Invalid,
    NotAuthorized,
    /// A new filter over a subscription budget; the client's other
    /// subscriptions stand.
    OverBudget(SubscriptionBudget),
}

/// Which subscription budget a filter would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionBudget {
    /// `limits.subscription_budget_per_client`.
    Client,
    /// `limits.subscription_budget`.
    Broker,
}

impl SubscriptionBudget {
    /// The `reason` label of `hass_broker_subscriptions_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client_budget",
            Self::Broker => "broker_budget",
        }
    }
}

/// The client's ACL does not allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not authorized by the ACL")]
pub struct NotAuthorized;

/// An acknowledgement for a packet id that is not in flight (a late
/// duplicate, or a confused client); ignored, as the spec allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet id {0} is not in flight")]
pub struct UnknownPacketId(pub u16);

/// Which acknowledgement a client sent for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubComp,
}

impl Router {
    /// A router holding what the store recovered.
    pub fn new(limits: Limits, store: Option<(Store, Recovered)>) -> Self {
        let mut state = RouterState::default();
        let store = store.map(|(store, recovered)| {
            restore(&mut state, recovered);
            store
        });
        Self {
            state: Mutex::new(state),
            store,
            limits,
            stats: RouterStats::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn submit(&self, op: Op) -> Option<u64> {
        self.store.as_ref().map(|s| s.submit(op))
    }

    /// Counts for metrics and `$SYS`.
    pub fn snapshot(&self) -> RouterSnapshot {
        let state = self.lock();
        RouterSnapshot {
            sessions: state.sessions.len(),
            connected: state.sessions.values().filter(|s| s.link.is_some()).count(),
            queued_messages: state.sessions.values().map(|s| s.queue.len()).sum(),
            queued_bytes: state.queued_bytes,
            subscriptions: state.sessions.values().map(|s| s.subscriptions.len()).sum(),
            subscription_bytes: state.subscription_bytes,
            retained_messages: state.retained.client_len(),
            retained_bytes: state.retained.bytes(),
        }
    }

    /// Runs `read` under the lock. It holds up every connection meanwhile:
    /// copy out one page and return.
    pub fn inspect<T>(&self, read: impl FnOnce(&Inspect<'_>) -> T) -> T {
        let state = self.lock();
        read(&Inspect {
            sessions: &state.sessions,
            retained: &state.retained,
            queued_bytes: state.queued_bytes,
        })
    }

    /// Attaches a connection to its session, creating or resuming it, and
    /// closes any connection that held it before.
    pub fn connect(&self, request: ConnectRequest) -> Result<Attached, ConnectRefused> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let owner: Arc<str> = request.username.as_deref().unwrap_or("").into();
        let existing = state.sessions.get(&request.client_id);
        if self.limits.client_id_takeover == ClientIdTakeover::SameUser
            && existing.is_some_and(|s| s.owner.as_ref().is_some_and(|o| *o != owner))
        {
            return Err(ConnectRefused::OwnedByAnother);
        }
        // Counted only when a persistent session is made: a scan, and rare
        // in a running home (clients come back to the sessions they have).
        let owned = |s: &Session| s.is_persistent() && s.owner.as_deref() == Some(&*owner);
        if request.expiry_interval > 0
            && !existing.is_some_and(|s| owned(s))
            && state.sessions.values().filter(|s| owned(s)).count()
                >= self.limits.max_persistent_sessions_per_user
        {
            return Err(ConnectRefused::TooManySessions);
        }
        state.next_conn_id += 1;
        let conn_id = state.next_conn_id;

        let mut old_will = None;
        let mut session_present = false;
        // A returning client cancels its delayed will (MQTT 5 §3.1.3.2.2).
        state.delayed_wills.remove(&request.client_id);
        if let Some(existing) = state.sessions.get_mut(&request.client_id) {
            if let Some(old) = existing.link.take() {
                old.signal.close(CloseRequest::TakenOver);
                // A delayed will is not due: the session lives on in this connection.
                old_will = existing
                    .will
                    .take()
                    .filter(|_| existing.will_delay == 0)
                    .map(|will| (will, old.acl));
            }
            if request.clean_start {
                let old = state.sessions.remove(&request.client_id);
                if let Some(old) = old {
                    self.forget_session(state, old);
                }
            } else {
                session_present = true;
            }
        }
        let session = state
            .sessions
            .entry(request.client_id.clone())
            .or_insert_with(|| {
                Box::new(Session::new(
                    request.client_id.clone(),
                    request.expiry_interval,
                ))
            });
        let was_persistent = session.is_persistent();
        session.expiry_interval = request.expiry_interval;
        session.disconnected_at = None;
        session.will = request.will.map(Box::new);
        session.will_delay = request.will_delay;
        session.owner = Some(owner.clone());
        let signal = Arc::new(LinkSignal::new(request.keep_alive));
        if state.closing {
            signal.close(CloseRequest::ShuttingDown);
        }
        session.link = Some(Link {
            conn_id,
            signal: signal.clone(),
            receive_maximum: request
                .receive_maximum
                .clamp(1, self.limits.max_inflight.max(1)),
            version: request.version,
            // The owner's text, shared: one allocation a connection, not two.
            username: request.username.is_some().then(|| owner.clone()),
            acl: request.acl,
            peer: request.peer,
            connected_at: SystemTime::now(),
        });
        self.persist(session, was_persistent);
        if let Some((will, acl)) = old_will {
            self.publish_will(state, *will, acl.as_deref());
        }
        Ok(Attached {
            conn_id,
            session_present,
            signal,
        })
    }

    /// Publishes a will if the ACL in force now lets its client write the
    /// topic: an ACL edit after CONNECT applies to the will too.
    fn publish_will(&self, state: &mut RouterState, will: Message, acl: Option<&ClientAcl>) {
        if !client_may_write(acl, &will.topic) {
            self.stats.wills_refused.fetch_add(1, Ordering::Relaxed);
            debug!(topic = %Untrusted(&will.topic), "will refused by the ACL in force");
            return;
        }
        self.stats.wills_published.fetch_add(1, Ordering::Relaxed);
        self.route(state, Arc::new(will));
    }

    /// Detaches a connection. Ignored if the session has moved on to a newer one.
    pub fn disconnect(&self, client_id: &str, conn_id: u64, departure: Departure) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(session) = state.sessions.get_mut(client_id) else {
            return;
        };
        if session.link.as_ref().map(|l| l.conn_id) != Some(conn_id) {
            return;
        }
        let link = session.link.take();
        let was_persistent = session.is_persistent();
        let will = match departure {
            Departure::Clean { publish_will, .. } => session.will.take().filter(|_| publish_will),
            Departure::Abnormal => session.will.take(),
            Departure::TakenOver => None,
        };
        // A session that was not persistent is not made so by its DISCONNECT
        // (a Protocol Error in MQTT 5 §3.14.2.2.2): that would pass by the
        // cap on persistent sessions.
        if let Departure::Clean {
            expiry_override: Some(expiry),
            ..
        } = departure
            && (was_persistent || expiry == 0)
        {
            session.expiry_interval = expiry;
        }
        if session.is_persistent() {
            session.disconnected_at = Some(SystemTime::now());
        }
        // A DISCONNECT may set the expiry to 0: the stored session goes too.
        self.persist(session, was_persistent);
        if !session.is_persistent()
            && let Some(session) = state.sessions.remove(client_id)
        {
            self.forget_session(state, session);
        }
        let delay = state
            .sessions
            .get(client_id)
            .map_or(0, |s| s.will_delay.min(s.expiry_interval));
        let (username, acl) = link.map(|l| (l.username, l.acl)).unwrap_or_default();
        match will {
            // Delayed until the delay passes or the session ends, whichever is first.
            Some(will) if delay > 0 => {
                let due = SystemTime::now() + Duration::from_secs(u64::from(delay));
                let delayed = DelayedWill {
                    due,
                    message: *will,
                    username,
                    acl,
                };
                state.delayed_wills.insert(client_id.into(), delayed);
            }
            Some(will) => self.publish_will(state, *will, acl.as_deref()),
            None => {}
        }
    }

    /// Routes a publish from the broker itself ($SYS) or a test. Returns the
    /// store sequence number an acknowledgement must wait for, if any.
    pub fn publish(&self, message: Message) -> Option<u64> {
        let mut guard = self.lock();
        self.route(&mut guard, Arc::new(message))
    }

    /// Routes a broker-generated message (`$SYS`) whose retained copy is
    /// kept in memory only: it is rewritten every interval anyway.
    pub fn publish_volatile(&self, message: Message) {
        let mut guard = self.lock();
        let message = Arc::new(message);
        if message.retain {
            guard.retained.set(message.clone());
        }
        let unretained = Arc::new(Message {
            retain: false,
            ..(*message).clone()
        });
        // Routed as not retained so the store is not touched; subscribers
        // with Retain As Published see it live, as Mosquitto sends $SYS.
        self.route(&mut guard, unretained);
    }

    /// Routes a client's publish after checking its ACL.
    pub fn publish_from(
        &self,
        client_id: &str,
        message: Message,
    ) -> Result<Option<u64>, NotAuthorized> {
        let mut guard = self.lock();
        let acl = guard
            .sessions
            .get(client_id)
            .and_then(|s| s.link.as_ref())
            .and_then(|l| l.acl.as_deref());
        if !client_may_write(acl, &message.topic) {
            return Err(NotAuthorized);
        }
        Ok(self.route(&mut guard, Arc::new(message)))
    }

    fn route(&self, state: &mut RouterState, message: Arc<Message>) -> Option<u64> {
        self.stats.publishes_routed.fetch_add(1, Ordering::Relaxed);
        let mut last_seq = None;
        if message.retain {
            if message.payload.is_empty() {
                if state.retained.remove(&message.topic) {
                    last_seq = self.submit(Op::DeleteRetained(message.topic.clone()));
                }
            } else if state
                .retained
                .set_within(message.clone(), self.limits.retained_budget)
            {
                last_seq = self.submit(Op::PutRetained(message.clone()));
            } else {
                self.retained_over_budget(state, &message.topic);
            }
        }
        let RouterState {
            sessions,
            queued_bytes,
            shared,
            index,
            ..
        } = state;
        // Each (client, filter) that matches, grouped by client: a client
        // gets one delivery however many of its filters match.
        let mut matched: Vec<(&Arc<str>, &str)> = Vec::new();
        index.for_each_match(&message.topic, |client, filter| {
            matched.push((client, filter))
        });
        matched.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for group in matched.chunk_by(|a, b| a.0 == b.0) {
            let Some(session) = sessions.get_mut(group[0].0) else {
                continue;
            };
            if !session.may_read(&message.topic) {
                continue;
            }
            let mut best: Option<(QoS, bool)> = None;
            let mut ids = Vec::new();
            for (_, filter) in group {
                let Some(options) = session.subscriptions.get(*filter) else {
                    continue;
                };
                if options.no_local && message.publisher.as_deref() == Some(&*session.client_id) {
                    continue;
                }
                let qos = min_qos(message.qos, options.qos);
                let keep_retain = options.retain_as_published && message.retain;
                best = Some(match best {
                    Some((q, r)) => (
                        if (qos as u8) > (q as u8) { qos } else { q },
                        r || keep_retain,
                    ),
                    None => (qos, keep_retain),
                });
                if options.identifier > 0 {
                    ids.push(options.identifier);
                }
            }
            if let Some((qos, retain)) = best {
                let delivery = Delivery {
                    message: message.clone(),
                    qos,
                    retain,
                    subscription_ids: ids,
                    queued_id: 0,
                    replay: false,
                };
                if let Some(seq) = self.enqueue(session, queued_bytes, delivery) {
                    last_seq = Some(seq);
                }
            }
        }
        for (raw, group) in shared.iter_mut() {
            if !topic::matches(&message.topic, &group.filter) {
                continue;
            }
            let Some(member) = pick_member(group, sessions, &message.topic) else {
                continue;
            };
            let Some(session) = sessions.get_mut(&member) else {
                continue;
            };
            let Some(options) = session.subscriptions.get(raw).copied() else {
                continue;
            };
            let delivery = Delivery {
                message: message.clone(),
                qos: min_qos(message.qos, options.qos),
                retain: options.retain_as_published && message.retain,
                subscription_ids: (options.identifier > 0)
                    .then_some(options.identifier)
                    .into_iter()
                    .collect(),
                queued_id: 0,
                replay: false,
            };
            if let Some(seq) = self.enqueue(session, queued_bytes, delivery) {
                last_seq = Some(seq);
            }
        }
        self.trim_to_budget(sessions, queued_bytes);
        last_seq
    }

    /// Queues a delivery within the limits; returns a store sequence number
    /// when it was persisted.
    fn enqueue(
        &self,
        session: &mut Session,
        queued_bytes: &mut usize,
        mut delivery: Delivery,
    ) -> Option<u64> {
        // Retained replays neither count against the limit nor are shed.
        if !delivery.replay && session.live_queued() >= self.limits.max_queued_messages {
            self.stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            // One message is lost either way: the oldest or this one.
            session.dropped += 1;
            let policy = self.limits.slow_consumer;
            // Shed QoS 0 first: a new QoS 1/2 message displaces an old
            // QoS 0 one, never the other way round.
            let evicted = match (delivery.qos, policy) {
                (QoS::AtMostOnce, SlowConsumer::DropOldest) => session.evict_oldest_qos0(),
                (QoS::AtMostOnce, _) => None,
                (_, SlowConsumer::DropOldest) => session.evict_oldest(),
                _ => session.evict_oldest_qos0(),
            };
            let lost_qos = evicted.as_ref().map_or(delivery.qos, |old| old.qos);
            if lost_qos == QoS::AtMostOnce
                && session
                    .link
                    .as_ref()
                    .is_some_and(|l| !l.signal.write_blocked())
            {
                self.stats
                    .shed_before_a_ready_reader
                    .fetch_add(1, Ordering::Relaxed);
            }
            match evicted {
                Some(old) => self.forget(session, queued_bytes, &old),
                None => {
                    // Nothing left to shed: a connected consumer this far
                    // behind is disconnected if the policy says so.
                    if policy == SlowConsumer::Disconnect
                        && let Some(link) = &session.link
                        && link.signal.close_requested().is_none()
                    {
                        link.signal.close(CloseRequest::SlowConsumer);
                        self.stats
                            .slow_consumer_disconnects
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return None;
                }
            }
        }
        let mut seq = None;
        if let Some(store) = &self.store
            && session.is_persistent()
            && delivery.qos != QoS::AtMostOnce
        {
            delivery.queued_id = store.next_queued_id();
            seq = Some(store.submit(Op::PutQueued {
                client_id: session.client_id.clone(),
                id: delivery.queued_id,
                queued: QueuedRecord {
                    message: delivery.message.clone(),
                    qos: delivery.qos,
                    retain: delivery.retain,
                    subscription_ids: delivery.subscription_ids.clone(),
                },
            }));
        }
        *queued_bytes += delivery.message.weight();
        session.push(delivery);
        session.wake();
        self.stats.deliveries_queued.fetch_add(1, Ordering::Relaxed);
        seq
    }

    /// Lets go of a delivery shed under a limit: its bytes, and its copy in
    /// the store.
    fn forget(&self, session: &Session, queued_bytes: &mut usize, shed: &Delivery) {
        *queued_bytes -= shed.message.weight();
        if shed.queued_id > 0 {
            self.submit(Op::DeleteQueued {
                client_id: session.client_id.clone(),
                id: shed.queued_id,
            });
        }
    }

    /// Over the memory budget, sheds the oldest live messages of the largest
    /// queue until under it again: a client that stopped reading pays for
    /// its own backlog, and everyone else's messages keep flowing.
    fn trim_to_budget(
        &self,
        sessions: &mut HashMap<Arc<str>, Box<Session>>,
        queued_bytes: &mut usize,
    ) {
        while *queued_bytes > self.limits.memory_budget {
            let Some(largest) = sessions.values_mut().max_by_key(|s| s.queued_bytes) else {
                break;
            };
            if let Some(shed) = largest.evict_oldest() {
                self.stats.dropped_budget.fetch_add(1, Ordering::Relaxed);
                largest.dropped += 1;
                self.forget(largest, queued_bytes, &shed);
                continue;
            }
            // Nothing live to shed: what is left is retained replays, which
            // a client gets again when it subscribes again.
            if largest.queued_replays() == 0 {
                break;
            }
            self.cut_off_replays(largest, queued_bytes);
        }
    }

    /// Drops every queued replay of `session` and disconnects its client:
    /// it asked for more retained messages than it reads.
    fn cut_off_replays(&self, session: &mut Session, queued_bytes: &mut usize) {
        self.drop_replays(session, queued_bytes, |_| true);
        if let Some(link) = &session.link
            && link.signal.close_requested().is_none()
        {
            link.signal.close(CloseRequest::SlowConsumer);
            self.stats
                .slow_consumer_disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops the queued replays `pick` chooses: their bytes, their copies in
    /// the store, and a count in `replays_dropped`.
    fn drop_replays(
        &self,
        session: &mut Session,
        queued_bytes: &mut usize,
        pick: impl Fn(&Delivery) -> bool,
    ) {
        let dropped = session.take_replays(pick);
        for delivery in &dropped {
            self.forget(session, queued_bytes, delivery);
        }
        self.stats
            .replays_dropped
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
    }

    /// Adds subscriptions and queues the retained messages they match.
    pub fn subscribe(
        &self,
        client_id: &str,
        filters: Vec<(String, SubscriptionOptions)>,
    ) -> Vec<SubscribeResult> {
        let mut guard = self.lock();
        let RouterState {
            sessions,
            retained,
            queued_bytes,
            subscription_bytes,
            shared,
            index,
            ..
        } = &mut *guard;
        let Some(session) = sessions.get_mut(client_id) else {
            return vec![SubscribeResult::Invalid; filters.len()];
        };
        let now = SystemTime::now();
        let mut results = Vec::with_capacity(filters.len());
        let mut cut_off = false;
        for (raw, options) in filters {
            let Ok(parsed) = topic::parse_filter(&raw) else {
                results.push(SubscribeResult::Invalid);
                continue;
            };
            let inner = parsed.filter.to_owned();
            let is_shared = parsed.share_group.is_some();
            if !session
                .link
                .as_ref()
                .and_then(|l| l.acl.as_ref())
                .is_none_or(|acl| acl.can_subscribe(&inner))
            {
                results.push(SubscribeResult::NotAuthorized);
                continue;
            }
            let existed = session.subscriptions.contains_key(&raw);
            if !existed {
                let cost = subscription_index::cost(&raw);
                if session.subscription_bytes + cost > self.limits.subscription_budget_per_client {
                    results.push(SubscribeResult::OverBudget(SubscriptionBudget::Client));
                    continue;
                }
                if *subscription_bytes + cost > self.limits.subscription_budget {
                    results.push(SubscribeResult::OverBudget(SubscriptionBudget::Broker));
                    continue;
                }
                session.subscription_bytes += cost;
                *subscription_bytes += cost;
            }
            session.subscriptions.insert(raw.clone(), options);
            if !is_shared {
                index.insert(&raw, &session.client_id);
            }
            results.push(SubscribeResult::Granted(options.qos));
            if session.is_persistent() {
                self.submit(Op::PutSubscription {
                    client_id: session.client_id.clone(),
                    subscription: stored_subscription(&raw, options),
                });
            }
            if is_shared {
                join_group(shared, &raw, inner, &session.client_id);
                // Retained messages are not sent on shared subscriptions.
                continue;
            }
            let replay = !cut_off
                && match options.retain_handling {
                    0 => true,
                    1 => !existed,
                    _ => false,
                };
            if replay {
                let subscription_ids: Vec<u32> = (options.identifier > 0)
                    .then_some(options.identifier)
                    .into_iter()
                    .collect();
                // The same SUBSCRIBE again replaces the replays of the last
                // one that are still waiting: the client gets each retained
                // message once, however often it asks before reading.
                self.drop_replays(session, queued_bytes, |d| {
                    d.subscription_ids == subscription_ids && topic::matches(&d.message.topic, &raw)
                });
                let matching: Vec<Arc<Message>> = retained.matching(&raw, now).cloned().collect();
                if session.queued_replays() + matching.len() > self.limits.max_replay_messages {
                    self.cut_off_replays(session, queued_bytes);
                    cut_off = true;
                    continue;
                }
                for message in matching {
                    let delivery = Delivery {
                        qos: min_qos(message.qos, options.qos),
                        message,
                        // Retained replays always carry the retain flag.
                        retain: true,
                        subscription_ids: subscription_ids.clone(),
                        queued_id: 0,
                        replay: true,
                    };
                    self.enqueue(session, queued_bytes, delivery);
                }
            }
        }
        self.trim_to_budget(sessions, queued_bytes);
        results
    }

    /// Removes subscriptions; returns whether each existed.
    pub fn unsubscribe(&self, client_id: &str, filters: &[String]) -> Vec<bool> {
        let mut guard = self.lock();
        let RouterState {
            sessions,
            shared,
            index,
            subscription_bytes,
            ..
        } = &mut *guard;
        let Some(session) = sessions.get_mut(client_id) else {
            return vec![false; filters.len()];
        };
        let existed: Vec<bool> = filters
            .iter()
            .map(|f| session.subscriptions.remove(f).is_some())
            .collect();
        for (filter, existed) in filters.iter().zip(&existed) {
            leave_group(shared, filter, client_id);
            if *existed {
                index.remove(filter, client_id);
                let cost = subscription_index::cost(filter);
                session.subscription_bytes -= cost;
                *subscription_bytes -= cost;
            }
            if *existed && session.is_persistent() {
                self.submit(Op::DeleteSubscription {
                    client_id: session.client_id.clone(),
                    filter: filter.clone(),
                });
            }
        }
        existed
    }

    /// Packets to resend after a session resumes: unacknowledged publishes
    /// (with DUP) and PUBRELs, in packet id order.
    pub fn resume(&self, client_id: &str, conn_id: u64) -> Vec<Outgoing> {
        let guard = self.lock();
        let Some(session) = attached(&guard, client_id, conn_id) else {
            return Vec::new();
        };
        session
            .inflight
            .iter()
            .map(|(pkid, inflight)| match inflight.state {
                InflightState::AwaitAck => Outgoing::Publish {
                    delivery: inflight.delivery.clone(),
                    pkid: *pkid,
                    dup: true,
                },
                InflightState::AwaitComplete => Outgoing::PubRel(*pkid),
            })
            .collect()
    }

    /// Takes up to `max` queued deliveries the connection may send now,
    /// moving QoS 1/2 ones in flight. Returns them and whether more wait.
    pub fn take_outgoing(
        &self,
        client_id: &str,
        conn_id: u64,
        max: usize,
    ) -> (Vec<Outgoing>, bool) {
        let mut guard = self.lock();
        let RouterState {
            sessions,
            queued_bytes,
            ..
        } = &mut *guard;
        let Some(session) = sessions.get_mut(client_id) else {
            return (Vec::new(), false);
        };
        let Some(window) = session
            .link
            .as_ref()
            .filter(|l| l.conn_id == conn_id)
            .map(|l| usize::from(l.receive_maximum))
        else {
            return (Vec::new(), false);
        };
        let now = SystemTime::now();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(front) = session.queue.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && session.inflight.len() >= window {
                break;
            }
            let Some(delivery) = session.pop() else {
                break;
            };
            *queued_bytes -= delivery.message.weight();
            let denied = !session.may_read(&delivery.message.topic);
            if denied || delivery.message.is_expired(now) {
                let counter = if denied {
                    &self.stats.dropped_acl
                } else {
                    &self.stats.dropped_expired
                };
                counter.fetch_add(1, Ordering::Relaxed);
                session.dropped += 1;
                if delivery.queued_id > 0 {
                    self.submit(Op::DeleteQueued {
                        client_id: session.client_id.clone(),
                        id: delivery.queued_id,
                    });
                }
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                out.push(Outgoing::Publish {
                    delivery,
                    pkid: 0,
                    dup: false,
                });
                continue;
            }
            let Some(pkid) = session.next_pkid() else {
                break;
            };
            session.inflight.insert(
                pkid,
                Inflight {
                    delivery: delivery.clone(),
                    state: InflightState::AwaitAck,
                },
            );
            out.push(Outgoing::Publish {
                delivery,
                pkid,
                dup: false,
            });
        }
        let more = !session.queue.is_empty()
            && (session
                .queue
                .front()
                .is_some_and(|d| d.qos == QoS::AtMostOnce)
                || session.inflight.len() < window);
        (out, more)
    }

    /// Records a client's acknowledgement of a delivery. Returns the PUBREL
    /// to send after a PUBREC, or `Err` for a packet id not in flight.
    pub fn acknowledge(
        &self,
        client_id: &str,
        pkid: u16,
        kind: AckKind,
    ) -> Result<Option<Outgoing>, UnknownPacketId> {
        let mut guard = self.lock();
        let Some(session) = guard.sessions.get_mut(client_id) else {
            return Err(UnknownPacketId(pkid));
        };
        let state = session
            .inflight
            .get(&pkid)
            .map(|i| (i.state, i.delivery.qos));
        let finished = match (kind, state) {
            (AckKind::PubAck, Some((InflightState::AwaitAck, QoS::AtLeastOnce))) => true,
            (AckKind::PubRec, Some((InflightState::AwaitAck, QoS::ExactlyOnce))) => {
                if let Some(inflight) = session.inflight.get_mut(&pkid) {
                    inflight.state = InflightState::AwaitComplete;
                }
                return Ok(Some(Outgoing::PubRel(pkid)));
            }
            // A repeated PUBREC: answer again.
            (AckKind::PubRec, Some((InflightState::AwaitComplete, _))) => {
                return Ok(Some(Outgoing::PubRel(pkid)));
            }
            (AckKind::PubComp, Some((InflightState::AwaitComplete, _))) => true,
            _ => false,
        };
        if !finished {
            return Err(UnknownPacketId(pkid));
        }
        if let Some(done) = session.inflight.remove(&pkid)
            && done.delivery.queued_id > 0
        {
            let client_id = session.client_id.clone();
            self.submit(Op::DeleteQueued {
                client_id,
                id: done.delivery.queued_id,
            });
        }
        session.wake();
        Ok(None)
    }

    /// Notes an incoming QoS 2 packet id: whether it is new (false for a
    /// resend after a lost PUBREC: acknowledge, do not route again), and how
    /// many QoS 2 PUBLISHes of the client now wait for their PUBREL.
    pub fn receive_qos2(&self, client_id: &str, pkid: u16) -> (bool, usize) {
        let mut guard = self.lock();
        guard.sessions.get_mut(client_id).map_or((false, 0), |s| {
            (s.incoming_qos2.insert(pkid), s.incoming_qos2.len())
        })
    }

    /// Releases an incoming QoS 2 packet id (PUBREL): whether it was
    /// waiting (false if unknown), and how many still wait.
    pub fn release_qos2(&self, client_id: &str, pkid: u16) -> (bool, usize) {
        let mut guard = self.lock();
        guard.sessions.get_mut(client_id).map_or((false, 0), |s| {
            (s.incoming_qos2.remove(&pkid), s.incoming_qos2.len())
        })
    }

    /// Ends disconnected sessions past their expiry and drops expired
    /// retained messages. Called periodically.
    pub fn expire(&self, now: SystemTime) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let expired: Vec<Arc<str>> = state
            .sessions
            .values()
            .filter(|s| {
                s.link.is_none()
                    && s.expiry_interval != u32::MAX
                    && s.disconnected_at.is_some_and(|at| {
                        now.duration_since(at).unwrap_or(Duration::ZERO)
                            >= Duration::from_secs(u64::from(s.expiry_interval))
                    })
            })
            .map(|s| s.client_id.clone())
            .collect();
        for client_id in expired {
            if let Some(session) = state.sessions.remove(&client_id) {
                debug!(client_id = %Untrusted(&client_id), "session expired");
                self.stats.sessions_expired.fetch_add(1, Ordering::Relaxed);
                self.forget_session(state, session);
            }
        }
        for topic in state.retained.purge_expired(now) {
            self.submit(Op::DeleteRetained(topic));
        }
        let due: Vec<Arc<str>> = state
            .delayed_wills
            .iter()
            .filter(|(_, will)| will.due <= now)
            .map(|(client, _)| client.clone())
            .collect();
        for client in due {
            if let Some(will) = state.delayed_wills.remove(&client) {
                self.publish_will(state, will.message, will.acl.as_deref());
            }
        }
    }

    /// Recomputes every live connection's ACL after the ACL file changed;
    /// connections stay up.
    pub fn refresh_acls(&self, acl_for: impl Fn(Option<&str>, &str) -> Option<Arc<ClientAcl>>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        for session in state.sessions.values_mut() {
            let client_id = session.client_id.clone();
            if let Some(link) = session.link.as_mut() {
                link.acl = acl_for(link.username.as_deref(), &client_id);
            }
        }
        for (client_id, will) in &mut state.delayed_wills {
            will.acl = acl_for(will.username.as_deref(), client_id);
        }
    }

    /// Closes every live connection whose user `admitted` no longer lets in
    /// (its password changed or it left the password file); returns how
    /// many. Their sessions stay for a client that logs in again, their
    /// wills are not published: the credentials they came with are void.
    pub fn close_revoked(&self, admitted: impl Fn(Option<&str>) -> bool) -> usize {
        let guard = self.lock();
        let mut closed = 0;
        for link in guard.sessions.values().filter_map(|s| s.link.as_ref()) {
            if !admitted(link.username.as_deref()) {
                link.signal.close(CloseRequest::CredentialsRevoked);
                closed += 1;
            }
        }
        self.stats
            .credentials_revoked
            .fetch_add(closed as u64, Ordering::Relaxed);
        closed
    }

    /// Closes connections whose client has been silent for 1.5 times its
    /// Keep Alive. Called about once a second: a silent client is closed
    /// between 1.5 Keep Alive periods and a second later. One sweep instead
    /// of a timer per connection keeps idle connections small. The same
    /// sweep asks connections that have heard nothing for a second to park.
    pub fn check_keepalives(&self, now: std::time::Instant) {
        let guard = self.lock();
        for link in guard.sessions.values().filter_map(|s| s.link.as_ref()) {
            if link.signal.keepalive_expired(now) {
                link.signal.close(CloseRequest::KeepaliveExpired);
            } else {
                link.signal.suggest_park(now);
            }
        }
    }

    /// Tells every live connection, and any that attaches from now on, that
    /// the broker is shutting down.
    pub fn close_all(&self) {
        let mut guard = self.lock();
        guard.closing = true;
        for link in guard.sessions.values().filter_map(|s| s.link.as_ref()) {
            link.signal.close(CloseRequest::ShuttingDown);
        }
    }

    /// Brings the store in line with `session` after a change: its record
    /// while it is persistent (and every subscription, when it has just
    /// become so), nothing once it is not.
    fn persist(&self, session: &Session, was_persistent: bool) {
        let client_id = session.client_id.clone();
        match (was_persistent, session.is_persistent()) {
            (_, true) => {
                let record = session.record();
                self.submit(Op::PutSession {
                    client_id: client_id.clone(),
                    record,
                });
                if !was_persistent {
                    for (filter, options) in &session.subscriptions {
                        self.submit(Op::PutSubscription {
                            client_id: client_id.clone(),
                            subscription: stored_subscription(filter, *options),
                        });
                    }
                }
            }
            (true, false) => {
                self.submit(Op::DeleteSession(client_id));
            }
            (false, false) => {}
        }
    }

    /// A retained message that does not fit is delivered live and not kept;
    /// the topic's older one goes too, so no new subscriber is told a value
    /// the topic no longer has. Logged at the 1st, 2nd, 4th, 8th... refusal.
    fn retained_over_budget(&self, state: &mut RouterState, topic_name: &Arc<str>) {
        if state.retained.remove(topic_name) {
            self.submit(Op::DeleteRetained(topic_name.clone()));
        }
        let refused = self.stats.retained_refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            warn!(
                topic = %Untrusted(topic_name),
                refused,
                budget = self.limits.retained_budget,
                "retained message delivered but not kept: retained messages are at \
                 limits.retained_budget"
            );
        }
    }

    fn forget_session(&self, state: &mut RouterState, session: Box<Session>) {
        state.queued_bytes -= session.queued_bytes;
        state.subscription_bytes -= session.subscription_bytes;
        for filter in session.subscriptions.keys() {
            leave_group(&mut state.shared, filter, &session.client_id);
            state.index.remove(filter, &session.client_id);
        }
        if session.is_persistent() {
            self.submit(Op::DeleteSession(session.client_id.clone()));
        }
    }
}

fn join_group(
    shared: &mut BTreeMap<String, SharedGroup>,
    raw: &str,
    filter: String,
    client_id: &Arc<str>,
) {
    let group = shared.entry(raw.to_owned()).or_insert_with(|| SharedGroup {
        filter,
        members: Vec::new(),
        next: 0,
    });
    if !group.members.contains(client_id) {
        group.members.push(client_id.clone());
    }
}

fn leave_group(shared: &mut BTreeMap<String, SharedGroup>, raw: &str, client_id: &str) {
    if let Some(group) = shared.get_mut(raw) {
        group.remove(client_id);
        if group.members.is_empty() {
            shared.remove(raw);
        }
    }
}

/// The next member in turn that may read `topic`, preferring connected
/// sessions; an offline persistent member gets it only when none is online.
fn pick_member(
    group: &mut SharedGroup,
    sessions: &HashMap<Arc<str>, Box<Session>>,
    topic_name: &str,
) -> Option<Arc<str>> {
    let count = group.members.len();
    let mut offline = None;
    for step in 0..count {
        let index = (group.next + step) % count;
        let member = &group.members[index];
        let Some(session) = sessions.get(member) else {
            continue;
        };
        if session.link.is_some() && session.may_read(topic_name) {
            group.next = index + 1;
            return Some(member.clone());
        }
        if offline.is_none() && session.link.is_none() && session.is_persistent() {
            offline = Some(index);
        }
    }
    let index = offline?;
    group.next = index + 1;
    Some(group.members[index].clone())
}

fn attached<'a>(state: &'a RouterState, client_id: &str, conn_id: u64) -> Option<&'a Session> {
    state
        .sessions
        .get(client_id)
        .map(|s| &**s)
        .filter(|s| s.link.as_ref().is_some_and(|l| l.conn_id == conn_id))
}

/// Whether a client may publish to `topic`: never to `$SYS`, which only the
/// broker writes, ACL file or not; otherwise as its ACL says (no ACL file:
/// everywhere).
fn client_may_write(acl: Option<&ClientAcl>, topic: &str) -> bool {
    let broker_only = topic == "$SYS" || topic.starts_with("$SYS/");
    !broker_only && acl.is_none_or(|acl| acl.can_write(topic))
}

/// Rebuilds the in-memory state from what the store recovered.
fn restore(state: &mut RouterState, recovered: Recovered) {
    for message in recovered.retained {
        state.retained.set(Arc::new(message));
    }
    for (client_id, record) in recovered.sessions {
        let client_id: Arc<str> = client_id.into();
        let mut session = Session::new(client_id.clone(), record.expiry_interval);
        session.owner = record.owner.map(Arc::from);
        session.disconnected_at = Some(if record.disconnected_at == 0 {
            // It was connected when the broker stopped: it disconnected then.
            SystemTime::now()
        } else {
            hass_runtime::clock::from_unix_seconds(record.disconnected_at)
                .unwrap_or_else(SystemTime::now)
        });
        for sub in record.subscriptions {
            if let Some(options) = SubscriptionOptions::from_byte(sub.options, sub.identifier) {
                match topic::parse_filter(&sub.filter) {
                    Ok(parsed) if parsed.share_group.is_some() => join_group(
                        &mut state.shared,
                        &sub.filter,
                        parsed.filter.to_owned(),
                        &client_id,
                    ),
                    Ok(_) => state.index.insert(&sub.filter, &client_id),
                    // Not routable: kept as it was stored, matching nothing.
                    Err(_) => {}
                }
                // Charged, never refused: the budgets may have been lowered
                // since it was granted, and a new SUBSCRIBE sees that.
                let cost = subscription_index::cost(&sub.filter);
                session.subscription_bytes += cost;
                state.subscription_bytes += cost;
                session.subscriptions.insert(sub.filter, options);
            }
        }
        state.sessions.insert(client_id, Box::new(session));
    }
    for (client_id, id, queued) in recovered.queued {
        if let Some(session) = state.sessions.get_mut(client_id.as_str()) {
            let delivery = Delivery {
                message: queued.message,
                qos: queued.qos,
                retain: queued.retain,
                subscription_ids: queued.subscription_ids,
                queued_id: id,
                replay: false,
            };
            state.queued_bytes += delivery.message.weight();
            session.push(delivery);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(client_id: &str) -> ConnectRequest {
        ConnectRequest {
            client_id: client_id.into(),
            clean_start: true,
            expiry_interval: 0,
            will: None,
            will_delay: 0,
            receive_maximum: u16::MAX,
            keep_alive: 0,
            version: Version::V5,
            username: None,
            acl: None,
            peer: None,
        }
    }

    #[test]
    fn close_all_reaches_live_connections_and_later_ones() {
        let router = Router::new(Limits::default(), None);
        let before = router.connect(request("before")).expect("attached");
        assert_eq!(before.signal.close_requested(), None);
        router.close_all();
        assert_eq!(
            before.signal.close_requested(),
            Some(CloseRequest::ShuttingDown)
        );
        // Attached during the drain (its CONNECT was already read): told at once.
        let after = router.connect(request("after")).expect("attached");
        assert_eq!(
            after.signal.close_requested(),
            Some(CloseRequest::ShuttingDown)
        );
    }

    #[test]
    fn the_keepalive_sweep_closes_only_silent_clients() {
        let router = Router::new(Limits::default(), None);
        let silent = router
            .connect(ConnectRequest {
                keep_alive: 2,
                ..request("silent")
            })
            .expect("attached");
        let chatty = router
            .connect(ConnectRequest {
                keep_alive: 2,
                ..request("chatty")
            })
            .expect("attached");
        let unbounded = router.connect(request("no-keepalive")).expect("attached");
        let start = std::time::Instant::now();
        router.check_keepalives(start + Duration::from_millis(2900));
        assert_eq!(silent.signal.close_requested(), None, "before 1.5 periods");
        chatty
            .signal
            .heard_from(start + Duration::from_millis(2000));
        router.check_keepalives(start + Duration::from_millis(3100));
        assert_eq!(
            silent.signal.close_requested(),
            Some(CloseRequest::KeepaliveExpired)
        );
        assert_eq!(chatty.signal.close_requested(), None);
        router.check_keepalives(start + Duration::from_secs(86_400));
        assert_eq!(unbounded.signal.close_requested(), None, "Keep Alive 0");
    }

    #[test]
    fn a_takeover_closes_the_old_connection_with_its_reason() {
        let router = Router::new(Limits::default(), None);
        let old = router.connect(request("same")).expect("attached");
        let new = router.connect(request("same")).expect("attached");
        assert_eq!(old.signal.close_requested(), Some(CloseRequest::TakenOver));
        assert_eq!(new.signal.close_requested(), None);
        // The first reason given wins: a later shutdown does not rewrite it.
        old.signal.close(CloseRequest::ShuttingDown);
        assert_eq!(old.signal.close_requested(), Some(CloseRequest::TakenOver));
    }

    fn message(topic: &str, payload: &str, qos: QoS, retain: bool) -> Message {
        Message {
            topic: topic.into(),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            qos,
            retain,
            properties: None,
            expires_at: None,
            publisher: None,
            received_at: None,
        }
    }

    /// A client (window 2, queue limit 3) that reads nothing until `setup`
    /// has subscribed it and published, then drains its queue: the payloads
    /// it gets, and how many the limit dropped.
    fn received_after(policy: SlowConsumer, setup: impl FnOnce(&Router)) -> (Vec<String>, u64) {
        let router = Router::new(
            Limits {
                max_queued_messages: 3,
                max_inflight: 2,
                slow_consumer: policy,
                ..Limits::default()
            },
            None,
        );
        let sub = router
            .connect(ConnectRequest {
                receive_maximum: 2,
                ..request("sub")
            })
            .expect("attached");
        setup(&router);
        let mut got = Vec::new();
        loop {
            let (out, _) = router.take_outgoing("sub", sub.conn_id, 100);
            if out.is_empty() {
                break;
            }
            for packet in out {
                if let Outgoing::Publish { delivery, pkid, .. } = packet {
                    got.push(String::from_utf8_lossy(&delivery.message.payload).into_owned());
                    if pkid > 0 {
                        router
                            .acknowledge("sub", pkid, AckKind::PubAck)
                            .expect("in flight");
                    }
                }
            }
        }
        let dropped = router.stats.dropped_queue_full.load(Ordering::Relaxed);
        (got, dropped)
    }

    /// Routing finds subscribers through the subscription index, so every
    /// way a subscription ends must take it out of the index: a stale entry
    /// would route to a client that no longer asked (or to nobody, slowly).
    #[test]
    fn every_way_a_subscription_ends_leaves_the_index() {
        let router = Router::new(Limits::default(), None);
        let qos1 = SubscriptionOptions::from_byte(1, 0).expect("QoS 1");
        let filters = |list: &[&str]| list.iter().map(|f| (f.to_string(), qos1)).collect();
        // Unsubscribed; a clean session's disconnect; a clean start over a
        // persistent session; a persistent session's expiry.
        let a = router.connect(request("a")).expect("attached");
        router.subscribe("a", filters(&["t/+", "t/#", "$share/g/t/x"]));
        // Two of a's filters (and its shared one) match t/x: one delivery.
        router.publish(message("t/x", "0", QoS::AtLeastOnce, false));
        let (out, _) = router.take_outgoing("a", a.conn_id, 10);
        assert_eq!(out.len(), 2, "one delivery for t/+ and t/#, one shared");
        router.unsubscribe("a", &["t/+".into(), "$share/g/t/x".into()]);
        let b = router.connect(request("b")).expect("attached");
        router.subscribe("b", filters(&["t/x", "u/#"]));
        let persistent = |id: &str| ConnectRequest {
            clean_start: false,
            expiry_interval: 60,
            ..request(id)
        };
        let c = router.connect(persistent("c")).expect("attached");
        router.subscribe("c", filters(&["t/x"]));
        router.disconnect("c", c.conn_id, Departure::Abnormal);
        let d = router.connect(persistent("d")).expect("attached");
        router.subscribe("d", filters(&["v/#"]));
        router.disconnect("d", d.conn_id, Departure::Abnormal);
        let held = |list: &[&str]| {
            list.iter()
                .map(|f| subscription_index::cost(f))
                .sum::<usize>()
        };
        assert_eq!(
            router.snapshot().subscription_bytes,
            held(&["t/#", "t/x", "u/#", "t/x", "v/#"]),
            "what the budgets count is what is held"
        );

        // t/+ and the shared filter went; t/# still delivers.
        router.publish(message("t/x", "1", QoS::AtLeastOnce, false));
        let (out, _) = router.take_outgoing("a", a.conn_id, 10);
        assert_eq!(out.len(), 1, "one delivery for t/# after t/+ went");
        assert!(!router.lock().index.is_empty());

        router.unsubscribe("a", &["t/#".into()]);
        router.disconnect(
            "b",
            b.conn_id,
            Departure::Clean {
                publish_will: false,
                expiry_override: None,
            },
        );
        let c = router.connect(request("c")).expect("clean start");
        router.disconnect("c", c.conn_id, Departure::Abnormal);
        router.expire(SystemTime::now() + Duration::from_secs(61));
        let state = router.lock();
        assert!(!state.sessions.contains_key("d"), "d expired");
        assert!(state.index.is_empty(), "{:?}", state.index);
        assert_eq!(
            state.subscription_bytes, 0,
            "every end gives its bytes back"
        );
    }

    fn subscribe(router: &Router) {
        let options = SubscriptionOptions::from_byte(1, 0).expect("QoS 1");
        router.subscribe("sub", vec![("t/#".into(), options)]);
    }

    fn publish_numbered(router: &Router, range: std::ops::Range<u32>) {
        for i in range {
            router.publish(message("t/x", &i.to_string(), QoS::AtLeastOnce, false));
        }
    }

    #[test]
    fn a_full_queue_keeps_the_newest_messages_in_order_by_default() {
        let (got, dropped) = received_after(SlowConsumer::DropOldest, |router| {
            subscribe(router);
            publish_numbered(router, 0..10);
        });
        assert_eq!(got, ["7", "8", "9"]);
        assert_eq!(dropped, 7);
    }

    #[test]
    fn drop_newest_keeps_the_oldest_as_mosquitto_does() {
        let (got, dropped) = received_after(SlowConsumer::DropNewest, |router| {
            subscribe(router);
            publish_numbered(router, 0..10);
        });
        assert_eq!(got, ["0", "1", "2"]);
        assert_eq!(dropped, 7);
    }

    #[test]
    fn qos0_is_shed_before_qos1_and_never_displaces_it() {
        let (got, _) = received_after(SlowConsumer::DropOldest, |router| {
            subscribe(router);
            router.publish(message("t/x", "q1-a", QoS::AtLeastOnce, false));
            router.publish(message("t/x", "q0-a", QoS::AtMostOnce, false));
            router.publish(message("t/x", "q1-b", QoS::AtLeastOnce, false));
            // Full: a QoS 1 message displaces the QoS 0 one, not the older QoS 1.
            router.publish(message("t/x", "q1-c", QoS::AtLeastOnce, false));
            // Full of QoS 1: a QoS 0 message is the one dropped.
            router.publish(message("t/x", "q0-b", QoS::AtMostOnce, false));
        });
        assert_eq!(got, ["q1-a", "q1-b", "q1-c"]);
    }

    #[test]
    fn retained_replays_neither_count_against_the_limit_nor_are_shed() {
        let (got, _) = received_after(SlowConsumer::DropOldest, |router| {
            for i in 0..5 {
                router.publish(message(
                    &format!("t/config{i}"),
                    "cfg",
                    QoS::AtLeastOnce,
                    true,
                ));
            }
            // The subscription replays five retained messages, over the limit of 3...
            subscribe(router);
            // ...and live messages still get a queue of 3 of their own.
            publish_numbered(router, 0..6);
        });
        assert_eq!(got, ["cfg", "cfg", "cfg", "cfg", "cfg", "3", "4", "5"]);
    }

    #[test]
    fn over_the_memory_budget_the_largest_queue_pays_not_the_others() {
        let budget = 40 * 1024;
        let router = Router::new(
            Limits {
                memory_budget: budget,
                ..Limits::default()
            },
            None,
        );
        let _stuck = router.connect(request("stuck")).expect("attached");
        let healthy = router.connect(request("healthy")).expect("attached");
        let options = SubscriptionOptions::from_byte(1, 0).expect("QoS 1");
        for client in ["stuck", "healthy"] {
            router.subscribe(client, vec![("t/#".into(), options)]);
        }
        // "stuck" never reads; "healthy" takes and acknowledges what has
        // arrived after every 10 messages, as a client behind a socket reads
        // in bursts.
        let payload = "x".repeat(1000);
        let mut got = 0;
        for i in 1..=200 {
            router.publish(message("t/x", &payload, QoS::AtLeastOnce, false));
            if i % 10 != 0 {
                continue;
            }
            let (out, _) = router.take_outgoing("healthy", healthy.conn_id, 100);
            for packet in out {
                if let Outgoing::Publish { pkid, .. } = packet {
                    got += 1;
                    router
                        .acknowledge("healthy", pkid, AckKind::PubAck)
                        .expect("in flight");
                }
            }
        }
        assert_eq!(got, 200, "the healthy client lost messages to the budget");
        let snapshot = router.snapshot();
        assert!(snapshot.queued_bytes <= budget, "{snapshot:?}");
        assert!(router.stats.dropped_budget.load(Ordering::Relaxed) > 150);
    }
}
