//! `hass-serial-bridge list` and `match:` devices on a fake sysfs tree: what
//! the kernel and udev publish is read into what a config needs.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;

use common::fake_sysfs::{FakeUsbPort, add_8250, add_usb_port, add_virtual_tty, roots};
use common::{BIN, PtyPair, read_exactly};
use hass_serial_bridge::list::render;
use hass_serial_bridge::sysfs::{UsbInfo, scan};

const SONOFF_E: FakeUsbPort<'static> = FakeUsbPort {
    tty: "ttyUSB0",
    bus_path: "1-2",
    vid: "1a86",
    pid: "55d4",
    manufacturer: Some("ITEAD"),
    product: Some("SONOFF Zigbee 3.0 USB Dongle Plus V2"),
    serial: Some("20240122184111"),
    driver: "ch341-uart",
    by_id: Some("usb-ITEAD_SONOFF_Zigbee_3.0_USB_Dongle_Plus_V2_20240122184111-if00"),
};

const AEOTEC: FakeUsbPort<'static> = FakeUsbPort {
    tty: "ttyACM0",
    bus_path: "1-3",
    vid: "0658",
    pid: "0200",
    manufacturer: None,
    product: None,
    serial: None,
    driver: "cdc_acm",
    by_id: None,
};

#[test]
fn scan_reads_serial_ports_and_skips_virtual_and_empty_ones() {
    let dir = tempfile::tempdir().unwrap();
    add_usb_port(dir.path(), &SONOFF_E);
    add_usb_port(dir.path(), &AEOTEC);
    add_virtual_tty(dir.path(), "tty1");
    add_8250(dir.path(), "ttyS0", 4);
    add_8250(dir.path(), "ttyS1", 0);
    let roots = roots(dir.path());

    let ports = scan(&roots);
    assert_eq!(
        ports.iter().map(|p| p.tty.as_str()).collect::<Vec<_>>(),
        ["ttyACM0", "ttyS0", "ttyUSB0"],
        "ttyS1 has no UART behind it"
    );
    assert_eq!(ports[1].usb, None);
    assert_eq!(ports[1].driver.as_deref(), Some("port"));
    let sonoff = &ports[2];
    assert_eq!(sonoff.dev_path, roots.dev.join("ttyUSB0"));
    assert_eq!(
        sonoff.by_id,
        [roots.dev.join(
            "serial/by-id/usb-ITEAD_SONOFF_Zigbee_3.0_USB_Dongle_Plus_V2_20240122184111-if00"
        )]
    );
    assert_eq!(sonoff.driver.as_deref(), Some("ch341-uart"));
    assert_eq!(
        sonoff.usb,
        Some(UsbInfo {
            vid: 0x1a86,
            pid: 0x55d4,
            manufacturer: Some("ITEAD".into()),
            product: Some("SONOFF Zigbee 3.0 USB Dongle Plus V2".into()),
            serial: Some("20240122184111".into()),
            interface: Some(0),
        })
    );
    let zwave = ports[0].usb.as_ref().unwrap();
    assert_eq!(
        (zwave.vid, zwave.pid, zwave.product.as_deref()),
        (0x0658, 0x0200, None)
    );
    assert!(ports[0].by_id.is_empty());
}

#[test]
fn a_missing_sysfs_lists_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert!(scan(&roots(dir.path())).is_empty());
    assert!(render(&[]).starts_with("no serial devices found"));
}

#[test]
fn the_list_command_prints_what_a_config_needs() {
    let dir = tempfile::tempdir().unwrap();
    add_usb_port(dir.path(), &SONOFF_E);
    add_usb_port(dir.path(), &AEOTEC);
    let roots = roots(dir.path());
    let output = Command::new(BIN)
        .arg("list")
        .arg("--sysfs-root")
        .arg(&roots.sys)
        .arg("--dev-root")
        .arg(&roots.dev)
        .output()
        .unwrap();
    assert!(output.status.success());
    let dev = roots.dev.display();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "{dev}/ttyACM0
  driver:       cdc_acm
  usb:          0658:0200
  looks like:   Z-Wave controller (Aeotec Z-Stick, Z-Wave.Me UZB: Sigma Designs / Silicon Labs)
{dev}/ttyUSB0
  by-id:        {dev}/serial/by-id/usb-ITEAD_SONOFF_Zigbee_3.0_USB_Dongle_Plus_V2_20240122184111-if00
  driver:       ch341-uart
  usb:          1a86:55d4
  manufacturer: ITEAD
  product:      SONOFF Zigbee 3.0 USB Dongle Plus V2
  serial:       20240122184111
  looks like:   Sonoff ZBDongle-E (Zigbee, EFR32MG21, EmberZNet) on a CH9102
"
        )
    );
}

#[test]
fn a_device_matched_by_vid_pid_and_serial_is_served() {
    let stick = PtyPair::new();
    let dir = tempfile::tempdir().unwrap();
    add_usb_port(dir.path(), &SONOFF_E);
    // Another stick of the same model: the serial number tells them apart.
    add_usb_port(
        dir.path(),
        &FakeUsbPort {
            tty: "ttyUSB1",
            bus_path: "1-4",
            serial: Some("20240122999999"),
            by_id: None,
            ..SONOFF_E
        },
    );
    let roots = roots(dir.path());
    // The kernel's node for the matched tty is the test's pty.
    std::os::unix::fs::symlink(stick.device(), roots.dev.join("ttyUSB0")).unwrap();
    let listen = hass_test_support::free_addr();
    let yaml = format!(
        "devices:\n  - name: zigbee\n    match: {{ usb: \"1a86:55d4\", serial: \"20240122184111\" }}\n    listen: {listen}\n"
    );
    let dir_cfg = tempfile::tempdir().unwrap();
    let config = dir_cfg.path().join("bridge.yaml");
    std::fs::write(&config, yaml).unwrap();
    let admin = hass_test_support::free_addr();
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(&config)
        .arg("--admin-listen")
        .arg(admin.to_string())
        .arg("--sysfs-root")
        .arg(&roots.sys)
        .arg("--dev-root")
        .arg(&roots.dev);
    let mut bridge = hass_test_support::SpawnedBinary::spawn(command).unwrap();
    bridge
        .wait_ready(admin, std::time::Duration::from_secs(10))
        .unwrap();
    let mut client = TcpStream::connect(listen).unwrap();
    let mut peer = stick.open_peer();
    client.write_all(b"matched").unwrap();
    assert_eq!(read_exactly(&mut peer, 7), b"matched");
}

/// A stick names its own by-id link (udev builds it from the USB strings):
/// `list` prints it, like the strings, escaped.
#[test]
fn list_escapes_the_names_a_stick_chose() {
    let dir = tempfile::tempdir().unwrap();
    add_usb_port(
        dir.path(),
        &FakeUsbPort {
            tty: "ttyUSB1",
            bus_path: "1-4",
            serial: Some("A\u{1b}[2J"),
            by_id: Some("usb-Evil_\u{1b}[2J-if00"),
            ..SONOFF_E
        },
    );
    let text = render(&scan(&roots(dir.path())));
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(text.contains("usb-Evil_\\u{1b}[2J-if00"), "{text}");
    assert!(text.contains("serial:       A\\u{1b}[2J"), "{text}");
}
