//! The broker's metrics. Counters on the hot path are prometheus-client
//! atomics; state that lives in the router and store (sessions, retained,
//! queue depth, commit latency) is read at scrape time by a collector, so a
//! scrape always shows the current value.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use rumqttd::protocol::QoS;

use crate::codec::CodecError;
use crate::router::Router;
use crate::store::StoreStats;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QosLabels {
    pub qos: u8,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

impl From<&str> for ReasonLabels {
    fn from(reason: &str) -> Self {
        Self {
            reason: reason.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

impl From<&str> for ActionLabels {
    fn from(action: &str) -> Self {
        Self {
            action: action.to_owned(),
        }
    }
}

/// Metrics updated by connections. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct BrokerMetrics {
    pub connections_opened: Counter,
    pub connections_refused: Family<ReasonLabels, Counter>,
    pub auth_delayed: Counter,
    pub write_timeouts: Counter,
    pub connections_current: Gauge,
    /// Idle connections parked: no task, their sockets in the parking lot.
    pub connections_parked: Gauge,
    /// Bytes of large packets still arriving, in all connections' read
    /// buffers (`limits.partial_packet_budget` caps it).
    pub partial_packets: Gauge,
    pub partial_packet_disconnects: Counter,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub malformed: Family<ReasonLabels, Counter>,
    pub messages_received: Family<QosLabels, Counter>,
    pub messages_sent: Family<QosLabels, Counter>,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub dropped_too_large: Counter,
    pub acl_denied: Family<ActionLabels, Counter>,
    /// New filters refused over a subscription budget, by which one.
    pub subscriptions_refused: Family<ReasonLabels, Counter>,
    pub policy_reloads: Family<ReasonLabels, Counter>,
    pub mosquitto_imports: Family<ReasonLabels, Counter>,
    pub tls_reloads: Family<ReasonLabels, Counter>,
}

impl BrokerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_opened",
            "TCP connections accepted",
            self.connections_opened.clone(),
        );
        registry.register(
            "connections_refused",
            "TCP connections closed on arrival by a cap, by reason (max_connections, \
             max_connections_per_address, max_handshakes, max_handshakes_per_address)",
            self.connections_refused.clone(),
        );
        registry.register(
            "auth_delayed",
            "Password checks made to wait because their address failed several times in a row",
            self.auth_delayed.clone(),
        );
        registry.register(
            "write_timeouts",
            "Connections closed because the client read nothing for limits.write_timeout",
            self.write_timeouts.clone(),
        );
        registry.register(
            "clients_connected",
            "Clients connected now (after CONNACK)",
            self.connections_current.clone(),
        );
        registry.register(
            "clients_parked",
            "Idle clients parked without a task (included in clients_connected)",
            self.connections_parked.clone(),
        );
        registry.register_with_unit(
            "partial_packets",
            "Bytes of packets over 64 KiB still arriving, in all connections' read buffers",
            Unit::Bytes,
            self.partial_packets.clone(),
        );
        registry.register(
            "partial_packet_budget_disconnects",
            "Clients disconnected in the middle of a large packet, the others' being at \
             limits.partial_packet_budget",
            self.partial_packet_disconnects.clone(),
        );
        registry.register(
            "auth_failures",
            "CONNECTs refused, by reason (bad_credentials, not_authorized, \
             will_not_authorized, client_id_owned, keepalive_over_max, too_many_sessions)",
            self.auth_failures.clone(),
        );
        registry.register(
            "malformed_packets",
            "Connections closed for malformed or disallowed input, by kind",
            self.malformed.clone(),
        );
        registry.register(
            "messages_received",
            "PUBLISH packets received from clients, by QoS",
            self.messages_received.clone(),
        );
        registry.register(
            "messages_sent",
            "PUBLISH packets sent to clients, by QoS",
            self.messages_sent.clone(),
        );
        registry.register_with_unit(
            "received",
            "Bytes received from clients",
            Unit::Bytes,
            self.bytes_received.clone(),
        );
        registry.register_with_unit(
            "sent",
            "Bytes sent to clients",
            Unit::Bytes,
            self.bytes_sent.clone(),
        );
        registry.register(
            "acl_denied",
            "Publishes and subscriptions the ACL refused, by action",
            self.acl_denied.clone(),
        );
        registry.register(
            "subscriptions_refused",
            "New filters refused because they would take a subscription budget past its \
             limit, by reason (client_budget, broker_budget)",
            self.subscriptions_refused.clone(),
        );
        registry.register(
            "policy_reloads",
            "Reloads of the password and ACL files after they changed, by reason (ok, failed)",
            self.policy_reloads.clone(),
        );
        registry.register(
            "mosquitto_imports",
            "One-shot imports of import_mosquitto_db, by result (ok, failed)",
            self.mosquitto_imports.clone(),
        );
        registry.register(
            "tls_reloads",
            "Reloads of the TLS certificate after its files changed, by reason (ok, failed)",
            self.tls_reloads.clone(),
        );
        registry.register(
            "dropped_too_large",
            "Deliveries dropped because they exceed the client's Maximum Packet Size",
            self.dropped_too_large.clone(),
        );
    }

    pub fn malformed(&self, error: &CodecError) {
        let kind = match error {
            CodecError::Malformed(_) => "malformed",
            CodecError::TooLarge { .. } => "too_large",
            CodecError::UnexpectedType(_) => "unexpected_type",
            CodecError::NotConnect => "not_connect",
            CodecError::UnsupportedProtocol { .. } => "unsupported_protocol",
            CodecError::ParserPanicked => "parser_panicked",
            CodecError::BadFlags { .. } => "bad_flags",
            CodecError::Property(_) => "bad_property",
        };
        self.malformed_kind(kind);
    }

    pub fn malformed_kind(&self, kind: &str) {
        self.malformed.get_or_create(&kind.into()).inc();
    }

    pub fn publish_received(&self, qos: QoS, _size: usize) {
        self.messages_received
            .get_or_create(&QosLabels { qos: qos as u8 })
            .inc();
    }

    /// Messages received and sent, over all QoS levels.
    pub fn message_totals(&self) -> (u64, u64) {
        let sum = |family: &Family<QosLabels, Counter>| {
            (0..=2)
                .map(|qos| family.get_or_create(&QosLabels { qos }).get())
                .sum()
        };
        (sum(&self.messages_received), sum(&self.messages_sent))
    }

    pub fn publish_sent(&self, qos: QoS, _size: usize) {
        self.messages_sent
            .get_or_create(&QosLabels { qos: qos as u8 })
            .inc();
    }
}

/// Reads router and store state at scrape time.
#[derive(Debug)]
pub struct StateCollector {
    pub router: Arc<Router>,
    pub store: Option<Arc<StoreStats>>,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.router.snapshot();
        let (sessions, connected, queued, queued_bytes) = (
            snapshot.sessions,
            snapshot.connected,
            snapshot.queued_messages,
            snapshot.queued_bytes,
        );
        let gauge = |encoder: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     unit: Option<&Unit>,
                     value: i64| {
            let metric = ConstGauge::new(value);
            let e = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
            metric.encode(e)
        };
        let as_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            &mut encoder,
            "sessions",
            "Sessions held, connected or not",
            None,
            as_i64(sessions),
        )?;
        gauge(
            &mut encoder,
            "sessions_offline",
            "Persistent sessions whose client is disconnected",
            None,
            as_i64(sessions - connected),
        )?;
        gauge(
            &mut encoder,
            "subscriptions",
            "What all sessions' subscriptions cost, as the subscription budgets count it",
            Some(&Unit::Bytes),
            as_i64(snapshot.subscription_bytes),
        )?;
        gauge(
            &mut encoder,
            "retained_messages",
            "Retained messages held, published by clients ($SYS not counted)",
            None,
            as_i64(snapshot.retained_messages),
        )?;
        gauge(
            &mut encoder,
            "retained",
            "Memory held by retained messages",
            Some(&Unit::Bytes),
            as_i64(snapshot.retained_bytes),
        )?;
        gauge(
            &mut encoder,
            "queued_messages",
            "Messages queued for sessions, not yet sent",
            None,
            as_i64(queued),
        )?;
        gauge(
            &mut encoder,
            "queued",
            "Memory held by queued messages",
            Some(&Unit::Bytes),
            as_i64(queued_bytes),
        )?;
        let stats = &self.router.stats;
        let counter = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64| {
            let metric = ConstCounter::new(value);
            let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
            metric.encode(e)
        };
        counter(
            &mut encoder,
            "dropped_queue_full",
            "Deliveries dropped because a session's queue was full",
            stats.dropped_queue_full.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "dropped_memory_budget",
            "Deliveries dropped because the global memory budget was reached",
            stats.dropped_budget.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "dropped_expired",
            "Queued messages dropped because their MQTT 5 expiry passed",
            stats.dropped_expired.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "dropped_acl",
            "Queued deliveries dropped because the client's ACL no longer allows them",
            stats.dropped_acl.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "slow_consumer_disconnects",
            "Clients disconnected for a queue full of QoS 1/2 (limits.slow_consumer: disconnect)",
            stats.slow_consumer_disconnects.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "replays_dropped",
            "Queued retained replays dropped: replaced by a repeated SUBSCRIBE's, or with a \
             client cut off over limits.max_replay_messages or the memory budget",
            stats.replays_dropped.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "retained_refused",
            "Retained messages delivered but not kept, their topic's older one dropped: \
             retained messages were at limits.retained_budget",
            stats.retained_refused.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "wills_published",
            "Will messages published",
            stats.wills_published.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "wills_refused",
            "Will messages not published: the ACL in force when they were due denies their topic",
            stats.wills_refused.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "credentials_revoked_disconnects",
            "Connections closed because their user left the password file or has a new hash",
            stats.credentials_revoked.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "sessions_expired",
            "Persistent sessions ended by their expiry interval",
            stats.sessions_expired.load(Ordering::Relaxed),
        )?;
        if let Some(store) = &self.store {
            counter(
                &mut encoder,
                "store_commits",
                "Store transactions committed",
                store.commits.load(Ordering::Relaxed),
            )?;
            counter(
                &mut encoder,
                "store_commit_failures",
                "Store commits that failed and were retried",
                store.commit_failures.load(Ordering::Relaxed),
            )?;
        }
        Ok(())
    }
}
