//! The suite's port numbers, defined once (the table in docs/design.md):
//! every binary's defaults, hass-suite's and hass-manifests' renders take
//! them from here.

/// hass-suite's own admin server.
pub const SUITE_ADMIN: u16 = 9180;
pub const BROKER_ADMIN: u16 = 9181;
pub const BRIDGE_ADMIN: u16 = 9182;
pub const WATCHER_ADMIN: u16 = 9183;
pub const EXPORTER_ADMIN: u16 = 9184;
/// hass-git-mirror, beside the config watcher in Home Assistant's pod.
pub const GIT_MIRROR_ADMIN: u16 = 9185;
/// MQTT over TCP.
pub const MQTT: u16 = 1883;
/// MQTT over WebSocket.
pub const MQTT_WS: u16 = 1884;
/// A serial bridge's first device (Zigbee2MQTT's and ZHA's custom port).
pub const SERIAL_DEVICE: u16 = 6638;
/// Home Assistant's HTTP server.
pub const HOME_ASSISTANT: u16 = 8123;
/// PostgreSQL, the recorder's database.
pub const POSTGRES: u16 = 5432;
