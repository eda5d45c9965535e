//! Mosquitto-compatible `$SYS/broker/...` topics, for tools and dashboards
//! that read them (MQTT Explorer, Home Assistant's own MQTT sensors). Each
//! is a retained message rewritten every `sys_interval`; none is persisted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hass_runtime::shutdown::Shutdown;
use rumqttd::protocol::QoS;

use crate::message::Message;
use crate::metrics::BrokerMetrics;
use crate::router::Router;

/// Publishes the `$SYS` topics every `interval` until shutdown.
pub async fn publish_loop(
    router: Arc<Router>,
    metrics: BrokerMetrics,
    version: &'static str,
    interval: Duration,
    shutdown: Shutdown,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        for (topic, value) in topics(&router, &metrics, version, started.elapsed()) {
            router.publish_volatile(Message {
                topic: topic.into(),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: None,
                expires_at: None,
                publisher: None,
                received_at: None,
            });
        }
    }
}

/// The topics and their current values.
pub fn topics(
    router: &Router,
    metrics: &BrokerMetrics,
    version: &str,
    uptime: Duration,
) -> Vec<(&'static str, String)> {
    let snapshot = router.snapshot();
    let (received, sent) = metrics.message_totals();
    vec![
        ("$SYS/broker/version", format!("hass-broker {version}")),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", uptime.as_secs()),
        ),
        (
            "$SYS/broker/clients/connected",
            snapshot.connected.to_string(),
        ),
        ("$SYS/broker/clients/active", snapshot.connected.to_string()),
        (
            "$SYS/broker/clients/disconnected",
            (snapshot.sessions - snapshot.connected).to_string(),
        ),
        ("$SYS/broker/clients/total", snapshot.sessions.to_string()),
        ("$SYS/broker/messages/received", received.to_string()),
        ("$SYS/broker/messages/sent", sent.to_string()),
        (
            "$SYS/broker/publish/messages/received",
            received.to_string(),
        ),
        ("$SYS/broker/publish/messages/sent", sent.to_string()),
        (
            "$SYS/broker/bytes/received",
            metrics.bytes_received.get().to_string(),
        ),
        (
            "$SYS/broker/bytes/sent",
            metrics.bytes_sent.get().to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            snapshot.retained_messages.to_string(),
        ),
        (
            "$SYS/broker/subscriptions/count",
            snapshot.subscriptions.to_string(),
        ),
        (
            "$SYS/broker/store/messages/count",
            snapshot.queued_messages.to_string(),
        ),
        (
            "$SYS/broker/store/messages/bytes",
            snapshot.queued_bytes.to_string(),
        ),
    ]
}
