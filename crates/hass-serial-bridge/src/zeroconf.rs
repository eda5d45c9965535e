//! Announcing a served device on the local network (mDNS/DNS-SD), so Home
//! Assistant finds it without anyone typing an address: ZHA discovers
//! `_zigbee-coordinator._tcp` with TXT `radio_type` and `serial_number`;
//! anything else (Z-Wave, an unknown stick) is `_serial-bridge._tcp`.
//! Announced when the device opens, withdrawn with goodbye packets when it
//! goes away or the bridge stops. Only meaningful where multicast reaches
//! the clients (host networking).

use std::net::{IpAddr, SocketAddr};

use hass_runtime::logging::Untrusted;
use mdns_sd::{ServiceDaemon, ServiceInfo, UnregisterStatus};
use serde::Deserialize;
use tracing::{info, warn};

use crate::coordinators;
use crate::sysfs::UsbInfo;

/// The service ZHA browses for.
pub const ZIGBEE_COORDINATOR: &str = "_zigbee-coordinator._tcp.local.";
/// Everything else this bridge serves.
pub const SERIAL_BRIDGE: &str = "_serial-bridge._tcp.local.";
/// How long after its first goodbye the daemon repeats it.
const GOODBYE_REPEAT: std::time::Duration = std::time::Duration::from_millis(200);

/// The radio types ZHA (zigpy) accepts in `radio_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RadioType {
    Ezsp,
    Znp,
    Deconz,
    Zigate,
    Xbee,
}

impl RadioType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ezsp => "ezsp",
            Self::Znp => "znp",
            Self::Deconz => "deconz",
            Self::Zigate => "zigate",
            Self::Xbee => "xbee",
        }
    }
}

/// A device's `zeroconf:` section; present means announce it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZeroconfConfig {
    /// The Zigbee radio's type; absent, guessed from the stick's USB
    /// identity. Without either the device is a `_serial-bridge._tcp`.
    #[serde(default)]
    pub radio_type: Option<RadioType>,
    /// The instance name clients show; default `<device> on <host>`.
    #[serde(default)]
    pub instance: Option<String>,
}

/// What one device says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub service_type: &'static str,
    pub instance: String,
    pub port: u16,
    /// The address clients should use; `None` (listening on all
    /// interfaces): every address of the host.
    pub address: Option<IpAddr>,
    pub txt: Vec<(String, String)>,
}

impl Announcement {
    /// `device`'s announcement; `usb` is the stick's identity when it sits
    /// on USB. A stick without a serial number (or a pty) is named by host
    /// and device, which stays the same across replugs.
    pub fn of(
        device: &str,
        config: &ZeroconfConfig,
        listen: SocketAddr,
        usb: Option<&UsbInfo>,
        host: &str,
    ) -> Self {
        let radio_type = config
            .radio_type
            .or_else(|| usb.and_then(coordinators::radio_type));
        let serial_number = usb
            .and_then(|u| u.serial.clone())
            .unwrap_or_else(|| format!("{host}-{device}"));
        let mut txt = vec![("serial_number".to_owned(), serial_number)];
        if let Some(radio_type) = radio_type {
            txt.push(("radio_type".to_owned(), radio_type.name().to_owned()));
        }
        if let Some(usb) = usb {
            txt.push(("usb".to_owned(), format!("{:04x}:{:04x}", usb.vid, usb.pid)));
        }
        let address = Some(listen.ip()).filter(|ip| !ip.is_unspecified());
        Self {
            service_type: if radio_type.is_some() {
                ZIGBEE_COORDINATOR
            } else {
                SERIAL_BRIDGE
            },
            instance: config
                .instance
                .clone()
                .unwrap_or_else(|| format!("{device} on {host}")),
            port: listen.port(),
            address,
            txt,
        }
    }
}

/// One mDNS responder for every announced device of the process.
pub struct Advertiser {
    daemon: ServiceDaemon,
    host: String,
}

impl std::fmt::Debug for Advertiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertiser")
            .field("host", &self.host)
            .finish()
    }
}

impl Advertiser {
    pub fn start() -> Result<Self, String> {
        let daemon =
            ServiceDaemon::new().map_err(|e| format!("cannot start the mDNS responder: {e}"))?;
        // "zigbee-coordinator" is 18 bytes, over RFC 6763's 15, which the
        // responder enforces by default (silently: nothing goes out).
        daemon
            .set_service_name_len_max(18)
            .map_err(|e| format!("cannot configure the mDNS responder: {e}"))?;
        // The responder reports failures on its own channel, not to the
        // call that queued the work: log them.
        let events = daemon
            .monitor()
            .map_err(|e| format!("cannot watch the mDNS responder: {e}"))?;
        std::thread::Builder::new()
            .name("mdns-events".to_owned())
            .spawn(move || {
                while let Ok(event) = events.recv() {
                    if let mdns_sd::DaemonEvent::Error(e) = event {
                        warn!("mDNS responder: {e}");
                    }
                }
            })
            .map_err(|e| format!("cannot start the mDNS event thread: {e}"))?;
        Ok(Self {
            daemon,
            host: host_name(),
        })
    }

    /// The host's name, as announcements use it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Announces `ad`; returns the name to withdraw it by.
    pub fn announce(&self, ad: &Announcement) -> Option<String> {
        let host = format!("{}.local.", self.host);
        let txt: Vec<(&str, &str)> = ad
            .txt
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let info = match ad.address {
            Some(ip) => {
                ServiceInfo::new(ad.service_type, &ad.instance, &host, ip, ad.port, &txt[..])
            }
            None => ServiceInfo::new(ad.service_type, &ad.instance, &host, (), ad.port, &txt[..])
                .map(ServiceInfo::enable_addr_auto),
        };
        let registered = info.and_then(|info| {
            let fullname = info.get_fullname().to_owned();
            self.daemon.register(info).map(|()| fullname)
        });
        match registered {
            Ok(fullname) => {
                info!(service = %Untrusted(&fullname), port = ad.port, "announcing on mDNS");
                Some(fullname)
            }
            Err(e) => {
                warn!(instance = %Untrusted(&ad.instance), "cannot announce on mDNS: {e}");
                None
            }
        }
    }

    /// Withdraws an announcement (goodbye packets: TTL 0).
    pub fn withdraw(&self, fullname: &str) {
        match self.daemon.unregister(fullname) {
            Ok(done) => {
                // The daemon answers once the first goodbyes are out.
                match done.recv_timeout(std::time::Duration::from_secs(2)) {
                    Ok(UnregisterStatus::OK) => {
                        info!(service = %Untrusted(fullname), "withdrawn from mDNS");
                    }
                    Ok(UnregisterStatus::NotFound) => {
                        warn!(service = %Untrusted(fullname), "not announced on mDNS, nothing to withdraw");
                    }
                    Err(_) => {
                        warn!(service = %Untrusted(fullname), "mDNS withdrawal not confirmed within 2 s")
                    }
                }
            }
            Err(e) => warn!(service = %Untrusted(fullname), "cannot withdraw from mDNS: {e}"),
        }
    }
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        // The daemon sends every goodbye twice, the second 120 ms after the
        // first, for peers that missed the first; shutting it down at once
        // cancels the second. With one goodbye, python-zeroconf (so ZHA) kept
        // a bridge stopped right after its announcement in 3 of 9 runs on a
        // loaded machine; with both, in 0 of 8.
        std::thread::sleep(GOODBYE_REPEAT);
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(std::time::Duration::from_secs(2));
        }
    }
}

/// The kernel's host name (the node's, under host networking), cut to a
/// DNS label.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let label: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if label.is_empty() {
        "hass-serial-bridge".to_owned()
    } else {
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stick(vid: u16, pid: u16, product: &str, serial: Option<&str>) -> UsbInfo {
        UsbInfo {
            vid,
            pid,
            manufacturer: None,
            product: Some(product.to_owned()),
            serial: serial.map(str::to_owned),
            interface: Some(0),
        }
    }

    #[test]
    fn zigbee_sticks_are_coordinators_and_the_rest_serial_bridges() {
        let listen: SocketAddr = "0.0.0.0:6638".parse().unwrap();
        let none = ZeroconfConfig::default();
        let dongle_e = stick(
            0x1a86,
            0x55d4,
            "SONOFF Zigbee 3.0 USB Dongle Plus V2",
            Some("ab12"),
        );
        let ad = Announcement::of("zigbee", &none, listen, Some(&dongle_e), "node1");
        assert_eq!(ad.service_type, ZIGBEE_COORDINATOR);
        assert_eq!(ad.instance, "zigbee on node1");
        assert_eq!((ad.port, ad.address), (6638, None));
        assert_eq!(
            ad.txt,
            [
                ("serial_number", "ab12"),
                ("radio_type", "ezsp"),
                ("usb", "1a86:55d4")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );

        let zwave = stick(0x0658, 0x0200, "", None);
        let ad = Announcement::of(
            "zwave",
            &none,
            "10.0.0.5:6639".parse().unwrap(),
            Some(&zwave),
            "node1",
        );
        assert_eq!(ad.service_type, SERIAL_BRIDGE);
        assert_eq!(ad.address, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(
            ad.txt[0],
            ("serial_number".to_owned(), "node1-zwave".to_owned())
        );

        // Config wins over the guess, and names a stick with no USB identity.
        let configured = ZeroconfConfig {
            radio_type: Some(RadioType::Znp),
            instance: Some("Attic coordinator".to_owned()),
        };
        let ad = Announcement::of("zigbee", &configured, listen, None, "node1");
        assert_eq!(ad.service_type, ZIGBEE_COORDINATOR);
        assert_eq!(ad.instance, "Attic coordinator");
        assert!(
            ad.txt
                .contains(&("radio_type".to_owned(), "znp".to_owned()))
        );
    }
}
