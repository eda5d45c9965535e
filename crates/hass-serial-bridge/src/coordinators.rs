//! Best guesses at which Zigbee or Z-Wave coordinator a USB serial device is,
//! from its VID:PID and product string. Several sticks share a USB bridge
//! chip (10c4:ea60 is every CP210x), so the product string decides when it can.

use crate::sysfs::UsbInfo;
use crate::zeroconf::RadioType;

/// A human-readable guess, or `None` for an unknown device.
pub fn guess(usb: &UsbInfo) -> Option<&'static str> {
    identify(usb).map(|(description, _)| description)
}

/// The zigpy radio type of a Zigbee coordinator, when the USB identity
/// tells it (for the mDNS announcement ZHA reads); `None` for Z-Wave sticks
/// and anything unsure.
pub fn radio_type(usb: &UsbInfo) -> Option<RadioType> {
    identify(usb).and_then(|(_, radio)| radio)
}

/// One table for both: what the stick is, and its radio type when sure.
fn identify(usb: &UsbInfo) -> Option<(&'static str, Option<RadioType>)> {
    use RadioType::{Deconz, Ezsp, Znp};
    let product = usb
        .product
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let maker = usb
        .manufacturer
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let found = match (usb.vid, usb.pid) {
        (0x10c4, 0xea60) if product.contains("skyconnect") => (
            "Home Assistant SkyConnect (Zigbee/Thread, EFR32MG21)",
            Some(Ezsp),
        ),
        (0x10c4, 0xea60) if product.contains("zbt-1") => (
            "Home Assistant Connect ZBT-1 (Zigbee/Thread, EFR32MG21)",
            Some(Ezsp),
        ),
        (0x10c4, 0xea60) if product.contains("sonoff") && product.contains("plus") => {
            ("Sonoff ZBDongle-P (Zigbee, CC2652P, Z-Stack)", Some(Znp))
        }
        (0x10c4, 0xea60) if maker.contains("smlight") => {
            ("SMLIGHT SLZB USB coordinator (Zigbee)", None)
        }
        (0x10c4, 0xea60) => (
            "CP210x USB-UART: maybe Sonoff ZBDongle-P or Home Assistant SkyConnect (check product)",
            None,
        ),
        (0x10c4, 0x8a2a) => ("Nortek HUSBZB-1 (Zigbee + Z-Wave combo)", Some(Ezsp)),
        (0x1a86, 0x55d4) => (
            "Sonoff ZBDongle-E (Zigbee, EFR32MG21, EmberZNet) on a CH9102",
            Some(Ezsp),
        ),
        (0x0658, 0x0200) => (
            "Z-Wave controller (Aeotec Z-Stick, Z-Wave.Me UZB: Sigma Designs / Silicon Labs)",
            None,
        ),
        (0x1cf1, 0x0030) => (
            "dresden elektronik ConBee II (Zigbee, deCONZ)",
            Some(Deconz),
        ),
        (0x0451, 0x16a8) => ("Texas Instruments CC2531 (Zigbee, Z-Stack)", Some(Znp)),
        (0x0451, 0x16c8) => ("Texas Instruments CC2538 (Zigbee, Z-Stack)", Some(Znp)),
        (0x0403, 0x6015) => (
            "FTDI FT-X USB-UART: maybe ConBee (I or III) or ZiGate+ (check product)",
            None,
        ),
        _ => return None,
    };
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usb(vid: u16, pid: u16, manufacturer: &str, product: &str) -> UsbInfo {
        UsbInfo {
            vid,
            pid,
            manufacturer: Some(manufacturer.to_owned()),
            product: Some(product.to_owned()),
            serial: None,
            interface: Some(0),
        }
    }

    #[test]
    fn well_known_sticks_are_named() {
        let cases = [
            (
                usb(0x10c4, 0xea60, "ITead", "Sonoff Zigbee 3.0 USB Dongle Plus"),
                "ZBDongle-P",
            ),
            (
                usb(0x10c4, 0xea60, "Nabu Casa", "SkyConnect v1.0"),
                "SkyConnect",
            ),
            (
                usb(
                    0x10c4,
                    0xea60,
                    "Silicon Labs",
                    "CP2102N USB to UART Bridge Controller",
                ),
                "CP210x",
            ),
            (
                usb(
                    0x1a86,
                    0x55d4,
                    "ITEAD",
                    "SONOFF Zigbee 3.0 USB Dongle Plus V2",
                ),
                "ZBDongle-E",
            ),
            (usb(0x0658, 0x0200, "", ""), "Z-Wave"),
            (
                usb(
                    0x1cf1,
                    0x0030,
                    "dresden elektronik ingenieurtechnik GmbH",
                    "ConBee II",
                ),
                "ConBee II",
            ),
        ];
        for (usb, expected) in cases {
            let guess = guess(&usb).unwrap_or("none");
            assert!(guess.contains(expected), "{usb:?} => {guess}");
        }
        assert_eq!(guess(&usb(0x1234, 0x5678, "Acme", "Modem")), None);
    }
}
