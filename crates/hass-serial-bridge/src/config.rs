//! The YAML config file (`devices:`, `keepalive:`) and its validation into the
//! settings the bridge runs with.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hass_runtime::config::AdminConfig;
use serde::Deserialize;

use crate::usb::UsbMatch;

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// The admin server (`/healthz`, `/readyz`, `/metrics`); `--admin-listen`
    /// wins over it.
    pub admin: AdminConfig,
    pub devices: Vec<DeviceConfig>,
    pub keepalive: KeepaliveConfig,
}

/// One serial device served on one TCP port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Short name used in metrics, readiness (`device:<name>`) and logs.
    pub name: String,
    /// Device path; prefer `/dev/serial/by-id/...`, which survives replugging.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Or: the USB device to look for in sysfs.
    #[serde(default, rename = "match")]
    pub usb_match: Option<UsbMatchConfig>,
    /// TCP address clients connect to, e.g. `0.0.0.0:6638`.
    pub listen: SocketAddr,
    /// A second port, on `listen`'s address, speaking RFC 2217 (Telnet
    /// COM-PORT-OPTION): clients set the line and DTR/RTS themselves. Off
    /// unless set; the one-client rule spans both ports.
    #[serde(default)]
    pub rfc2217_port: Option<u16>,
    #[serde(default)]
    pub second_client: SecondClient,
    // Line settings; absent ones take `SerialSettings::default()`. Listed
    // here rather than flattened because serde cannot deny unknown keys
    // through `flatten`.
    #[serde(default)]
    pub baud: Option<u32>,
    #[serde(default)]
    pub data_bits: Option<u8>,
    #[serde(default)]
    pub parity: Option<Parity>,
    #[serde(default)]
    pub stop_bits: Option<u8>,
    #[serde(default)]
    pub flow_control: Option<FlowControl>,
    /// DTR level right after open; absent leaves the line as the driver set it.
    #[serde(default)]
    pub dtr: Option<bool>,
    /// RTS level right after open; absent leaves the line as the driver set it.
    #[serde(default)]
    pub rts: Option<bool>,
    /// Pin steps run after `dtr`/`rts`, e.g. to keep a stick out of its bootloader.
    #[serde(default)]
    pub pin_sequence: Vec<PinStep>,
    /// Announce the device on mDNS while it is open (`zeroconf: {}`, or
    /// with `radio_type` / `instance`); needs multicast to reach the
    /// clients, i.e. host networking.
    #[serde(default)]
    pub zeroconf: Option<crate::zeroconf::ZeroconfConfig>,
}

impl DeviceConfig {
    fn serial_settings(&self) -> SerialSettings {
        let default = SerialSettings::default();
        SerialSettings {
            baud: self.baud.unwrap_or(default.baud),
            data_bits: self.data_bits.unwrap_or(default.data_bits),
            parity: self.parity.unwrap_or(default.parity),
            stop_bits: self.stop_bits.unwrap_or(default.stop_bits),
            flow_control: self.flow_control.unwrap_or(default.flow_control),
            dtr: self.dtr,
            rts: self.rts,
            pin_sequence: self.pin_sequence.clone(),
        }
    }
}

/// `match: { usb: "10c4:ea60", serial: "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsbMatchConfig {
    /// `VID:PID` in hex, as `lsusb` prints it.
    pub usb: String,
    /// The USB serial number (`iSerial`), to tell two identical sticks apart.
    #[serde(default)]
    pub serial: Option<String>,
}

/// Line settings applied on every open, since TCP clients cannot set them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub flow_control: FlowControl,
    /// DTR level right after open; absent leaves the line as the driver set it.
    pub dtr: Option<bool>,
    /// RTS level right after open; absent leaves the line as the driver set it.
    pub rts: Option<bool>,
    /// Pin steps run after `dtr`/`rts`, e.g. to keep a stick out of its bootloader.
    pub pin_sequence: Vec<PinStep>,
}

impl Default for SerialSettings {
    fn default() -> Self {
        Self {
            // What Sonoff ZBDongle-P/-E, ConBee II and Z-Wave 700/800 sticks use.
            baud: 115_200,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
            dtr: None,
            rts: None,
            pin_sequence: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowControl {
    None,
    RtsCts,
    XonXoff,
}

/// One step of a pin sequence: set the named lines, then wait.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinStep {
    #[serde(default)]
    pub dtr: Option<bool>,
    #[serde(default)]
    pub rts: Option<bool>,
    #[serde(
        default,
        deserialize_with = "hass_runtime::config::duration::deserialize"
    )]
    pub wait: Duration,
}

/// What happens when a client connects while another is being served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondClient {
    /// The newcomer is closed without a byte written.
    Reject,
    /// The current client is closed, then the newcomer is served: a
    /// reconnecting Zigbee2MQTT must win over its own dead session.
    #[default]
    Replace,
}

/// How fast a vanished client is noticed (it holds the stick until then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    /// Silence before the first keepalive probe.
    #[serde(deserialize_with = "hass_runtime::config::duration::deserialize")]
    pub idle: Duration,
    /// Time between unanswered probes.
    #[serde(deserialize_with = "hass_runtime::config::duration::deserialize")]
    pub interval: Duration,
    /// Unanswered probes before the client is dropped.
    pub count: u32,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged.
    #[serde(deserialize_with = "hass_runtime::config::duration::deserialize")]
    pub user_timeout: Duration,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        // 10 s + 3 × 5 s = 25 s, inside the 30 s promised for dead clients.
        Self {
            idle: Duration::from_secs(10),
            interval: Duration::from_secs(5),
            count: 3,
            user_timeout: Duration::from_secs(25),
        }
    }
}

/// Where a device is found: a fixed path, or whatever tty a USB match names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSource {
    Path(PathBuf),
    Usb(UsbMatch),
}

/// A device's settings after validation.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub name: String,
    pub source: DeviceSource,
    pub listen: SocketAddr,
    /// `listen`'s address with `rfc2217_port`.
    pub rfc2217_listen: Option<SocketAddr>,
    pub serial: SerialSettings,
    pub second_client: SecondClient,
    pub zeroconf: Option<crate::zeroconf::ZeroconfConfig>,
}

/// Checks what serde cannot: one source per device, unique names and ports,
/// values the serial driver accepts. Errors name the key, e.g.
/// `devices[1].listen: ...`.
pub fn validate(config: BridgeConfig) -> Result<(Vec<DeviceSpec>, KeepaliveConfig), String> {
    let mut names = HashSet::new();
    let mut listens = HashSet::new();
    let mut specs = Vec::with_capacity(config.devices.len());
    for (i, device) in config.devices.into_iter().enumerate() {
        let key = format!("devices[{i}]");
        if device.name.is_empty()
            || !device
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "{key}.name: `{}` must be non-empty letters, digits, `-` or `_` (it is a metric label)",
                device.name
            ));
        }
        if !names.insert(device.name.clone()) {
            return Err(format!(
                "{key}.name: `{}` is used by another device",
                device.name
            ));
        }
        if !listens.insert(device.listen) {
            return Err(format!(
                "{key}.listen: {} is used by another device",
                device.listen
            ));
        }
        let rfc2217_listen = device
            .rfc2217_port
            .map(|port| SocketAddr::new(device.listen.ip(), port));
        if let Some(addr) = rfc2217_listen
            && (addr.port() == 0 || !listens.insert(addr))
        {
            return Err(format!(
                "{key}.rfc2217_port: {} is `listen`'s port, another device's, or zero",
                addr.port()
            ));
        }
        let serial = device.serial_settings();
        let source = match (device.path, device.usb_match) {
            (Some(path), None) => DeviceSource::Path(path),
            (None, Some(m)) => DeviceSource::Usb(
                UsbMatch::parse(&m.usb, m.serial).map_err(|e| format!("{key}.match.usb: {e}"))?,
            ),
            (Some(_), Some(_)) => {
                return Err(format!("{key}: set either `path` or `match`, not both"));
            }
            (None, None) => {
                return Err(format!(
                    "{key}: missing `path` (e.g. /dev/serial/by-id/...) or `match` (e.g. usb: \"10c4:ea60\")"
                ));
            }
        };
        validate_serial(&serial).map_err(|e| format!("{key}.{e}"))?;
        specs.push(DeviceSpec {
            name: device.name,
            source,
            listen: device.listen,
            rfc2217_listen,
            serial,
            second_client: device.second_client,
            zeroconf: device.zeroconf,
        });
    }
    let k = config.keepalive;
    if k.idle.is_zero() || k.interval.is_zero() || k.count == 0 {
        return Err("keepalive: idle, interval and count must be above zero".to_owned());
    }
    Ok((specs, k))
}

fn validate_serial(serial: &SerialSettings) -> Result<(), String> {
    if serial.baud == 0 {
        return Err("baud: must be above zero".to_owned());
    }
    if !(5..=8).contains(&serial.data_bits) {
        return Err(format!(
            "data_bits: {} is not one of 5, 6, 7, 8",
            serial.data_bits
        ));
    }
    if !(1..=2).contains(&serial.stop_bits) {
        return Err(format!(
            "stop_bits: {} is not one of 1, 2",
            serial.stop_bits
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hass_runtime::config::parse_yaml;

    fn parse(text: &str) -> Result<(Vec<DeviceSpec>, KeepaliveConfig), String> {
        let config: BridgeConfig = parse_yaml(text).map_err(|e| e.to_string())?;
        validate(config)
    }

    #[test]
    fn a_minimal_device_gets_the_defaults_sticks_use() {
        let (devices, keepalive) =
            parse("devices:\n  - name: zigbee\n    path: /dev/ttyUSB0\n    listen: 0.0.0.0:6638\n")
                .unwrap();
        assert_eq!(devices.len(), 1);
        let d = &devices[0];
        assert_eq!(d.source, DeviceSource::Path("/dev/ttyUSB0".into()));
        assert_eq!(d.serial, SerialSettings::default());
        assert_eq!(d.second_client, SecondClient::Replace);
        assert!(
            keepalive.idle + keepalive.interval * keepalive.count <= Duration::from_secs(30),
            "dead clients must be found within 30 s by default"
        );
        assert!(keepalive.user_timeout <= Duration::from_secs(30));
    }

    #[test]
    fn every_setting_is_read() {
        let (devices, keepalive) = parse(
            "devices:
  - name: zwave
    match: { usb: \"0658:0200\", serial: \"A1\" }
    listen: 127.0.0.1:7000
    baud: 9600
    data_bits: 7
    parity: even
    stop_bits: 2
    flow_control: rts_cts
    dtr: false
    rts: true
    pin_sequence:
      - { dtr: true, wait: 100ms }
      - { rts: false }
    second_client: reject
    rfc2217_port: 7001
keepalive: { idle: 2s, interval: 1s, count: 4, user_timeout: 6s }
",
        )
        .unwrap();
        let d = &devices[0];
        assert_eq!(
            d.source,
            DeviceSource::Usb(UsbMatch::parse("0658:0200", Some("A1".into())).unwrap())
        );
        assert_eq!(d.serial.baud, 9600);
        assert_eq!(d.serial.data_bits, 7);
        assert_eq!(d.serial.parity, Parity::Even);
        assert_eq!(d.serial.stop_bits, 2);
        assert_eq!(d.serial.flow_control, FlowControl::RtsCts);
        assert_eq!(d.serial.dtr, Some(false));
        assert_eq!(d.serial.rts, Some(true));
        assert_eq!(
            d.serial.pin_sequence,
            vec![
                PinStep {
                    dtr: Some(true),
                    rts: None,
                    wait: Duration::from_millis(100)
                },
                PinStep {
                    dtr: None,
                    rts: Some(false),
                    wait: Duration::ZERO
                },
            ]
        );
        assert_eq!(d.second_client, SecondClient::Reject);
        assert_eq!(d.rfc2217_listen, Some("127.0.0.1:7001".parse().unwrap()));
        assert_eq!(keepalive.count, 4);
        assert_eq!(keepalive.user_timeout, Duration::from_secs(6));
    }

    #[test]
    fn mistakes_name_the_key() {
        let device = |extra: &str| {
            format!(
                "devices:\n  - name: zigbee\n    path: /dev/x\n    listen: 0.0.0.0:6638\n{extra}"
            )
        };
        let cases = [
            (device("    baudrate: 9600\n"), "unknown field `baudrate`"),
            (device("    parity: mark\n"), "parity"),
            (device("    data_bits: 9\n"), "devices[0].data_bits: 9"),
            (device("    stop_bits: 3\n"), "devices[0].stop_bits: 3"),
            (
                device("    match: { usb: \"10c4:ea60\" }\n"),
                "devices[0]: set either `path` or `match`",
            ),
            (
                device("  - name: zigbee\n    path: /dev/y\n    listen: 0.0.0.0:6639\n"),
                "devices[1].name: `zigbee` is used",
            ),
            (
                device("  - name: zwave\n    path: /dev/y\n    listen: 0.0.0.0:6638\n"),
                "devices[1].listen: 0.0.0.0:6638 is used",
            ),
            (
                device("    rfc2217_port: 6638\n"),
                "devices[0].rfc2217_port: 6638 is",
            ),
            (
                device(
                    "  - name: zwave\n    path: /dev/y\n    listen: 0.0.0.0:6640\n    rfc2217_port: 6638\n",
                ),
                "devices[1].rfc2217_port: 6638 is",
            ),
            (
                "devices:\n  - name: z\n    listen: 0.0.0.0:1\n".to_owned(),
                "devices[0]: missing `path`",
            ),
            (
                "devices:\n  - name: z\n    match: { usb: \"10c4\" }\n    listen: 0.0.0.0:1\n"
                    .to_owned(),
                "devices[0].match.usb",
            ),
            (
                "keepalive: { idle: soon }\n".to_owned(),
                "\"soon\" is not a duration like \"10s\"",
            ),
            ("keepalive: { count: 0 }\n".to_owned(), "keepalive"),
        ];
        for (text, expected) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(expected), "{text}\n=> {e}\nexpected: {expected}");
        }
    }
}
