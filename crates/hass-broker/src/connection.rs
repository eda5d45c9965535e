//! One client connection: the CONNECT handshake, then a single task that
//! reads packets, writes what the session has queued, notes when the client
//! was last heard from (the router's sweep enforces Keep Alive), and holds
//! acknowledgements back until the store has committed what they cover.
//!
//! One task per connection (no separate reader and writer) keeps an idle
//! connection down to a small task and its session: the handshake's state is
//! boxed and freed once it is done, the read and write buffers are given back
//! whenever they are empty (reads land in a stack buffer first), and the
//! router reaches the task through one [`crate::session::LinkSignal`] instead of a waiter per
//! reason. An idle plain-TCP connection goes further and parks: no task at
//! all until its socket or its link has something for it (`parking`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode,
    DisconnectReasonCode, LastWill, LastWillProperties, Packet, PingResp, PubAck, PubAckReason,
    PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, Publish, PublishProperties,
    QoS, SubAck, Subscribe, SubscribeProperties, SubscribeReasonCode, UnsubAck, UnsubAckReason,
    Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use hass_runtime::logging::Untrusted;
use tracing::{debug, info, warn};

use crate::auth::{AccessPolicy, AuthDecision};
use crate::codec::{self, CodecError, Detected, PublishHeader, Version};
use crate::message::Message;
use crate::metrics::BrokerMetrics;
use crate::router::{
    AckKind, ConnectRefused, ConnectRequest, Departure, Outgoing, Router, SubscribeResult,
};
use crate::session::{CloseRequest, LinkSignal, SubscriptionOptions};
use crate::{topic, topic_alias};
use hass_runtime::admission::Admitted;

mod parking;
pub use parking::ParkingLot;

/// Settings every connection shares.
#[derive(Debug)]
pub struct ConnectionContext {
    pub router: Arc<Router>,
    /// Swapped whole when the password or ACL file changes.
    pub policy: std::sync::RwLock<Arc<AccessPolicy>>,
    pub metrics: BrokerMetrics,
    /// Largest packet accepted, in bytes.
    pub max_packet_size: usize,
    /// Largest CONNECT accepted, in bytes: read before authentication, so
    /// far smaller than `max_packet_size`.
    pub max_connect_size: usize,
    pub connect_timeout: Duration,
    /// `limits.max_keepalive`: the longest Keep Alive allowed, seconds.
    pub max_keepalive: Option<u16>,
    /// `limits.max_topic_alias`.
    pub max_topic_alias: u16,
    /// `limits.receive_maximum`.
    pub receive_maximum: u16,
    /// How long a write may wait for the client to read.
    pub write_timeout: Duration,
    /// `limits.partial_packet_budget`: bytes all clients' large packets
    /// may hold while they are still arriving.
    pub partial_packet_budget: usize,
    /// Caps on connections and handshakes, in all and per address.
    pub admission: Arc<hass_runtime::admission::Admission>,
    /// Password checks off the runtime, slowed for guessers.
    pub auth_gate: crate::auth_gate::AuthGate,
    /// Store commits, when a store is configured. (Shutdown reaches
    /// connections through the router: `Router::close_all`.)
    pub committed: Option<watch::Receiver<u64>>,
    /// Where idle plain-TCP connections wait without a task, once the
    /// first MQTT listener has set it up (`None`: it could not be).
    pub parking: std::sync::OnceLock<Option<Arc<ParkingLot>>>,
}

impl ConnectionContext {
    /// The context for `router` under `policy` and the `limits:` section:
    /// the one place it is put together (the broker, tests, fuzz targets).
    pub fn new(
        router: Arc<Router>,
        policy: AccessPolicy,
        limits: &crate::config::LimitsConfig,
        committed: Option<watch::Receiver<u64>>,
    ) -> Self {
        Self {
            router,
            policy: std::sync::RwLock::new(Arc::new(policy)),
            metrics: BrokerMetrics::default(),
            max_packet_size: limits.max_packet_size,
            max_connect_size: limits.max_connect_size,
            connect_timeout: limits.connect_timeout,
            max_keepalive: limits.max_keepalive,
            max_topic_alias: limits.max_topic_alias,
            receive_maximum: limits.receive_maximum.max(1),
            write_timeout: limits.write_timeout,
            // A packet of the largest size can always arrive on its own.
            partial_packet_budget: limits
                .partial_packet_budget
                .max(limits.max_packet_size + READ_CHUNK),
            admission: hass_runtime::admission::Admission::new(limits.admission()),
            auth_gate: crate::auth_gate::AuthGate::for_this_machine(),
            committed,
            parking: std::sync::OnceLock::new(),
        }
    }
}

/// Why `Connection::run` returned.
enum Stop {
    Close(Close),
    /// Idle at its first turn after CONNACK, or since the sweep last asked:
    /// the connection goes to the parking lot.
    Park,
}

/// Why a connection ended, for logs and the will decision.
#[derive(Debug)]
enum Close {
    Departure(Departure),
    Protocol(String),
    Io(std::io::Error),
}

/// Serves one client until it leaves, breaks the protocol, or is closed.
///
/// Every connection's task holds the returned future for its whole life, so
/// its size is paid per idle connection. The handshake (CONNECT,
/// authentication, CONNACK) needs several times the state the connection
/// needs afterwards: boxed, it lives on the heap only while it runs. A plain
/// `fn` returning an `async` block (not an `async fn`) keeps the arguments
/// from being stored twice; what stays across `run` is the stream and the
/// `Connection` (the peer's address is logged with the client id at
/// "connected").
pub fn serve<S>(
    stream: S,
    peer: SocketAddr,
    ctx: Arc<ConnectionContext>,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let handshake = Box::pin(async move {
        // Over a handshake cap, a connection waits its turn (as long as it
        // would have for CONNECT) rather than being closed: devices behind
        // one NAT address all reconnect at once after a restart.
        let admitted = ctx
            .admission
            .admit_patiently(peer.ip(), ctx.connect_timeout)
            .await;
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(refusal) => {
                ctx.metrics
                    .connections_refused
                    .get_or_create(&refusal.label().into())
                    .inc();
                debug!(%peer, reason = refusal.label(), "connection refused on arrival");
                return None;
            }
        };
        handshake(stream, peer, ctx)
            .await
            .map(|(stream, conn)| (stream, conn, admitted))
    });
    async move {
        let Some((mut stream, mut conn, mut admitted)) = handshake.await else {
            return;
        };
        admitted.handshake_done();
        conn.ctx.metrics.connections_current.inc();
        if is_tcp::<S>() && conn.ctx.parking.get().is_some_and(Option::is_some) {
            conn.signal.allow_parking();
        }
        // `if let`, not `match`: its scrutinee is gone before `run` is
        // awaited, instead of taking 24 bytes of every idle connection.
        let stop = if let Some(close) = conn.start(&mut stream).await {
            Stop::Close(close)
        } else {
            conn.run(&mut stream).await
        };
        stopped(conn, stream, admitted, stop);
    }
}

/// Closes the connection, or parks it.
fn stopped<S: 'static>(conn: Connection, stream: S, admitted: Admitted, stop: Stop) {
    let close = match stop {
        Stop::Close(close) => close,
        Stop::Park => match (parkable(stream), conn.ctx.parking.get()) {
            (Ok(tcp), Some(Some(lot))) => return lot.clone().park(conn.into_idle(), tcp, admitted),
            (Ok(_), _) => Close::Io(std::io::ErrorKind::Unsupported.into()),
            (Err(e), _) => Close::Io(e),
        },
    };
    conn.finish(close);
    drop(admitted);
}

/// Whether `S` is a plain TCP stream: only those park.
fn is_tcp<S: 'static>() -> bool {
    std::any::TypeId::of::<S>() == std::any::TypeId::of::<tokio::net::TcpStream>()
}

/// The socket under a plain TCP stream, off tokio's reactor. Only those
/// are allowed to park, so anything else is an error here.
fn parkable<S: 'static>(stream: S) -> std::io::Result<std::net::TcpStream> {
    let mut slot = Some(stream);
    (&mut slot as &mut dyn std::any::Any)
        .downcast_mut::<Option<tokio::net::TcpStream>>()
        .and_then(Option::take)
        .ok_or_else(|| std::io::Error::other("only plain TCP connections park"))?
        .into_std()
}

/// Reads CONNECT, authenticates, attaches the session and sends CONNACK.
/// `None`: the connection ends here (refused, gone, or CONNACK not sent).
async fn handshake<S>(
    mut stream: S,
    peer: SocketAddr,
    ctx: Arc<ConnectionContext>,
) -> Option<(S, Connection)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ctx.metrics.connections_opened.inc();
    let mut rbuf = BytesMut::new();
    let handshake = tokio::time::timeout(
        ctx.connect_timeout,
        read_connect(&mut stream, &mut rbuf, &ctx),
    );
    let (version, connect) = match handshake.await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            ctx.metrics.malformed(&e);
            debug!(%peer, "closing before CONNECT: {e}");
            if let CodecError::UnsupportedProtocol { .. } = e {
                // MQTT 3.1.1 §3.2.2.3: tell an MQTT 3.1 client why, in a CONNACK it can read.
                let mut wbuf = BytesMut::with_capacity(4);
                let refusal = connack(false, ConnectReturnCode::RefusedProtocolVersion, None);
                let _ = write_now(&mut stream, &mut wbuf, Version::V4, refusal).await;
            }
            return None;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT within {:?}", ctx.connect_timeout);
            return None;
        }
    };
    let Packet::Connect(connect, props, will, will_props, login) = connect else {
        return None;
    };

    let mut wbuf = BytesMut::with_capacity(256);
    let violation = connect_violation(&connect, props.as_ref(), will.as_ref());
    if let Some((kind, code)) = violation {
        ctx.metrics.malformed_kind(kind);
        debug!(%peer, client_id = %Untrusted(&connect.client_id), "closing at CONNECT: {kind}");
        // MQTT 3.1.1 has a return code only for the client id; the rest
        // just closes, as the spec says.
        let code = match (version, code) {
            (Version::V5, code) => Some(code),
            (Version::V4, ConnectReturnCode::ClientIdentifierNotValid) => Some(code),
            (Version::V4, _) => None,
        };
        if let Some(code) = code {
            let _ = write_now(&mut stream, &mut wbuf, version, connack(false, code, None)).await;
        }
        return None;
    }
    let policy = ctx.policy.read().unwrap_or_else(|p| p.into_inner()).clone();
    let username = login
        .as_ref()
        .map(|l| l.username.clone())
        .filter(|u| !u.is_empty());
    let password = login.as_ref().map(|l| l.password.as_bytes().to_vec());
    let checked = ctx
        .auth_gate
        .check(policy.clone(), peer.ip(), username, password)
        .await;
    if !checked.delayed.is_zero() {
        ctx.metrics.auth_delayed.inc();
    }
    let decision = checked.decision;
    let (username, refusal) = match decision {
        AuthDecision::Allowed(user) => (user, None),
        AuthDecision::BadCredentials => (
            None,
            Some((ConnectReturnCode::BadUserNamePassword, "bad_credentials")),
        ),
        AuthDecision::NotAuthorized => (
            None,
            Some((ConnectReturnCode::NotAuthorized, "not_authorized")),
        ),
    };
    let keep_alive = granted_keep_alive(ctx.max_keepalive, version, connect.keep_alive);
    let refusal = refusal.or_else(|| {
        keep_alive.is_none().then_some((
            ConnectReturnCode::ClientIdentifierNotValid,
            "keepalive_over_max",
        ))
    });
    let acl = policy.client_acl(username.as_deref(), &connect.client_id);
    // A will the client may not publish is refused at CONNECT, as Mosquitto does.
    let refusal = refusal.or_else(|| {
        let topic = String::from_utf8_lossy(&will.as_ref()?.topic).into_owned();
        (!acl.as_ref()?.can_write(&topic))
            .then_some((ConnectReturnCode::NotAuthorized, "will_not_authorized"))
    });
    if let Some((code, reason)) = refusal {
        ctx.metrics
            .auth_failures
            .get_or_create(&reason.into())
            .inc();
        info!(%peer, client_id = %Untrusted(&connect.client_id), reason, "refused CONNECT");
        // MQTT 3.1.1 clients read rc 5 as "not authorised" (Home Assistant's
        // "invalid auth"); MQTT 5 gets the precise 0x86/0x87.
        let code = if version == Version::V4 && code != ConnectReturnCode::ClientIdentifierNotValid
        {
            ConnectReturnCode::NotAuthorized
        } else {
            code
        };
        let _ = write_now(&mut stream, &mut wbuf, version, connack(false, code, None)).await;
        return None;
    }

    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        if version == Version::V4 && !connect.clean_session {
            // MQTT 3.1.1 §3.1.3.1: an empty id needs a clean session.
            let _ = write_now(
                &mut stream,
                &mut wbuf,
                version,
                connack(false, ConnectReturnCode::ClientIdentifierNotValid, None),
            )
            .await;
            return None;
        }
        let id = generated_client_id();
        assigned = Some(id.clone());
        id.into()
    } else {
        connect.client_id.as_str().into()
    };

    let props = props.unwrap_or_else(empty_connect_properties);
    let expiry_interval = match version {
        Version::V4 if connect.clean_session => 0,
        Version::V4 => u32::MAX,
        Version::V5 => props.session_expiry_interval.unwrap_or(0),
    };
    let will_props = will_props.unwrap_or_default_will();
    let will_delay = will_props.delay_interval.unwrap_or(0);
    let will = will.and_then(|w| will_message(w, will_props, version, &client_id));
    let attached = ctx.router.connect(ConnectRequest {
        client_id: client_id.clone(),
        clean_start: connect.clean_session,
        expiry_interval,
        will,
        will_delay,
        receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
        keep_alive: keep_alive.unwrap_or(connect.keep_alive),
        version,
        username,
        acl,
        peer: Some(peer),
    });
    let attached = match attached {
        Ok(attached) => attached,
        Err(refused) => {
            let (reason, code) = match (refused, version) {
                (ConnectRefused::OwnedByAnother, _) => (
                    "client_id_owned",
                    ConnectReturnCode::ClientIdentifierNotValid,
                ),
                (ConnectRefused::TooManySessions, Version::V5) => {
                    ("too_many_sessions", ConnectReturnCode::QuotaExceeded)
                }
                // MQTT 3.1.1 has no quota code: "server unavailable".
                (ConnectRefused::TooManySessions, Version::V4) => {
                    ("too_many_sessions", ConnectReturnCode::ServiceUnavailable)
                }
            };
            ctx.metrics
                .auth_failures
                .get_or_create(&reason.into())
                .inc();
            info!(%peer, client_id = %Untrusted(&client_id), "refused CONNECT: {refused}");
            let _ = write_now(&mut stream, &mut wbuf, version, connack(false, code, None)).await;
            return None;
        }
    };
    let client_max_packet = props.max_packet_size.unwrap_or(u32::MAX);
    let aliases = match version {
        Version::V5 => {
            topic_alias::Outgoing::new(props.topic_alias_max.unwrap_or(0).min(ctx.max_topic_alias))
                .map(|outgoing| {
                    Box::new(Aliases {
                        incoming: topic_alias::Incoming::default(),
                        outgoing: Some(outgoing),
                    })
                })
        }
        Version::V4 => None,
    };
    let connack_props = (version == Version::V5)
        .then(|| connack_properties(&ctx, assigned, keep_alive, connect.keep_alive));
    if write_now(
        &mut stream,
        &mut wbuf,
        version,
        connack(
            attached.session_present,
            ConnectReturnCode::Success,
            connack_props,
        ),
    )
    .await
    .is_err()
    {
        ctx.router
            .disconnect(&client_id, attached.conn_id, Departure::Abnormal);
        return None;
    }
    debug!(%peer, client_id = %Untrusted(&client_id), ?version, session_present = attached.session_present, "connected");
    if rbuf.is_empty() {
        // Give back what reading CONNECT allocated.
        rbuf = BytesMut::new();
    }
    let conn = Connection {
        ctx,
        version,
        client_id,
        conn_id: attached.conn_id,
        signal: attached.signal,
        client_max_packet,
        rbuf,
        wbuf: BytesMut::new(),
        pending_acks: VecDeque::new(),
        incoming_qos2: 0,
        aliases,
        turn_ended_early: false,
    };
    Some((stream, conn))
}

/// What rumqttd's reader accepts and the spec does not, refused before any
/// password is checked: the metric's kind and the CONNACK code.
fn connect_violation(
    connect: &Connect,
    props: Option<&ConnectProperties>,
    will: Option<&LastWill>,
) -> Option<(&'static str, ConnectReturnCode)> {
    if connect.client_id.contains('\0') {
        // MQTT 3.1.1 §3.1.3.1 and 5 §1.5.4: no U+0000 in a string.
        Some(("client_id_nul", ConnectReturnCode::ClientIdentifierNotValid))
    } else if props.and_then(|p| p.receive_maximum) == Some(0) {
        // MQTT 5 §3.1.2.11.3.
        Some(("receive_maximum_zero", ConnectReturnCode::ProtocolError))
    } else if will.is_some_and(|w| {
        std::str::from_utf8(&w.topic).map_or(true, |t| topic::validate_name(t).is_err())
    }) {
        // MQTT 3.1.1 §3.1.3.3 and 5 §3.1.3.3: a will topic is a topic name.
        Some(("will_topic_invalid", ConnectReturnCode::TopicNameInvalid))
    } else {
        None
    }
}

/// The will as a message, with its MQTT 5 properties for a v5 client.
fn will_message(
    will: LastWill,
    will_props: LastWillProperties,
    version: Version,
    client_id: &Arc<str>,
) -> Option<Message> {
    // Checked valid by `connect_violation`.
    let topic = std::str::from_utf8(&will.topic).ok()?;
    Some(Message {
        topic: topic.into(),
        payload: will.message,
        qos: will.qos,
        retain: will.retain,
        expires_at: will_props
            .message_expiry_interval
            .map(|s| SystemTime::now() + Duration::from_secs(u64::from(s))),
        properties: Some(PublishProperties {
            payload_format_indicator: will_props.payload_format_indicator,
            content_type: will_props.content_type,
            response_topic: will_props.response_topic,
            correlation_data: will_props.correlation_data,
            user_properties: will_props.user_properties,
            ..Default::default()
        })
        .filter(|_| version == Version::V5),
        publisher: Some(client_id.clone()),
        received_at: Some(SystemTime::now()),
    })
}

/// CONNACK's MQTT 5 properties: what this broker offers and assigned.
fn connack_properties(
    ctx: &ConnectionContext,
    assigned: Option<String>,
    keep_alive: Option<u16>,
    asked_keep_alive: u16,
) -> ConnAckProperties {
    ConnAckProperties {
        assigned_client_identifier: assigned,
        max_packet_size: u32::try_from(ctx.max_packet_size).ok(),
        retain_available: Some(1),
        shared_subscription_available: Some(1),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        topic_alias_max: Some(ctx.max_topic_alias),
        // Absent means 65 535 (MQTT 5 §3.2.2.3.3).
        receive_max: Some(ctx.receive_maximum).filter(|m| *m != u16::MAX),
        server_keep_alive: keep_alive.filter(|k| *k != asked_keep_alive),
        ..empty_connack_properties()
    }
}

struct Connection {
    ctx: Arc<ConnectionContext>,
    version: Version,
    client_id: Arc<str>,
    conn_id: u64,
    signal: Arc<LinkSignal>,
    /// MQTT 5 Maximum Packet Size the client accepts.
    client_max_packet: u32,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Acknowledgements in the order their PUBLISHes arrived, each with the
    /// store sequence number it must wait for (0: none).
    pending_acks: VecDeque<(u64, Packet)>,
    /// QoS 2 PUBLISHes received and not yet released (PUBREL), as the
    /// session last counted them: with the QoS 1 PUBACKs still pending,
    /// what the client has in flight against its Receive Maximum (packet
    /// ids are 16 bits, so at most 65 535).
    incoming_qos2: u16,
    /// MQTT 5 topic aliases, each way, in one box: few clients use them,
    /// and every byte here is in every idle connection's task (at 160
    /// bytes, its future fits tokio's 512-byte task cell; at 168 a 640).
    aliases: Option<Box<Aliases>>,
    /// `handle_packets` stopped with packets left in `rbuf`.
    turn_ended_early: bool,
}

/// What a parked connection keeps of its `Connection`: not its buffers and
/// queue of acknowledgements, which are empty when it parks (56 bytes, not
/// 152).
struct IdleConnection {
    ctx: Arc<ConnectionContext>,
    client_id: Arc<str>,
    conn_id: u64,
    signal: Arc<LinkSignal>,
    aliases: Option<Box<Aliases>>,
    client_max_packet: u32,
    incoming_qos2: u16,
    version: Version,
}

impl Connection {
    /// What an idle connection keeps while parked.
    fn into_idle(mut self) -> IdleConnection {
        IdleConnection {
            ctx: self.ctx.clone(),
            client_id: self.client_id.clone(),
            conn_id: self.conn_id,
            signal: self.signal.clone(),
            aliases: self.aliases.take(),
            client_max_packet: self.client_max_packet,
            incoming_qos2: self.incoming_qos2,
            version: self.version,
        }
    }

    /// A parked connection, running again.
    fn from_idle(idle: IdleConnection) -> Self {
        Self {
            ctx: idle.ctx,
            version: idle.version,
            client_id: idle.client_id,
            conn_id: idle.conn_id,
            signal: idle.signal,
            client_max_packet: idle.client_max_packet,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            pending_acks: VecDeque::new(),
            incoming_qos2: idle.incoming_qos2,
            aliases: idle.aliases,
            turn_ended_early: false,
        }
    }
}

/// A connection's MQTT 5 topic aliases: those the client set, and those
/// the broker assigned on what it sent (when the client allows any).
#[derive(Default)]
struct Aliases {
    incoming: topic_alias::Incoming,
    outgoing: Option<topic_alias::Outgoing>,
}

impl Connection {
    /// The first turn after CONNACK: what was in flight, and what arrived
    /// with CONNECT. `Some`: the connection ends here.
    async fn start<S>(&mut self, stream: &mut S) -> Option<Close>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // What arrived after CONNECT in the handshake's reads.
        self.count_partial(0);
        // Resend what was in flight when the session was last connected.
        let resend = self.ctx.router.resume(&self.client_id, self.conn_id);
        for out in resend {
            self.encode_outgoing(out);
        }
        // Packets that arrived in the same read as CONNECT.
        if let Some(close) = self.handle_packets() {
            return Some(self.goodbye(stream, close).await);
        }
        self.release_acks();
        self.flush_queue(stream).await.err()
    }

    /// Serves the client until the connection closes, or parks: at its
    /// first idle turn after CONNACK, and when the sweep asks again with
    /// nothing having happened since it last asked.
    async fn run<S>(&mut self, stream: &mut S) -> Stop
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            if let Some(request) = self.signal.close_requested() {
                return Stop::Close(self.close_requested(stream, request).await);
            }
            if let Some(close) = self.over_partial_packet_budget() {
                return Stop::Close(self.goodbye(stream, close).await);
            }
            self.release_idle_buffers();
            if self.signal.take_park_ask() {
                if self.is_idle() {
                    return Stop::Park;
                }
                self.signal.busy();
            }
            // Boxed, and only while acknowledgements wait for the store: an
            // idle connection carries no commit waiter.
            let commit = self
                .pending_acks
                .front()
                .filter(|(seq, _)| *seq > 0)
                .map(|(seq, _)| Box::pin(wait_commit(self.ctx.committed.clone(), *seq)));
            let event = if self.turn_ended_early {
                // The last turn stopped before its read was handled: the
                // subscribers go first, then the rest, before reading more.
                tokio::task::yield_now().await;
                Event::Buffered
            } else {
                tokio::select! {
                    read = read_some(stream, &mut self.rbuf) => Event::Read(read),
                    // A wake (something to send) or a close request (checked
                    // above), Keep Alive's included.
                    _ = self.signal.notified() => Event::Signal,
                    _ = async { match commit {
                        Some(commit) => commit.await,
                        None => std::future::pending().await,
                    } } => Event::Committed,
                }
            };
            // Anything but the sweep's own ask is activity.
            if !matches!(event, Event::Signal) || !self.signal.only_asked_to_park() {
                self.signal.busy();
            }
            match event {
                Event::Read(Ok(0)) => {
                    return Stop::Close(Close::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Event::Read(Ok(n)) => {
                    self.ctx.metrics.bytes_received.inc_by(n as u64);
                    self.signal.heard_from(Instant::now());
                    self.count_partial(self.rbuf.len() - n);
                    if let Some(close) = self.handle_packets() {
                        return Stop::Close(self.goodbye(stream, close).await);
                    }
                    // A full read means more is waiting: let the other
                    // connections (the subscribers this one floods among
                    // them) take a turn first, instead of routing up to
                    // tokio's budget of 128 reads (1 MiB) in one go.
                    if n == READ_CHUNK && !self.turn_ended_early {
                        tokio::task::yield_now().await;
                    }
                }
                Event::Buffered => {
                    if let Some(close) = self.handle_packets() {
                        return Stop::Close(self.goodbye(stream, close).await);
                    }
                }
                Event::Read(Err(e)) => return Stop::Close(Close::Io(e)),
                Event::Signal | Event::Committed => {}
            }
            self.release_acks();
            if let Err(e) = self.flush_queue(stream).await {
                return Stop::Close(e);
            }
        }
    }

    /// Nothing buffered either way, nothing waiting for the store: all the
    /// connection holds is in `self` and its session.
    fn is_idle(&self) -> bool {
        self.rbuf.is_empty()
            && self.wbuf.is_empty()
            && self.pending_acks.is_empty()
            && !self.turn_ended_early
    }

    /// Detaches from the session as `close` calls for.
    fn finish(&self, close: Close) {
        let client_id = &self.client_id;
        let departure = match &close {
            Close::Departure(d) => *d,
            Close::Protocol(reason) => {
                debug!(client_id = %Untrusted(client_id), "closing: {reason}");
                Departure::Abnormal
            }
            Close::Io(e) => {
                debug!(client_id = %Untrusted(client_id), "connection lost: {e}");
                Departure::Abnormal
            }
        };
        self.ctx
            .router
            .disconnect(client_id, self.conn_id, departure);
        self.ctx.metrics.connections_current.dec();
    }

    /// Sends the DISCONNECT the router's close request calls for, then closes.
    async fn close_requested<S>(&mut self, stream: &mut S, request: CloseRequest) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (reason, close) = match request {
            CloseRequest::TakenOver => (
                DisconnectReasonCode::SessionTakenOver,
                Close::Departure(Departure::TakenOver),
            ),
            CloseRequest::KeepaliveExpired => (
                DisconnectReasonCode::KeepAliveTimeout,
                Close::Protocol("keepalive timeout".into()),
            ),
            // The session stays for a client that logs in again; the will
            // does not go out on credentials that are void.
            CloseRequest::CredentialsRevoked => (
                DisconnectReasonCode::NotAuthorized,
                Close::Departure(Departure::Clean {
                    publish_will: false,
                    expiry_override: None,
                }),
            ),
            CloseRequest::SlowConsumer => (
                DisconnectReasonCode::QuotaExceeded,
                Close::Protocol("slow consumer: queue full".into()),
            ),
            // The session stays; its will is not a server shutdown's business.
            CloseRequest::ShuttingDown => (
                DisconnectReasonCode::ServerShuttingDown,
                Close::Departure(Departure::Clean {
                    publish_will: false,
                    expiry_override: None,
                }),
            ),
        };
        self.disconnect_packet(reason);
        self.goodbye(stream, close).await
    }

    /// Writes what is buffered (a final DISCONNECT, acks before it), then
    /// closes for `close`. Boxed: it runs once, and its state would otherwise
    /// add to every idle connection's.
    async fn goodbye<S>(&mut self, stream: &mut S, close: Close) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let _ = Box::pin(self.write_out(stream)).await;
        close
    }

    /// Drops the read and write buffers while they hold nothing, so an idle
    /// connection holds no buffer memory; the next read or write allocates
    /// what it needs.
    fn release_idle_buffers(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = BytesMut::new();
        }
    }

    /// Handles the complete packets in the read buffer. Returns a reason to
    /// close, if any.
    ///
    /// Stops early, leaving the rest buffered for the next turn, once a
    /// publish has made a subscriber that could read now shed a QoS 0
    /// message: this client outruns it, and handling the rest of an 8 KiB
    /// read (~100 small publishes) before it gets a turn would shed them
    /// too. With 50 flooding publishers and one subscriber, 20 % of what
    /// was published was delivered without this, 96 % with it.
    fn handle_packets(&mut self) -> Option<Close> {
        let before = self.rbuf.len();
        let close = self.handle_buffered_packets();
        self.count_partial(before);
        close
    }

    /// Keeps `hass_broker_partial_packets_bytes` equal to what the read
    /// buffers of all connections hold of packets over `LARGE_PARTIAL`,
    /// given what this one held before its buffer last changed.
    fn count_partial(&self, before: usize) {
        let (was, is) = (large_partial(before), large_partial(self.rbuf.len()));
        let gauge = &self.ctx.metrics.partial_packets;
        if is > was {
            gauge.inc_by(i64::try_from(is - was).unwrap_or(i64::MAX));
        } else if was > is {
            gauge.dec_by(i64::try_from(was - is).unwrap_or(i64::MAX));
        }
    }

    /// Mid-way through a large packet, with all clients' large packets at
    /// `limits.partial_packet_budget`: closed (MQTT 5: 0x97 Quota
    /// exceeded) rather than read on. Each authenticated client may send up
    /// to `max_packet_size`, and thousands may connect.
    fn over_partial_packet_budget(&mut self) -> Option<Close> {
        // Most turns end between packets: no shared counter is read then.
        if large_partial(self.rbuf.len()) == 0 {
            return None;
        }
        let held = usize::try_from(self.ctx.metrics.partial_packets.get()).unwrap_or(0);
        if held + READ_CHUNK <= self.ctx.partial_packet_budget {
            return None;
        }
        self.ctx.metrics.partial_packet_disconnects.inc();
        self.disconnect_packet(DisconnectReasonCode::QuotaExceeded);
        Some(Close::Protocol(
            "large packets of all clients over partial_packet_budget".into(),
        ))
    }

    fn handle_buffered_packets(&mut self) -> Option<Close> {
        self.turn_ended_early = false;
        let shed_before = self.shed_before_a_ready_reader();
        loop {
            if self.shed_before_a_ready_reader() != shed_before {
                self.turn_ended_early = !self.rbuf.is_empty();
                return None;
            }
            let incoming = match codec::read(self.version, &mut self.rbuf, self.ctx.max_packet_size)
            {
                Ok(Some(incoming)) => incoming,
                Ok(None) => return None,
                Err(e) => {
                    self.ctx.metrics.malformed(&e);
                    let reason = match e {
                        CodecError::TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
                        _ => DisconnectReasonCode::MalformedPacket,
                    };
                    self.disconnect_packet(reason);
                    return Some(Close::Protocol(e.to_string()));
                }
            };
            if let Some(close) = self.handle(incoming) {
                return Some(close);
            }
        }
    }

    fn shed_before_a_ready_reader(&self) -> u64 {
        let stats = &self.ctx.router.stats;
        stats.shed_before_a_ready_reader.load(Ordering::Relaxed)
    }

    /// One packet after CONNECT; `Some` when the connection must close.
    fn handle(&mut self, incoming: codec::Incoming) -> Option<Close> {
        let router = self.ctx.router.clone();
        match incoming.packet {
            Packet::Publish(publish, props) => {
                let header = incoming.publish?;
                return self.handle_publish(&router, publish, props, header, incoming.size);
            }
            Packet::PubAck(ack, _) => {
                let _ = router.acknowledge(&self.client_id, ack.pkid, AckKind::PubAck);
            }
            Packet::PubRec(rec, _) => {
                if let Ok(Some(out)) =
                    router.acknowledge(&self.client_id, rec.pkid, AckKind::PubRec)
                {
                    self.encode_outgoing(out);
                }
            }
            Packet::PubComp(comp, _) => {
                let _ = router.acknowledge(&self.client_id, comp.pkid, AckKind::PubComp);
            }
            Packet::PubRel(rel, _) => self.handle_pubrel(&router, rel),
            Packet::Subscribe(subscribe, props) => {
                return self.handle_subscribe(&router, subscribe, props);
            }
            Packet::Unsubscribe(unsubscribe, _) => {
                return self.handle_unsubscribe(&router, unsubscribe);
            }
            Packet::PingReq(_) => {
                self.pending_acks.push_back((0, Packet::PingResp(PingResp)));
            }
            Packet::Disconnect(disconnect, props) => {
                let publish_will =
                    disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                let expiry_override = props.and_then(|p| p.session_expiry_interval);
                return Some(Close::Departure(Departure::Clean {
                    publish_will,
                    expiry_override,
                }));
            }
            Packet::Connect(..) => {
                self.disconnect_packet(DisconnectReasonCode::ProtocolError);
                return Some(Close::Protocol("second CONNECT".into()));
            }
            _ => {
                self.disconnect_packet(DisconnectReasonCode::ProtocolError);
                return Some(Close::Protocol("unexpected packet".into()));
            }
        }
        None
    }

    /// PUBLISH: routed (QoS 2 once per packet id), its ack queued behind
    /// the store's commit.
    fn handle_publish(
        &mut self,
        router: &Router,
        publish: Publish,
        props: Option<PublishProperties>,
        header: PublishHeader,
        size: usize,
    ) -> Option<Close> {
        self.ctx.metrics.publish_received(header.qos, size);
        let alias = props.as_ref().and_then(|p| p.topic_alias);
        let topic = match self.resolve_topic(&publish.topic, alias) {
            Ok(topic) => topic,
            Err(reason) => {
                self.ctx.metrics.malformed_kind("topic");
                self.disconnect_packet(reason);
                return Some(Close::Protocol("invalid topic name or alias".into()));
            }
        };
        let message = message_from(
            &topic,
            publish.payload,
            header.qos,
            publish.retain,
            props,
            &self.client_id,
        );
        // QoS 2: a resend after a lost PUBREC is acknowledged, not routed again.
        let fresh = match header.qos {
            QoS::ExactlyOnce => {
                let (fresh, outstanding) = router.receive_qos2(&self.client_id, header.pkid);
                self.incoming_qos2 = u16::try_from(outstanding).unwrap_or(u16::MAX);
                fresh
            }
            _ => true,
        };
        if self.over_receive_maximum(header.qos) {
            // MQTT 5 §3.3.4: more unacknowledged QoS 1/2 PUBLISHes
            // than the Receive Maximum it was told.
            self.ctx.metrics.malformed_kind("receive_maximum_exceeded");
            self.disconnect_packet(DisconnectReasonCode::ReceiveMaximumExceeded);
            return Some(Close::Protocol("receive maximum exceeded".into()));
        }
        let routed = if fresh {
            router.publish_from(&self.client_id, message)
        } else {
            Ok(None)
        };
        if routed.is_err() {
            self.ctx
                .metrics
                .acl_denied
                .get_or_create(&"publish".into())
                .inc();
        }
        // MQTT 3.1.1 has no way to say "denied": Mosquitto acknowledges
        // and drops, and so do we. MQTT 5 gets 0x87.
        let denied = routed.is_err() && self.version == Version::V5;
        let seq = routed.ok().flatten().unwrap_or(0);
        match header.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let reason = if denied {
                    PubAckReason::NotAuthorized
                } else {
                    PubAckReason::Success
                };
                let ack = Packet::PubAck(
                    PubAck {
                        pkid: header.pkid,
                        reason,
                    },
                    None,
                );
                self.pending_acks.push_back((seq, ack));
            }
            QoS::ExactlyOnce => {
                let reason = if denied {
                    PubRecReason::NotAuthorized
                } else {
                    PubRecReason::Success
                };
                let ack = Packet::PubRec(
                    PubRec {
                        pkid: header.pkid,
                        reason,
                    },
                    None,
                );
                self.pending_acks.push_back((seq, ack));
            }
        }
        None
    }

    /// PUBREL: the QoS 2 message is released; PUBCOMP queued.
    fn handle_pubrel(&mut self, router: &Router, rel: PubRel) {
        let (known, outstanding) = router.release_qos2(&self.client_id, rel.pkid);
        self.incoming_qos2 = u16::try_from(outstanding).unwrap_or(u16::MAX);
        let reason = if known || self.version == Version::V4 {
            PubCompReason::Success
        } else {
            PubCompReason::PacketIdentifierNotFound
        };
        self.pending_acks.push_back((
            0,
            Packet::PubComp(
                PubComp {
                    pkid: rel.pkid,
                    reason,
                },
                None,
            ),
        ));
    }

    /// SUBSCRIBE: filters checked, subscriptions made, SUBACK queued (the
    /// retained replay follows it).
    fn handle_subscribe(
        &mut self,
        router: &Router,
        subscribe: Subscribe,
        props: Option<SubscribeProperties>,
    ) -> Option<Close> {
        if let Some(close) = self.reject_invalid_filters(subscribe.filters.iter().map(|f| &f.path))
        {
            return Some(close);
        }
        let identifier = props
            .and_then(|p| p.id)
            .and_then(|id| u32::try_from(id).ok())
            .unwrap_or(0);
        let requests: Vec<(String, SubscriptionOptions)> = subscribe
            .filters
            .iter()
            .map(|f| {
                let options = SubscriptionOptions {
                    qos: f.qos,
                    no_local: f.nolocal && self.version == Version::V5,
                    retain_as_published: f.preserve_retain && self.version == Version::V5,
                    retain_handling: match (self.version, &f.retain_forward_rule) {
                        (Version::V4, _) => 0,
                        (_, rumqttd::protocol::RetainForwardRule::OnEverySubscribe) => 0,
                        (_, rumqttd::protocol::RetainForwardRule::OnNewSubscribe) => 1,
                        (_, rumqttd::protocol::RetainForwardRule::Never) => 2,
                    },
                    identifier,
                };
                (f.path.clone(), options)
            })
            .collect();
        let results = router.subscribe(&self.client_id, requests);
        for result in &results {
            match result {
                SubscribeResult::NotAuthorized => {
                    self.ctx
                        .metrics
                        .acl_denied
                        .get_or_create(&"subscribe".into())
                        .inc();
                }
                SubscribeResult::OverBudget(budget) => {
                    let refused = self
                        .ctx
                        .metrics
                        .subscriptions_refused
                        .get_or_create(&budget.label().into())
                        .inc()
                        + 1;
                    // Logged at the 1st, 2nd, 4th... refusal of each kind,
                    // so clients cannot fill the log with them.
                    if refused.is_power_of_two() {
                        warn!(
                            client_id = %Untrusted(&self.client_id),
                            budget = budget.label(),
                            refused,
                            "subscription refused: over the subscription budget \
                             (limits.subscription_budget_per_client or subscription_budget)"
                        );
                    }
                }
                SubscribeResult::Granted(_) | SubscribeResult::Invalid => {}
            }
        }
        let return_codes = results
            .into_iter()
            .map(|r| match (r, self.version) {
                (SubscribeResult::Granted(qos), _) => SubscribeReasonCode::Success(qos),
                (_, Version::V4) => SubscribeReasonCode::Failure,
                (SubscribeResult::Invalid, _) => SubscribeReasonCode::TopicFilterInvalid,
                (SubscribeResult::NotAuthorized, _) => SubscribeReasonCode::NotAuthorized,
                (SubscribeResult::OverBudget(_), _) => SubscribeReasonCode::QuotaExceeded,
            })
            .collect();
        // SUBACK goes out after earlier acks, then the retained replay follows.
        self.pending_acks.push_back((
            0,
            Packet::SubAck(
                SubAck {
                    pkid: subscribe.pkid,
                    return_codes,
                },
                None,
            ),
        ));
        None
    }

    /// A malformed filter is a malformed packet (MQTT 3.1.1 §4.7.3): the
    /// whole SUBSCRIBE or UNSUBSCRIBE closes the connection.
    fn reject_invalid_filters<'f>(
        &mut self,
        mut filters: impl Iterator<Item = &'f String>,
    ) -> Option<Close> {
        if !filters.any(|f| topic::parse_filter(f).is_err()) {
            return None;
        }
        self.ctx.metrics.malformed_kind("invalid_filter");
        self.disconnect_packet(DisconnectReasonCode::MalformedPacket);
        Some(Close::Protocol("invalid topic filter".into()))
    }

    /// UNSUBSCRIBE: filters checked, subscriptions removed, UNSUBACK queued.
    fn handle_unsubscribe(&mut self, router: &Router, unsubscribe: Unsubscribe) -> Option<Close> {
        if let Some(close) = self.reject_invalid_filters(unsubscribe.filters.iter()) {
            return Some(close);
        }
        let existed = router.unsubscribe(&self.client_id, &unsubscribe.filters);
        let reasons = existed
            .into_iter()
            .map(|e| {
                if e {
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        self.pending_acks.push_back((
            0,
            Packet::UnsubAck(
                UnsubAck {
                    pkid: unsubscribe.pkid,
                    reasons,
                },
                None,
            ),
        ));
        None
    }

    /// Whether an MQTT 5 client's QoS `qos` PUBLISH, just received, puts
    /// more of its PUBLISHes in flight than its Receive Maximum: QoS 1 ones
    /// whose PUBACK waits (this one included) and QoS 2 ones not yet
    /// released. MQTT 3.1.1 has no such limit.
    fn over_receive_maximum(&self, qos: QoS) -> bool {
        if self.version != Version::V5 || qos == QoS::AtMostOnce {
            return false;
        }
        let qos1 = self
            .pending_acks
            .iter()
            .filter(|(_, ack)| matches!(ack, Packet::PubAck(..)))
            .count();
        let in_flight =
            usize::from(self.incoming_qos2) + qos1 + usize::from(qos == QoS::AtLeastOnce);
        in_flight > usize::from(self.ctx.receive_maximum)
    }

    /// The topic a PUBLISH is for, applying MQTT 5 topic aliases: a topic
    /// with an alias (re)binds it; an empty topic with an alias uses it.
    fn resolve_topic(
        &mut self,
        raw: &[u8],
        alias: Option<u16>,
    ) -> Result<Arc<str>, DisconnectReasonCode> {
        if let Some(alias) = alias
            && (alias == 0 || alias > self.ctx.max_topic_alias)
        {
            return Err(DisconnectReasonCode::TopicAliasInvalid);
        }
        if raw.is_empty() {
            let alias = alias.ok_or(DisconnectReasonCode::TopicNameInvalid)?;
            return self
                .aliases
                .as_ref()
                .and_then(|aliases| aliases.incoming.topic(alias))
                .cloned()
                .ok_or(DisconnectReasonCode::ProtocolError);
        }
        let topic: Arc<str> = std::str::from_utf8(raw)
            .ok()
            .filter(|t| topic::validate_name(t).is_ok())
            .ok_or(DisconnectReasonCode::TopicNameInvalid)?
            .into();
        if let Some(alias) = alias {
            self.aliases
                .get_or_insert_default()
                .incoming
                .bind(alias, topic.clone());
        }
        Ok(topic)
    }

    /// Moves acknowledgements whose store commit is done into the write buffer,
    /// keeping their order.
    fn release_acks(&mut self) {
        let committed = self
            .ctx
            .committed
            .as_ref()
            .map_or(u64::MAX, |c| *c.borrow());
        while let Some((seq, _)) = self.pending_acks.front() {
            if *seq > committed {
                break;
            }
            if let Some((_, packet)) = self.pending_acks.pop_front() {
                self.encode(packet);
            }
        }
    }

    /// Writes what is buffered, then everything the session may send now.
    async fn flush_queue<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> Result<(), Close> {
        loop {
            let (outgoing, more) =
                self.ctx
                    .router
                    .take_outgoing(&self.client_id, self.conn_id, 256);
            for out in outgoing {
                self.encode_outgoing(out);
            }
            self.write_out(stream).await.map_err(Close::Io)?;
            if !more {
                return Ok(());
            }
        }
    }

    fn encode_outgoing(&mut self, out: Outgoing) {
        match out {
            Outgoing::PubRel(pkid) => self.encode(Packet::PubRel(
                PubRel {
                    pkid,
                    reason: PubRelReason::Success,
                },
                None,
            )),
            Outgoing::Publish {
                delivery,
                pkid,
                dup,
            } => {
                let message = &delivery.message;
                let naming = self
                    .aliases
                    .as_ref()
                    .and_then(|a| a.outgoing.as_ref())
                    .map_or(topic_alias::Naming::Topic, |a| a.naming(&message.topic));
                let (topic, alias) = match naming {
                    topic_alias::Naming::Topic => (message.topic.as_bytes(), None),
                    topic_alias::Naming::Bind(alias) => (message.topic.as_bytes(), Some(alias)),
                    topic_alias::Naming::Alias(alias) => (&b""[..], Some(alias)),
                };
                let publish = codec::outgoing_publish(
                    topic,
                    &message.payload,
                    delivery.qos,
                    pkid,
                    dup,
                    delivery.retain,
                );
                let props = (self.version == Version::V5)
                    .then(|| {
                        let mut props = message.properties.clone().unwrap_or_default();
                        props.message_expiry_interval = message.remaining_expiry(SystemTime::now());
                        props.subscription_identifiers = delivery
                            .subscription_ids
                            .iter()
                            .map(|id| *id as usize)
                            .collect();
                        props.topic_alias = alias;
                        props
                    })
                    .filter(|p| *p != PublishProperties::default());
                let before = self.wbuf.len();
                self.encode(Packet::Publish(publish, props));
                let size = self.wbuf.len() - before;
                if size > self.client_max_packet as usize {
                    // MQTT 5 §3.1.2.24: never send more than the client accepts.
                    self.wbuf.truncate(before);
                    self.ctx.metrics.dropped_too_large.inc();
                    if delivery.qos != QoS::AtMostOnce {
                        let kind = if delivery.qos == QoS::AtLeastOnce {
                            AckKind::PubAck
                        } else {
                            AckKind::PubRec
                        };
                        let _ = self.ctx.router.acknowledge(&self.client_id, pkid, kind);
                        if kind == AckKind::PubRec {
                            let _ = self.ctx.router.acknowledge(
                                &self.client_id,
                                pkid,
                                AckKind::PubComp,
                            );
                        }
                    }
                } else {
                    self.ctx.metrics.publish_sent(delivery.qos, size);
                    if let (topic_alias::Naming::Bind(alias), Some(aliases)) = (
                        naming,
                        self.aliases.as_mut().and_then(|a| a.outgoing.as_mut()),
                    ) {
                        aliases.bound(message.topic.clone(), alias);
                    }
                }
            }
        }
    }

    fn encode(&mut self, packet: Packet) {
        if let Err(e) = codec::write(self.version, packet, &mut self.wbuf) {
            debug!(client_id = %Untrusted(&self.client_id), "cannot encode packet: {e:?}");
        }
    }

    fn disconnect_packet(&mut self, reason: DisconnectReasonCode) {
        // What earlier PUBLISHes earned and the store has made durable goes
        // out first: the client need not send those again.
        self.release_acks();
        // MQTT 3.1.1 servers never send DISCONNECT; they just close.
        if self.version == Version::V5 {
            self.encode(codec::disconnect(reason));
        }
    }

    async fn write_out<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        // What the socket takes at once is written here, without a future
        // of its own; only a full socket needs the (boxed) waiting below.
        let total = self.wbuf.len();
        let wbuf = &mut self.wbuf;
        std::future::poll_fn(|cx| {
            while !wbuf.is_empty() {
                match std::pin::Pin::new(&mut *stream).poll_write(cx, wbuf) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => bytes::Buf::advance(wbuf, n),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            Poll::Ready(Ok(()))
        })
        .await?;
        if !self.wbuf.is_empty() {
            Box::pin(self.write_when_writable(stream)).await?;
        }
        self.ctx.metrics.bytes_sent.inc_by(total as u64);
        // Keeps its capacity for the rest of a burst; `release_idle_buffers`
        // gives it back before the connection waits.
        self.wbuf.clear();
        Ok(())
    }

    /// Writes the rest of `wbuf` to a socket that is full for now.
    async fn write_when_writable<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> std::io::Result<()> {
        // A client that stopped reading must not pin this task in write_all:
        // a close request (takeover, slow consumer, shutdown) still ends it.
        // Biased: a writable socket takes the bytes first, so the goodbye
        // DISCONNECT sent after such a request still goes out.
        let signal = &self.signal;
        // Publishers need not make way for a client that is not reading.
        signal.set_write_blocked(true);
        let mut woken = false;
        let interrupted = async {
            while signal.close_requested().is_none() {
                signal.notified().await;
                // Not a close: a wake for more to send, passed on below.
                woken = true;
            }
        };
        let written = tokio::select! {
            biased;
            written = stream.write_all(&self.wbuf) => written,
            () = interrupted => Err(std::io::ErrorKind::ConnectionAborted.into()),
            () = tokio::time::sleep(self.ctx.write_timeout) => {
                self.ctx.metrics.write_timeouts.inc();
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client read nothing for write_timeout",
                ))
            }
        };
        signal.set_write_blocked(false);
        if woken {
            signal.wake();
        }
        written
    }
}

/// What woke the connection loop.
enum Event {
    Read(std::io::Result<usize>),
    /// Packets the last turn left in the read buffer.
    Buffered,
    Signal,
    Committed,
}

/// Reads what the peer has sent and appends it to `rbuf`. The bytes land in
/// a buffer on the stack (only while polled) and are copied into `rbuf`,
/// which grows by what arrived: while `rbuf` is empty it holds no memory, so
/// waiting for the next packet costs an idle connection nothing.
async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = tokio::io::ReadBuf::uninit(&mut stack);
        std::task::ready!(std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
        rbuf.extend_from_slice(buf.filled());
        std::task::Poll::Ready(Ok(buf.filled().len()))
    })
    .await
}

/// The most one read takes from the socket.
const READ_CHUNK: usize = 8 * 1024;

/// A read buffer over this size holds part of a large packet: its bytes
/// count against `limits.partial_packet_budget`. Below it, what a client
/// holds is bounded by the connection caps alone.
const LARGE_PARTIAL: usize = 64 * 1024;

/// What a read buffer of `len` bytes counts against the budget.
fn large_partial(len: usize) -> usize {
    if len > LARGE_PARTIAL { len } else { 0 }
}

impl Drop for Connection {
    /// Gives back what the read buffer counted, however the connection ended.
    fn drop(&mut self) {
        let held = large_partial(self.rbuf.len());
        if held > 0 {
            self.ctx
                .metrics
                .partial_packets
                .dec_by(i64::try_from(held).unwrap_or(i64::MAX));
        }
    }
}

/// Reads until a whole CONNECT is buffered and parses it. `Ok(None)`: the
/// peer closed first.
async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    ctx: &ConnectionContext,
) -> Result<Option<(Version, Packet)>, CodecError> {
    loop {
        let max = ctx.max_connect_size.min(ctx.max_packet_size);
        if let Detected::Version(version) = codec::detect_version(rbuf, max)? {
            let incoming = codec::read(version, rbuf, max)?;
            if let Some(incoming) = incoming {
                ctx.metrics.bytes_received.inc_by(incoming.size as u64);
                return Ok(Some((version, incoming.packet)));
            }
        }
        match read_some(stream, rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

async fn write_now<S: AsyncWrite + Unpin>(
    stream: &mut S,
    wbuf: &mut BytesMut,
    version: Version,
    packet: Packet,
) -> std::io::Result<()> {
    codec::write(version, packet, wbuf).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    stream.write_all(wbuf).await?;
    wbuf.clear();
    Ok(())
}

fn connack(
    session_present: bool,
    code: ConnectReturnCode,
    props: Option<ConnAckProperties>,
) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present,
            code,
        },
        props,
    )
}

fn message_from(
    topic: &str,
    payload: bytes::Bytes,
    qos: QoS,
    retain: bool,
    props: Option<PublishProperties>,
    client_id: &Arc<str>,
) -> Message {
    let mut props = props;
    let now = SystemTime::now();
    let expires_at = props
        .as_mut()
        .and_then(|p| p.message_expiry_interval.take())
        .map(|secs| now + Duration::from_secs(u64::from(secs)));
    if let Some(p) = props.as_mut() {
        p.topic_alias = None;
        p.subscription_identifiers.clear();
    }
    Message {
        topic: topic.into(),
        payload,
        qos,
        retain,
        properties: props.filter(|p| *p != PublishProperties::default()),
        expires_at,
        publisher: Some(client_id.clone()),
        received_at: Some(now),
    }
}

/// The Keep Alive a client gets under `limits.max_keepalive`; `None`
/// refuses it: an MQTT 3.1.1 client asking for more, which 3.1.1 has no way
/// to tell otherwise. MQTT 5 is told the maximum (Server Keep Alive) when it
/// asks for more or for none.
fn granted_keep_alive(max: Option<u16>, version: Version, asked: u16) -> Option<u16> {
    match (max, version) {
        (Some(max), Version::V5) if asked == 0 || asked > max => Some(max),
        (Some(max), Version::V4) if asked > max => None,
        _ => Some(asked),
    }
}

fn generated_client_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "hass-broker-{nanos:08x}-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Completes once the store has committed `seq`.
async fn wait_commit(committed: Option<watch::Receiver<u64>>, seq: u64) {
    match committed {
        Some(mut rx) => {
            if rx.wait_for(|done| *done >= seq).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

fn empty_connect_properties() -> rumqttd::protocol::ConnectProperties {
    rumqttd::protocol::ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    }
}

fn empty_connack_properties() -> ConnAckProperties {
    ConnAckProperties::default()
}

trait WillPropertiesExt {
    fn unwrap_or_default_will(self) -> rumqttd::protocol::LastWillProperties;
}

impl WillPropertiesExt for Option<rumqttd::protocol::LastWillProperties> {
    fn unwrap_or_default_will(self) -> rumqttd::protocol::LastWillProperties {
        self.unwrap_or(rumqttd::protocol::LastWillProperties {
            delay_interval: None,
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Arc<ConnectionContext> {
        Arc::new(ConnectionContext::new(
            Arc::new(Router::new(crate::router::Limits::default(), None)),
            AccessPolicy::default(),
            &crate::config::LimitsConfig::default(),
            None,
        ))
    }

    /// Every connection's task holds this future for its whole life, so its
    /// size is paid per idle connection. The handshake's state is boxed and
    /// must not count (it made the future 2.7 KB), nor a Keep Alive timer,
    /// a store-commit waiter or the rarely needed wait for a full socket
    /// (0.8 KB with them), nor the arguments twice (`async fn` stores them
    /// twice).
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let serving = serve(stream, "127.0.0.1:1".parse().unwrap(), context());
        let size = std::mem::size_of_val(&serving);
        // tokio's task cell is 128-aligned: its header (32), scheduler and
        // id (16), the stage's tag (8) and trailer (48) around this future
        // and the task tracker's token (8) fit 512 bytes with up to 400
        // here, and take 640 above (heaptrack: 512 bytes a task at 400).
        // The socket is 32 bytes of it in a release build, 40 in a debug
        // one: what is ours is held to 368.
        let socket = std::mem::size_of::<tokio::net::TcpStream>();
        assert!(
            size - socket <= 368,
            "serve future is {size} bytes, {socket} of them the socket"
        );
    }

    #[tokio::test]
    async fn reads_into_an_empty_buffer_allocate_only_what_arrived() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&[0xC0, 0x00]).await.unwrap();
        let mut rbuf = BytesMut::new();
        let n = read_some(&mut server, &mut rbuf).await.unwrap();
        assert_eq!((n, &rbuf[..]), (2, &[0xC0, 0x00][..]));
        assert!(rbuf.capacity() < 64, "capacity {}", rbuf.capacity());
        // A partial packet is appended to, not replaced.
        client.write_all(&[0x30]).await.unwrap();
        read_some(&mut server, &mut rbuf).await.unwrap();
        assert_eq!(&rbuf[..], &[0xC0, 0x00, 0x30][..]);
    }
}
