//! A client's session: its subscriptions, the messages queued for it, the
//! QoS 1/2 exchanges in flight in both directions, and the live connection
//! (if any). Persistent sessions outlive their connection.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use futures_util::task::AtomicWaker;
use rumqttd::protocol::QoS;

use crate::acl::ClientAcl;
use crate::codec::Version;
use crate::message::Message;
use crate::store::{SessionRecord, StoredSubscription};

/// MQTT 5 subscription options (3.1.1 subscriptions use the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained on every subscribe; 1: only if new; 2: never.
    pub retain_handling: u8,
    /// MQTT 5 subscription identifier; 0 = none.
    pub identifier: u32,
}

impl SubscriptionOptions {
    pub fn to_byte(self) -> u8 {
        self.qos as u8
            | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | (self.retain_handling << 4)
    }

    pub fn from_byte(byte: u8, identifier: u32) -> Option<Self> {
        Some(Self {
            qos: rumqttd::protocol::qos(byte & 0b11)?,
            no_local: byte & 0b100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling: (byte >> 4) & 0b11,
            identifier,
        })
    }
}

/// A message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Id in the store's queue table; 0 when not persisted.
    pub queued_id: u64,
    /// A retained message sent because of a SUBSCRIBE: it neither counts
    /// against nor is shed by the queue limit (Home Assistant's discovery
    /// lives in these).
    pub replay: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitAck,
    /// PUBREL sent; waiting for PUBCOMP.
    AwaitComplete,
}

#[derive(Debug, Clone)]
pub struct Inflight {
    pub delivery: Delivery,
    pub state: InflightState,
}

/// Why the router wants a live connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseRequest {
    /// Another connection took the session over.
    TakenOver = 1,
    /// A slow consumer whose queue is full of QoS 1/2 (`slow_consumer:
    /// disconnect`), or whose retained replays went over their cap.
    SlowConsumer = 2,
    /// The broker is shutting down.
    ShuttingDown = 3,
    /// Nothing heard from the client for 1.5 times its Keep Alive.
    KeepaliveExpired = 4,
    /// The password file no longer admits the user the client logged in as.
    CredentialsRevoked = 5,
}

/// What the router tells one live connection: "the session has something to
/// send" and "close, because ...". One allocation and one waiter per
/// connection, so an idle connection waits on a single notification instead
/// of one per reason, and on no timer of its own: Keep Alive is enforced by
/// the router's once-a-second sweep ([`crate::router::Router::check_keepalives`])
/// reading `last_heard`.
#[derive(Debug)]
pub struct LinkSignal {
    /// The connection's task, woken by `wake` and `close`. A waker kept
    /// here, not a `Notify`, so the connection waits on an 8-byte future
    /// instead of holding a 64-byte `Notified` in every idle task.
    waker: AtomicWaker,
    /// A `wake` or `close` not yet seen by the connection.
    pending: AtomicBool,
    /// 0, or the first `CloseRequest` made.
    close: AtomicU8,
    /// The client's Keep Alive, seconds; 0: none.
    keep_alive: u16,
    /// When the client last sent anything, in [`millis`].
    last_heard: AtomicU64,
    /// The connection waits for the client to read what it was sent.
    write_blocked: AtomicBool,
    /// Where the connection stands on parking ([`crate::connection`]'s
    /// parking lot): one of the `PARK_*` states.
    park: AtomicU8,
}

/// The connection cannot park (not plain TCP, or no parking lot).
const PARK_NEVER: u8 = 0;
/// It may park, and has not been asked to since it was last busy.
const PARK_ALLOWED: u8 = 1;
/// The sweep asked it to park once.
const PARK_ASKED: u8 = 2;
/// It has seen the first ask and been quiet since.
const PARK_QUIET: u8 = 3;
/// The sweep asked again while it was quiet: it parks if idle.
const PARK_ASKED_AGAIN: u8 = 4;
/// It is parked: no task, its socket watched by the parking lot.
const PARKED: u8 = 5;

/// Milliseconds since the first call in this process: a monotonic clock
/// that fits an atomic.
pub fn millis(at: Instant) -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    u64::try_from(at.saturating_duration_since(*START).as_millis()).unwrap_or(u64::MAX)
}

impl LinkSignal {
    /// A signal for a client that has just connected with `keep_alive` seconds.
    pub fn new(keep_alive: u16) -> Self {
        Self {
            waker: AtomicWaker::new(),
            pending: AtomicBool::new(false),
            close: AtomicU8::new(0),
            keep_alive,
            last_heard: AtomicU64::new(millis(Instant::now())),
            write_blocked: AtomicBool::new(false),
            park: AtomicU8::new(PARK_NEVER),
        }
    }

    /// The connection can park (plain TCP with a parking lot), and parks
    /// as soon as it first has nothing to do: most clients are idle after
    /// CONNECT and SUBSCRIBE, and a task given back at once is reused by
    /// the next connection instead of staying in the heap's high-water
    /// mark while a burst of clients connects.
    pub fn allow_parking(&self) {
        self.park.store(PARK_ASKED_AGAIN, Ordering::Release);
    }

    /// The connection cannot park after all.
    pub fn forbid_parking(&self) {
        self.park.store(PARK_NEVER, Ordering::Release);
    }

    /// Asks a connection that may park to park if it has been quiet since
    /// the last ask, when it has not heard from its client for a second.
    /// Parked and unparkable connections are not woken.
    pub fn suggest_park(&self, now: Instant) {
        let silent = millis(now).saturating_sub(self.last_heard.load(Ordering::Relaxed));
        if silent < 1000 || self.write_blocked() {
            return;
        }
        let from = self.park.load(Ordering::Acquire);
        let asked = match from {
            PARK_ALLOWED => PARK_ASKED,
            PARK_QUIET => PARK_ASKED_AGAIN,
            _ => return,
        };
        if self
            .park
            .compare_exchange(from, asked, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake();
        }
    }

    /// The sweep's ask, taken by the connection at the top of its turn: a
    /// first ask becomes "quiet"; `true` for a second one, the connection's
    /// to act on (it parks, or calls `busy`).
    pub fn take_park_ask(&self) -> bool {
        match self.park.load(Ordering::Acquire) {
            PARK_ASKED => {
                let _ = self.park.compare_exchange(
                    PARK_ASKED,
                    PARK_QUIET,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                false
            }
            state => state == PARK_ASKED_AGAIN,
        }
    }

    /// Whether a turn woken by this signal was only the sweep's ask.
    pub fn only_asked_to_park(&self) -> bool {
        matches!(
            self.park.load(Ordering::Acquire),
            PARK_ASKED | PARK_ASKED_AGAIN
        )
    }

    /// Something happened: the connection is not quiet.
    pub fn busy(&self) {
        let state = self.park.load(Ordering::Acquire);
        if matches!(state, PARK_QUIET | PARK_ASKED_AGAIN) {
            let _ = self.park.compare_exchange(
                state,
                PARK_ALLOWED,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// The connection parks: from now on `waker` stands for it. Returns
    /// whether a wake or close came first (the caller unparks it then).
    pub fn park(&self, waker: &std::task::Waker) -> bool {
        self.park.store(PARKED, Ordering::Release);
        self.waker.register(waker);
        self.pending.load(Ordering::Acquire)
    }

    /// The connection runs again, and may park again later.
    pub fn unpark(&self) {
        let _ =
            self.park
                .compare_exchange(PARKED, PARK_ALLOWED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The Keep Alive in force, seconds; 0: none.
    pub fn keep_alive(&self) -> u16 {
        self.keep_alive
    }

    /// Notes that the client sent something (any bytes count for Keep Alive).
    pub fn heard_from(&self, at: Instant) {
        self.last_heard.store(millis(at), Ordering::Relaxed);
    }

    /// Whether the client has been silent for 1.5 times its Keep Alive at
    /// `now` (MQTT 3.1.1 §3.1.2.10, MQTT 5 §3.1.2.10).
    pub fn keepalive_expired(&self, now: Instant) -> bool {
        let silent = millis(now).saturating_sub(self.last_heard.load(Ordering::Relaxed));
        self.keep_alive != 0 && silent >= u64::from(self.keep_alive) * 1500
    }

    /// Notes whether the connection is waiting for its client to read.
    pub fn set_write_blocked(&self, blocked: bool) {
        self.write_blocked.store(blocked, Ordering::Relaxed);
    }

    /// Whether the connection is waiting for its client to read.
    pub fn write_blocked(&self) -> bool {
        self.write_blocked.load(Ordering::Relaxed)
    }

    /// The session has something to send.
    pub fn wake(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Asks the connection to close; the first reason given wins.
    pub fn close(&self, reason: CloseRequest) {
        let _ = self
            .close
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
        self.wake();
    }

    pub fn close_requested(&self) -> Option<CloseRequest> {
        match self.close.load(Ordering::Acquire) {
            1 => Some(CloseRequest::TakenOver),
            2 => Some(CloseRequest::SlowConsumer),
            3 => Some(CloseRequest::ShuttingDown),
            4 => Some(CloseRequest::KeepaliveExpired),
            5 => Some(CloseRequest::CredentialsRevoked),
            _ => None,
        }
    }

    /// Completes after a `wake` or `close` made since the last completion
    /// (a signal sent while nobody waits is kept for the next wait). One
    /// task waits at a time: the connection's.
    pub fn notified(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.pending.swap(false, Ordering::AcqRel) {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A wake between the check and the registration found no waker.
            if self.pending.swap(false, Ordering::AcqRel) {
                return std::task::Poll::Ready(());
            }
            std::task::Poll::Pending
        })
    }
}

/// The live connection attached to a session.
#[derive(Debug, Clone)]
pub struct Link {
    pub conn_id: u64,
    /// Wakes the connection to send, or tells it to close.
    pub signal: Arc<LinkSignal>,
    /// How many QoS 1/2 deliveries may be unacknowledged at once.
    pub receive_maximum: u16,
    pub version: Version,
    /// Who authenticated, to recompute the ACL when the file changes.
    pub username: Option<Arc<str>>,
    /// What the client may read; `None` when no ACL file is configured.
    pub acl: Option<Arc<ClientAcl>>,
    /// Where the client connected from; `None` for in-process callers.
    pub peer: Option<std::net::SocketAddr>,
    pub connected_at: SystemTime,
}

#[derive(Debug)]
pub struct Session {
    pub client_id: Arc<str>,
    /// Seconds the session outlives its connection; 0 = not at all,
    /// `u32::MAX` = forever (MQTT 3.1.1 `clean_session = false`).
    pub expiry_interval: u32,
    /// A B-tree: 24 bytes where a `HashMap` is 48, in every session.
    pub subscriptions: BTreeMap<String, SubscriptionOptions>,
    /// What `subscriptions` costs, by `subscription_index::cost`.
    pub subscription_bytes: usize,
    pub queue: VecDeque<Delivery>,
    pub queued_bytes: usize,
    /// Retained replays in `queue`, kept so the limit sees only the rest.
    queued_replays: usize,
    /// Live QoS 0 deliveries in `queue`: the first to shed, and counted so
    /// a full queue of QoS 1 is not searched for one on every message.
    queued_live_qos0: usize,
    pub inflight: BTreeMap<u16, Inflight>,
    /// QoS 2 packet ids received (PUBREC sent) and not yet released.
    /// A B-tree: 24 bytes where a `HashSet` is 48, and few clients use QoS 2.
    pub incoming_qos2: BTreeSet<u16>,
    next_pkid: u16,
    pub link: Option<Link>,
    pub disconnected_at: Option<SystemTime>,
    /// Boxed: most clients set no will, and sessions are many.
    pub will: Option<Box<Message>>,
    /// MQTT 5 Will Delay Interval of the connected client's will, seconds.
    pub will_delay: u32,
    /// Who may attach to the session: the user that made it (`""` for an
    /// anonymous client); `None` for a session recovered from a store
    /// written before owners were kept, claimed by the next to attach.
    pub owner: Option<Arc<str>>,
    /// Messages meant for this session and lost: shed under a limit,
    /// expired while queued, or no longer readable under the ACL.
    pub dropped: u64,
}

impl Session {
    pub fn new(client_id: Arc<str>, expiry_interval: u32) -> Self {
        Self {
            client_id,
            expiry_interval,
            subscriptions: BTreeMap::new(),
            subscription_bytes: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued_replays: 0,
            queued_live_qos0: 0,
            inflight: BTreeMap::new(),
            incoming_qos2: BTreeSet::new(),
            next_pkid: 0,
            link: None,
            disconnected_at: None,
            will: None,
            will_delay: 0,
            owner: None,
            dropped: 0,
        }
    }

    pub fn is_persistent(&self) -> bool {
        self.expiry_interval > 0
    }

    /// The next packet id not in flight (1..=65535, wrapping).
    pub fn next_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return Some(self.next_pkid);
            }
        }
        None
    }

    pub fn push(&mut self, delivery: Delivery) {
        self.tally(&delivery, true);
        self.queue.push_back(delivery);
    }

    pub fn pop(&mut self) -> Option<Delivery> {
        let delivery = self.queue.pop_front()?;
        self.tally(&delivery, false);
        Some(delivery)
    }

    /// Queued deliveries the queue limit applies to: all but retained replays.
    pub fn live_queued(&self) -> usize {
        self.queue.len() - self.queued_replays
    }

    /// Retained replays queued and not yet sent.
    pub fn queued_replays(&self) -> usize {
        self.queued_replays
    }

    /// Takes the queued replays `pick` chooses out of the queue, in order.
    pub fn take_replays(&mut self, pick: impl Fn(&Delivery) -> bool) -> Vec<Delivery> {
        if self.queued_replays == 0 {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for delivery in std::mem::take(&mut self.queue) {
            if delivery.replay && pick(&delivery) {
                taken.push(delivery);
            } else {
                kept.push_back(delivery);
            }
        }
        self.queue = kept;
        for delivery in &taken {
            self.tally(delivery, false);
        }
        taken
    }

    /// Removes the oldest live (not replayed) QoS 0 delivery, to make room
    /// under a limit.
    pub fn evict_oldest_qos0(&mut self) -> Option<Delivery> {
        if self.queued_live_qos0 == 0 {
            return None;
        }
        self.evict_first(|d| d.qos == QoS::AtMostOnce)
    }

    /// Removes the oldest live QoS 0 delivery or, when there is none, the
    /// oldest live one.
    pub fn evict_oldest(&mut self) -> Option<Delivery> {
        self.evict_oldest_qos0()
            .or_else(|| self.evict_first(|_| true))
    }

    fn evict_first(&mut self, pick: impl Fn(&Delivery) -> bool) -> Option<Delivery> {
        let at = self.queue.iter().position(|d| !d.replay && pick(d))?;
        let delivery = self.queue.remove(at)?;
        self.tally(&delivery, false);
        Some(delivery)
    }

    /// Keeps the queue's tallies in step as `delivery` enters or leaves it.
    fn tally(&mut self, delivery: &Delivery, entering: bool) {
        let step = |n: &mut usize, by: usize| {
            if entering {
                *n += by;
            } else {
                *n -= by;
            }
        };
        step(&mut self.queued_bytes, delivery.message.weight());
        if delivery.replay {
            step(&mut self.queued_replays, 1);
        } else if delivery.qos == QoS::AtMostOnce {
            step(&mut self.queued_live_qos0, 1);
        }
    }

    /// Whether the connected client may receive `topic`. Sessions without a
    /// live connection are checked when it returns, at send time.
    pub fn may_read(&self, topic: &str) -> bool {
        self.link
            .as_ref()
            .and_then(|l| l.acl.as_ref())
            .is_none_or(|acl| acl.can_read(topic))
    }

    pub fn wake(&self) {
        if let Some(link) = &self.link {
            link.signal.wake();
        }
    }

    /// The session as stored, without its subscriptions: those are stored
    /// one by one ([`stored_subscription`]).
    pub fn record(&self) -> SessionRecord {
        SessionRecord {
            expiry_interval: self.expiry_interval,
            disconnected_at: self.disconnected_at.map_or(0, |t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            }),
            subscriptions: Vec::new(),
            owner: self.owner.as_deref().map(str::to_owned),
        }
    }
}

/// One subscription as stored.
pub fn stored_subscription(filter: &str, options: SubscriptionOptions) -> StoredSubscription {
    StoredSubscription {
        filter: filter.to_owned(),
        options: options.to_byte(),
        identifier: options.identifier,
    }
}
