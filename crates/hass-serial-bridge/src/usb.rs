//! Matching a configured USB `VID:PID` (and serial number) against what
//! sysfs reports, so a device is found whatever tty name it got this time.

use std::fmt;

use hass_runtime::logging::Untrusted;

use crate::sysfs::{SerialPortInfo, UsbInfo};

/// `usb: "10c4:ea60"` plus an optional serial number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbMatch {
    pub vid: u16,
    pub pid: u16,
    pub serial: Option<String>,
}

impl UsbMatch {
    /// Parses `VID:PID` in hex, as `lsusb` prints it.
    pub fn parse(vid_pid: &str, serial: Option<String>) -> Result<Self, String> {
        let (vid, pid) = parse_vid_pid(vid_pid)
            .ok_or_else(|| format!("`{vid_pid}` is not VID:PID in hex, e.g. \"10c4:ea60\""))?;
        Ok(Self { vid, pid, serial })
    }

    pub fn matches(&self, usb: &UsbInfo) -> bool {
        usb.vid == self.vid
            && usb.pid == self.pid
            && self
                .serial
                .as_ref()
                .is_none_or(|s| usb.serial.as_deref() == Some(s.as_str()))
    }

    /// The one port that matches, or why there is none to open.
    pub fn find<'a>(&self, ports: &'a [SerialPortInfo]) -> Result<&'a SerialPortInfo, String> {
        let found: Vec<_> = ports
            .iter()
            .filter(|p| p.usb.as_ref().is_some_and(|u| self.matches(u)))
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("no serial device matches USB {self}")),
            // Many sticks share a VID:PID (10c4:ea60 is every CP210x): name
            // what tells them apart instead of picking one.
            many => Err(format!(
                "{} serial devices match USB {self}: {}; add `serial:` to pick one",
                many.len(),
                many.iter()
                    .map(|p| describe(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

impl fmt::Display for UsbMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vid, self.pid)?;
        if let Some(serial) = &self.serial {
            write!(f, " serial {serial}")?;
        }
        Ok(())
    }
}

/// `/dev/ttyUSB0 (serial "A1", /dev/serial/by-id/usb-...)`; the serial
/// number is the device's own word (and udev names links after it), escaped.
fn describe(port: &SerialPortInfo) -> String {
    let serial = port.usb.as_ref().and_then(|u| u.serial.as_deref());
    let mut text = format!("{} (serial ", port.dev_path.display());
    match serial {
        Some(serial) => text.push_str(&format!("\"{}\"", Untrusted(serial))),
        None => text.push_str("none"),
    }
    for link in &port.by_id {
        text.push_str(&format!(", {}", Untrusted(&link.display().to_string())));
    }
    text.push(')');
    text
}

fn parse_vid_pid(text: &str) -> Option<(u16, u16)> {
    let (vid, pid) = text.trim().split_once(':')?;
    let hex = |s: &str| {
        (s.len() == 4)
            .then(|| u16::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some((hex(vid)?, hex(pid)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(tty: &str, serial: &str) -> SerialPortInfo {
        SerialPortInfo {
            tty: tty.to_owned(),
            dev_path: format!("/dev/{tty}").into(),
            by_id: vec![format!("/dev/serial/by-id/usb-{serial}-port0").into()],
            driver: Some("cp210x".to_owned()),
            usb: Some(UsbInfo {
                vid: 0x10c4,
                pid: 0xea60,
                manufacturer: None,
                product: None,
                serial: Some(serial.to_owned()),
                interface: Some(0),
            }),
        }
    }

    #[test]
    fn two_identical_sticks_need_a_serial_number() {
        let ports = [port("ttyUSB0", "A"), port("ttyUSB1", "B")];
        let any = UsbMatch::parse("10c4:ea60", None).unwrap();
        let e = any.find(&ports).unwrap_err();
        assert_eq!(
            e,
            "2 serial devices match USB 10c4:ea60: /dev/ttyUSB0 (serial \"A\", \
             /dev/serial/by-id/usb-A-port0), /dev/ttyUSB1 (serial \"B\", \
             /dev/serial/by-id/usb-B-port0); add `serial:` to pick one"
        );
        let b = UsbMatch::parse("10c4:ea60", Some("B".into())).unwrap();
        assert_eq!(b.find(&ports).unwrap().tty, "ttyUSB1");
        // A serial number is the device's word: escaped in the error.
        let evil = [port("ttyUSB0", "A"), port("ttyUSB1", "B\u{1b}[2J")];
        let e = any.find(&evil).unwrap_err();
        assert!(
            !e.contains('\u{1b}') && e.contains(r#"serial "B\u{1b}[2J""#),
            "{e}"
        );
        let c = UsbMatch::parse("10c4:ea60", Some("C".into())).unwrap();
        assert_eq!(
            c.find(&ports).unwrap_err(),
            "no serial device matches USB 10c4:ea60 serial C"
        );
    }

    #[test]
    fn vid_pid_is_four_hex_digits_each() {
        let m = UsbMatch::parse("10C4:ea60", None).unwrap();
        assert_eq!((m.vid, m.pid), (0x10c4, 0xea60));
        for bad in ["10c4", "10c4:", "10c4:ea6", "xyzw:ea60", "10c4:ea60:1", ""] {
            assert!(UsbMatch::parse(bad, None).is_err(), "{bad}");
        }
    }
}
