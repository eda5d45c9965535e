//! Serial bridges, seen through their admin `/readyz`: one `ok device:<name>`
//! or `FAIL device:<name>: <reason>` line per device (the shared readiness
//! text). The device's own TCP port is never opened: a serial stick serves
//! one client, and a probe would steal it from Zigbee2MQTT or ZHA.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hass_runtime::liveness::Heartbeat;
use hass_runtime::readiness::ReadinessCheck;
use hass_runtime::shutdown::Shutdown;
use hyper::Uri;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::warn;

use crate::config::BridgeConfig;
use crate::pause::pause;
use hass_runtime::http_client::{self as http, HttpClient, HttpRequest};

/// Devices beyond this many per bridge are not exported (bounded labels).
const MAX_DEVICES: usize = 32;
const MAX_BODY: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BridgeLabels {
    bridge: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeviceLabels {
    bridge: String,
    device: String,
}

/// The metric families every bridge probe writes into.
#[derive(Debug, Clone, Default)]
pub struct BridgeMetrics {
    up: Family<BridgeLabels, Gauge>,
    device_up: Family<DeviceLabels, Gauge>,
}

impl BridgeMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "bridge_up",
            "Whether the serial bridge's admin /readyz answered",
            self.up.clone(),
        );
        r.register(
            "bridge_device_up",
            "Whether the bridge reports the device ready (its /readyz device:<name> check)",
            self.device_up.clone(),
        );
    }
}

/// One configured bridge.
#[derive(Debug)]
pub struct BridgeProbe {
    name: String,
    readyz: Uri,
    interval: Duration,
    timeout: Duration,
}

impl BridgeProbe {
    pub fn new(cfg: &BridgeConfig, index: usize) -> Result<Self, String> {
        if cfg.name.is_empty() {
            return Err(format!("bridges[{index}].name is empty"));
        }
        let readyz =
            http::join(&cfg.url, "/readyz").map_err(|e| format!("bridges[{index}].url: {e}"))?;
        Ok(Self {
            name: cfg.name.clone(),
            readyz,
            interval: cfg.interval,
            timeout: cfg.timeout,
        })
    }

    /// One `/readyz` request between heartbeats.
    pub fn longest_wait(&self) -> Duration {
        self.timeout
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn run(
        self,
        client: HttpClient,
        metrics: BridgeMetrics,
        shutdown: Shutdown,
        heartbeat: Heartbeat,
        check: Option<ReadinessCheck>,
    ) {
        let bridge = BridgeLabels {
            bridge: self.name.clone(),
        };
        let mut known: BTreeSet<String> = BTreeSet::new();
        let mut was_up = true;
        loop {
            heartbeat.beat();
            let request = HttpRequest::get(self.readyz.clone());
            let devices = match client.send(request, self.timeout, MAX_BODY).await {
                // 503 is an answer too: the body says which device failed.
                Ok(reply) => Ok(parse_devices(&String::from_utf8_lossy(&reply.body))),
                Err(e) => Err(e.to_string()),
            };
            match devices {
                Ok(devices) => {
                    was_up = true;
                    metrics.up.get_or_create(&bridge).set(1);
                    for gone in known.iter().filter(|d| !devices.contains_key(*d)) {
                        metrics.device_up.remove(&self.device(gone));
                    }
                    known.clear();
                    for (device, up) in devices.iter().take(MAX_DEVICES) {
                        metrics
                            .device_up
                            .get_or_create(&self.device(device))
                            .set(i64::from(*up));
                        known.insert(device.clone());
                    }
                    if let Some(check) = &check {
                        match devices.iter().find(|(_, up)| !**up) {
                            Some((device, _)) => {
                                check.set_not_ready(format!("device {device} not ready"))
                            }
                            None => check.set_ready(),
                        }
                    }
                }
                Err(e) => {
                    if was_up {
                        warn!(bridge = %self.name, "serial bridge /readyz: {e}");
                        was_up = false;
                    }
                    metrics.up.get_or_create(&bridge).set(0);
                    // Unknown, not down: the stick may be fine behind a dead admin port.
                    for device in std::mem::take(&mut known) {
                        metrics.device_up.remove(&self.device(&device));
                    }
                    if let Some(check) = &check {
                        check.set_not_ready(format!("bridge {}: {e}", self.name));
                    }
                }
            }
            if !pause(self.interval, &shutdown, &heartbeat).await {
                return;
            }
        }
    }

    fn device(&self, device: &str) -> DeviceLabels {
        DeviceLabels {
            bridge: self.name.clone(),
            device: device.to_owned(),
        }
    }
}

/// `device:<name>` checks in a readiness body, ready or not.
pub fn parse_devices(body: &str) -> BTreeMap<String, bool> {
    let mut devices = BTreeMap::new();
    for line in body.lines() {
        if let Some(name) = line.strip_prefix("ok device:") {
            devices.insert(name.trim().to_owned(), true);
        } else if let Some(rest) = line.strip_prefix("FAIL device:") {
            let name = rest.split_once(':').map_or(rest, |(name, _)| name);
            devices.insert(name.trim().to_owned(), false);
        }
    }
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shared_readiness_text() {
        let body = "not ready\nok device:zigbee\nFAIL device:zwave: /dev/ttyACM0 unplugged\nok listener\nFAIL device:spare\n";
        let devices = parse_devices(body);
        assert_eq!(devices.len(), 3);
        assert!(devices["zigbee"]);
        assert!(!devices["zwave"]);
        assert!(!devices["spare"]);
    }
}
