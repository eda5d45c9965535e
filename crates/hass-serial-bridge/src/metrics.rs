//! The bridge's metrics, labelled by device name (bounded by config).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    device: String,
    reason: &'static str,
}

/// Why a client was closed without being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// Another client is served and `second_client: reject`.
    Busy,
    /// The device is unplugged or cannot be opened.
    DeviceAbsent,
}

impl RefusalReason {
    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::DeviceAbsent => "device_absent",
        }
    }
}

/// Every metric family, registered once for all devices.
#[derive(Debug, Clone, Default)]
pub struct BridgeMetrics {
    read_bytes: Family<DeviceLabels, Counter>,
    written_bytes: Family<DeviceLabels, Counter>,
    dropped_bytes: Family<DeviceLabels, Counter>,
    connects: Family<DeviceLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    replacements: Family<DeviceLabels, Counter>,
    client_connected: Family<DeviceLabels, Gauge>,
    device_up: Family<DeviceLabels, Gauge>,
    reopens: Family<DeviceLabels, Counter>,
    pins_skipped: Family<DeviceLabels, Counter>,
    line_changes: Family<DeviceLabels, Counter>,
    protocol_errors: Family<DeviceLabels, Counter>,
    last_byte: Arc<LastByteAges>,
}

impl BridgeMetrics {
    /// Registers every family, with one `last_byte_age_seconds` per device name.
    pub fn register(registry: &mut Registry, device_names: &[String]) -> Self {
        let epoch = Instant::now();
        let metrics = Self {
            last_byte: Arc::new(LastByteAges {
                epoch,
                devices: device_names
                    .iter()
                    .map(|name| (name.clone(), Arc::new(AtomicU64::new(0))))
                    .collect(),
            }),
            ..Self::default()
        };
        registry.register_with_unit(
            "serial_read",
            "Bytes read from the serial device",
            Unit::Bytes,
            metrics.read_bytes.clone(),
        );
        registry.register_with_unit(
            "serial_written",
            "Bytes written to the serial device from the client",
            Unit::Bytes,
            metrics.written_bytes.clone(),
        );
        registry.register_with_unit(
            "serial_dropped",
            "Bytes read from the serial device while no client was connected",
            Unit::Bytes,
            metrics.dropped_bytes.clone(),
        );
        registry.register(
            "client_connects",
            "Clients accepted and served",
            metrics.connects.clone(),
        );
        registry.register(
            "client_refusals",
            "Clients closed unserved: busy (second_client: reject) or device_absent",
            metrics.refusals.clone(),
        );
        registry.register(
            "client_replacements",
            "Clients closed because a newer one replaced them (second_client: replace)",
            metrics.replacements.clone(),
        );
        registry.register(
            "client_connected",
            "1 while a client is being served",
            metrics.client_connected.clone(),
        );
        registry.register(
            "device_up",
            "1 while the serial device is open",
            metrics.device_up.clone(),
        );
        registry.register(
            "device_reopens",
            "Times the device was opened again after being lost",
            metrics.reopens.clone(),
        );
        registry.register(
            "pins_skipped",
            "Opens where dtr, rts and pin_sequence were not applied because the device has no modem-control lines (a pty or network tty)",
            metrics.pins_skipped.clone(),
        );
        registry.register(
            "rfc2217_line_changes",
            "Line settings, DTR/RTS, break or purges an RFC 2217 client asked for and the tty applied",
            metrics.line_changes.clone(),
        );
        registry.register(
            "rfc2217_protocol_errors",
            "Telnet or RFC 2217 input dropped as malformed, oversized or unknown",
            metrics.protocol_errors.clone(),
        );
        registry.register_collector(Box::new(metrics.last_byte.clone()));
        metrics
    }

    /// The handles one device's task updates.
    pub fn device(&self, name: &str) -> DeviceMetrics {
        let labels = DeviceLabels {
            device: name.to_owned(),
        };
        let refusal = |reason| {
            self.refusals
                .get_or_create(&RefusalLabels {
                    device: name.to_owned(),
                    reason: RefusalReason::label(reason),
                })
                .clone()
        };
        let last_byte_ms = self
            .last_byte
            .devices
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ms)| ms.clone())
            .unwrap_or_default();
        DeviceMetrics {
            read_bytes: self.read_bytes.get_or_create(&labels).clone(),
            written_bytes: self.written_bytes.get_or_create(&labels).clone(),
            dropped_bytes: self.dropped_bytes.get_or_create(&labels).clone(),
            connects: self.connects.get_or_create(&labels).clone(),
            refused_busy: refusal(RefusalReason::Busy),
            refused_absent: refusal(RefusalReason::DeviceAbsent),
            replacements: self.replacements.get_or_create(&labels).clone(),
            client_connected: self.client_connected.get_or_create(&labels).clone(),
            device_up: self.device_up.get_or_create(&labels).clone(),
            reopens: self.reopens.get_or_create(&labels).clone(),
            pins_skipped: self.pins_skipped.get_or_create(&labels).clone(),
            line_changes: self.line_changes.get_or_create(&labels).clone(),
            protocol_errors: self.protocol_errors.get_or_create(&labels).clone(),
            epoch: self.last_byte.epoch,
            last_byte_ms,
        }
    }
}

/// One device's metric handles.
#[derive(Debug, Clone)]
pub struct DeviceMetrics {
    pub read_bytes: Counter,
    pub written_bytes: Counter,
    pub dropped_bytes: Counter,
    pub connects: Counter,
    pub replacements: Counter,
    pub client_connected: Gauge,
    pub device_up: Gauge,
    pub reopens: Counter,
    pub pins_skipped: Counter,
    pub line_changes: Counter,
    pub protocol_errors: Counter,
    refused_busy: Counter,
    refused_absent: Counter,
    epoch: Instant,
    last_byte_ms: Arc<AtomicU64>,
}

impl DeviceMetrics {
    pub fn refused(&self, reason: RefusalReason) {
        match reason {
            RefusalReason::Busy => self.refused_busy.inc(),
            RefusalReason::DeviceAbsent => self.refused_absent.inc(),
        };
    }

    /// Notes that a byte crossed the bridge now, either way.
    pub fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_byte_ms.store(ms, Ordering::Relaxed);
    }
}

/// `last_byte_age_seconds{device}`, computed at scrape time. Until the first
/// byte it counts from the start of the process.
#[derive(Debug)]
struct LastByteAges {
    epoch: Instant,
    devices: Vec<(String, Arc<AtomicU64>)>,
}

impl Default for LastByteAges {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            devices: Vec::new(),
        }
    }
}

impl Collector for LastByteAges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "last_byte_age",
            "Seconds since a byte last crossed the bridge, either way",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        let now_ms = self.epoch.elapsed().as_millis() as f64;
        for (name, last_ms) in &self.devices {
            let age = (now_ms - last_ms.load(Ordering::Relaxed) as f64).max(0.0) / 1000.0;
            let labels = DeviceLabels {
                device: name.clone(),
            };
            ConstGauge::new(age).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
