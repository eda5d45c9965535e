//! The MQTT broker's health as a client sees it: one kept connection, and
//! every `interval` a QoS 1 publish on a private health topic that the same
//! connection is subscribed to. The publish→receive round trip is the
//! latency; no message back within `timeout` means down. Where the broker
//! publishes `$SYS` counters (Mosquitto does), a few are exported too.

use std::time::Duration;

use hass_runtime::liveness::Heartbeat;
use hass_runtime::readiness::ReadinessCheck;
use hass_runtime::secret::{ExposeSecret, SecretSource};
use hass_runtime::shutdown::Shutdown;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{BrokerConfig, Username};
use hass_runtime::backoff::Backoff;

/// `$SYS` topics read, each the `topic` label's value (a fixed set).
const SYS_TOPICS: [&str; 3] = [
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SysLabels {
    topic: &'static str,
}

/// Why the MQTT connection failed or ended; a fixed set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone)]
struct BrokerMetrics {
    up: Gauge,
    round_trip: Histogram,
    failures: Counter,
    connects: Counter,
    connection_errors: Family<ReasonLabels, Counter>,
    sys: Family<SysLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// The broker prober.
#[derive(Debug)]
pub struct BrokerProbe {
    host: String,
    port: u16,
    username: Option<Username>,
    password: Option<SecretSource>,
    client_id: String,
    topic: String,
    interval: Duration,
    timeout: Duration,
    metrics: BrokerMetrics,
}

impl BrokerProbe {
    pub fn new(cfg: &BrokerConfig) -> Result<Self, String> {
        let (host, port) = cfg
            .address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("broker.address: {:?} is not host:port", cfg.address))?;
        if cfg.password.is_some() && cfg.username.is_none() {
            return Err("broker.password is set but broker.username is not".to_owned());
        }
        if let Some(source) = &cfg.username {
            source.load().map_err(|e| format!("broker.username: {e}"))?;
        }
        if let Some(source) = &cfg.password {
            source.load().map_err(|e| format!("broker.password: {e}"))?;
        }
        if cfg.health_topic.is_empty() || cfg.health_topic.contains(['+', '#']) {
            return Err(format!(
                "broker.health_topic: {:?} must be a plain topic without wildcards",
                cfg.health_topic
            ));
        }
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("hass-exporter-{}", std::process::id()));
        Ok(Self {
            host: host.to_owned(),
            port,
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            // Private per client id, so two exporters never answer each other.
            topic: format!("{}/{client_id}", cfg.health_topic.trim_end_matches('/')),
            client_id,
            interval: cfg.interval,
            timeout: cfg.timeout,
            metrics: BrokerMetrics {
                up: Gauge::default(),
                round_trip: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
                failures: Counter::default(),
                connects: Counter::default(),
                connection_errors: Family::default(),
                sys: Family::default(),
            },
        })
    }

    /// The round-trip loop wakes at least every second.
    pub fn longest_wait(&self) -> Duration {
        Duration::from_secs(1)
    }

    pub fn register_metrics(&self, r: &mut Registry) {
        r.register(
            "broker_up",
            "Whether the last publish→receive round trip through the broker succeeded",
            self.metrics.up.clone(),
        );
        r.register(
            "broker_round_trip_seconds",
            "Time from publishing on the health topic to receiving it back",
            self.metrics.round_trip.clone(),
        );
        r.register(
            "broker_round_trip_failures",
            "Round trips that failed: no message back within the timeout, or no connection",
            self.metrics.failures.clone(),
        );
        r.register(
            "broker_connects",
            "MQTT connections the exporter made to the broker",
            self.metrics.connects.clone(),
        );
        r.register(
            "broker_connection_errors",
            "MQTT connections that failed or ended, by reason (not_authorized: the broker refused the credentials)",
            self.metrics.connection_errors.clone(),
        );
        r.register(
            "broker_sys",
            "Values the broker publishes under $SYS, by topic (where it publishes them)",
            self.metrics.sys.clone(),
        );
    }

    fn options(&self) -> MqttOptions {
        let mut options = MqttOptions::new(&self.client_id, &self.host, self.port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        self.credentials().apply(&mut options);
        options
    }

    pub async fn run(
        self,
        shutdown: Shutdown,
        heartbeat: Heartbeat,
        check: Option<ReadinessCheck>,
    ) {
        let (client, eventloop) = AsyncClient::new(self.options(), 16);
        let (events, mut incoming) = mpsc::channel(64);
        // The event loop runs on its own, so its poll() is never cancelled
        // half-way by the round-trip timer.
        shutdown.spawn(drive(
            eventloop,
            events,
            shutdown.clone(),
            self.credentials(),
            self.metrics.connection_errors.clone(),
        ));

        let mut subscribed = false;
        let mut was_up = true;
        let mut seq: u64 = 0;
        let mut pending: Option<(u64, Instant)> = None;
        let mut next_publish = Instant::now();
        loop {
            heartbeat.beat();
            let wake = match pending {
                Some((_, sent)) => (sent + self.timeout).min(next_publish),
                None => next_publish,
            }
            .min(Instant::now() + Duration::from_secs(1));
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = client.try_disconnect();
                    return;
                }
                event = incoming.recv() => match event {
                    None => return,
                    Some(Ok(Packet::ConnAck(_))) => {
                        self.metrics.connects.inc();
                        let mut topics = vec![self.topic.clone()];
                        topics.extend(SYS_TOPICS.iter().map(|t| (*t).to_owned()));
                        for topic in topics {
                            let _ = client.try_subscribe(topic, QoS::AtLeastOnce);
                        }
                    }
                    Some(Ok(Packet::SubAck(_))) if !subscribed => {
                        subscribed = true;
                        next_publish = Instant::now();
                    }
                    Some(Ok(Packet::Publish(p))) => {
                        if self.on_publish(&p, &mut pending) {
                            self.set_up(true, "", &mut was_up, check.as_ref());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        subscribed = false;
                        if pending.take().is_some() {
                            self.metrics.failures.inc();
                        }
                        self.set_up(false, &e, &mut was_up, check.as_ref());
                    }
                },
                () = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            if let Some((_, sent)) = pending
                && now >= sent + self.timeout
            {
                pending = None;
                self.metrics.failures.inc();
                let why = format!("no round trip within {:?}", self.timeout);
                self.set_up(false, &why, &mut was_up, check.as_ref());
            }
            if now >= next_publish {
                next_publish = now + self.interval;
                if subscribed && pending.is_none() {
                    seq += 1;
                    match client.try_publish(&self.topic, QoS::AtLeastOnce, false, seq.to_string())
                    {
                        Ok(()) => pending = Some((seq, now)),
                        Err(e) => {
                            self.metrics.failures.inc();
                            self.set_up(
                                false,
                                &format!("cannot publish: {e}"),
                                &mut was_up,
                                check.as_ref(),
                            );
                        }
                    }
                }
            }
        }
    }

    /// Handles a message: our own round trip (true when it completes one)
    /// or a `$SYS` value.
    fn on_publish(&self, p: &rumqttc::Publish, pending: &mut Option<(u64, Instant)>) -> bool {
        let text = std::str::from_utf8(&p.payload).ok();
        if p.topic == self.topic {
            let got = text.and_then(|s| s.parse::<u64>().ok());
            if let (Some(got), Some((want, sent))) = (got, *pending)
                && got == want
            {
                self.metrics
                    .round_trip
                    .observe(sent.elapsed().as_secs_f64());
                *pending = None;
                return true;
            }
        } else if let Some(topic) = SYS_TOPICS.iter().find(|t| **t == p.topic)
            && let Some(value) = text.and_then(|s| s.trim().parse::<f64>().ok())
        {
            self.metrics
                .sys
                .get_or_create(&SysLabels { topic })
                .set(value);
        }
        false
    }

    fn credentials(&self) -> Credentials {
        Credentials {
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }

    fn set_up(&self, up: bool, why: &str, was_up: &mut bool, check: Option<&ReadinessCheck>) {
        self.metrics.up.set(i64::from(up));
        if up && !*was_up {
            info!(broker = %format!("{}:{}", self.host, self.port), "broker round trip ok");
        } else if !up && *was_up {
            warn!(broker = %format!("{}:{}", self.host, self.port), "broker round trip failing: {why}");
        }
        *was_up = up;
        if let Some(check) = check {
            if up {
                check.set_ready();
            } else {
                check.set_not_ready(format!("broker: {why}"));
            }
        }
    }
}

/// What the event loop needs to log in again after a reconnect.
#[derive(Debug)]
struct Credentials {
    username: Option<Username>,
    password: Option<SecretSource>,
}

impl Credentials {
    /// Sets the current username and password; both are re-read each time,
    /// so a rotated Secret is picked up on the next connect. An unreadable
    /// file is logged and the connect goes ahead (and is refused, counted).
    fn apply(&self, options: &mut MqttOptions) {
        let Some(username) = &self.username else {
            return;
        };
        let user = match username.load() {
            Ok(user) => user,
            Err(e) => {
                warn!("broker.username: {e}");
                return;
            }
        };
        let password = match &self.password {
            Some(source) => match source.load() {
                Ok(p) => p.expose_secret().to_owned(),
                Err(e) => {
                    warn!("broker.password: {e}");
                    String::new()
                }
            },
            None => String::new(),
        };
        options.set_credentials(user, password);
    }
}

/// A bounded `reason` label for a failed or ended connection.
fn error_reason(e: &ConnectionError) -> &'static str {
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => "not_authorized",
        ConnectionError::ConnectionRefused(_) => "refused",
        ConnectionError::Io(_) => "io",
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => "timeout",
        ConnectionError::MqttState(_) | ConnectionError::NotConnAck(_) => "protocol",
        _ => "other",
    }
}

/// Polls the MQTT event loop, forwarding incoming packets and errors; after
/// an error it waits a capped backoff (rumqttc reconnects on the next poll).
async fn drive(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Result<Packet, String>>,
    shutdown: Shutdown,
    credentials: Credentials,
    connection_errors: Family<ReasonLabels, Counter>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    // Logged when it changes, so a refused login is loud once, not every retry.
    let mut last_reason = None;
    loop {
        let polled = tokio::select! {
            () = shutdown.cancelled() => return,
            polled = eventloop.poll() => polled,
        };
        let forward = match polled {
            Ok(Event::Incoming(packet)) => {
                if matches!(packet, Packet::ConnAck(_)) {
                    backoff.reset();
                    last_reason = None;
                }
                Ok(packet)
            }
            Ok(Event::Outgoing(_)) => continue,
            Err(e) => {
                let reason = error_reason(&e);
                connection_errors
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
                if last_reason != Some(reason) {
                    if reason == "not_authorized" {
                        error!(
                            "the broker refused the exporter's login ({e}); check broker.username \
                             and broker.password"
                        );
                    } else {
                        warn!("broker connection: {e}");
                    }
                    last_reason = Some(reason);
                }
                Err(e.to_string())
            }
        };
        let failed = forward.is_err();
        if events.send(forward).await.is_err() {
            return;
        }
        if failed {
            credentials.apply(&mut eventloop.mqtt_options);
            if !shutdown.sleep(backoff.next_delay()).await {
                return;
            }
        }
    }
}
