//! An application message as the broker keeps it: shared by every queue it
//! is delivered to, so a payload is stored once however many subscribers get it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rumqttd::protocol::{PublishProperties, QoS};

#[derive(Debug, Clone)]
pub struct Message {
    /// A valid topic name (UTF-8, no wildcards).
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties to forward, without per-hop ones (topic alias,
    /// subscription identifiers, message expiry: that lives in `expires_at`).
    pub properties: Option<PublishProperties>,
    /// When an MQTT 5 message expiry interval runs out.
    pub expires_at: Option<SystemTime>,
    /// Client id of the publisher, for MQTT 5 No Local.
    pub publisher: Option<Arc<str>>,
    /// When the broker received it; `None` for the broker's own `$SYS`
    /// messages and for retained messages stored before this was kept.
    pub received_at: Option<SystemTime>,
}

impl Message {
    /// Bytes this message holds in memory, for the queue and retained
    /// budgets: its MQTT 5 properties too, which a client can make far
    /// larger than the payload (a user property runs to the packet's size).
    pub fn weight(&self) -> usize {
        const OVERHEAD: usize = 96;
        self.topic.len()
            + self.payload.len()
            + OVERHEAD
            + self.properties.as_ref().map_or(0, properties_weight)
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Seconds left before expiry, as an MQTT 5 receiver must be told.
    pub fn remaining_expiry(&self, now: SystemTime) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.duration_since(now).unwrap_or(Duration::ZERO);
            u32::try_from(left.as_secs().max(1)).unwrap_or(u32::MAX)
        })
    }
}
/// Bytes a message's properties hold beyond the message itself.
fn properties_weight(p: &PublishProperties) -> usize {
    /// A `String` pair's own size, and a `String`'s.
    const PAIR: usize = 48;
    const STRING: usize = 24;
    std::mem::size_of::<PublishProperties>()
        + p.response_topic.as_ref().map_or(0, |t| STRING + t.len())
        + p.correlation_data.as_ref().map_or(0, |d| d.len())
        + p.content_type.as_ref().map_or(0, |t| STRING + t.len())
        + p.user_properties
            .iter()
            .map(|(k, v)| PAIR + k.len() + v.len())
            .sum::<usize>()
        + p.subscription_identifiers.len() * std::mem::size_of::<usize>()
}
