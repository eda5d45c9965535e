//! What an operator sees at start: a missing stick is waited for, mistakes in
//! the config exit 2 naming the key, a port in use exits 1, the configured
//! line settings are what the tty gets, and SIGTERM exits cleanly.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Bridge, PtyPair, connect, read_exactly};
use hass_test_support::{free_addr, wait_for};
use nix::sys::signal::Signal;

#[test]
fn a_missing_device_is_waited_for_not_ready_and_refusing() {
    let mut stick = PtyPair::unplugged();
    let (mut bridge, listen) = Bridge::one_device(&stick.device(), "");
    let not_ready = wait_for(Duration::from_secs(10), || {
        let reply = hass_test_support::http::get(bridge.admin, "/readyz").ok()?;
        (reply.status == 503 && reply.body.contains("not present")).then_some(reply.body)
    });
    let body = not_ready.expect("/readyz says the device is not present");
    assert!(
        body.contains(&format!(
            "FAIL device:zigbee: {}: not present",
            stick.device().display()
        )),
        "{body}"
    );

    // It keeps running and closes clients without serving them.
    let mut client = connect(listen, Duration::from_secs(10));
    let mut buf = [0u8; 8];
    assert!(matches!(client.read(&mut buf), Ok(0) | Err(_)));
    bridge.wait_metric(
        "hass_serial_bridge_client_refusals_total",
        &[("reason", "device_absent")],
        1.0,
    );
    assert_eq!(bridge.metric("hass_serial_bridge_device_up", &[]), 0.0);

    // Plugged in late, it is served.
    stick.plug();
    bridge.wait_ready();
    let mut client = TcpStream::connect(listen).unwrap();
    let mut peer = stick.open_peer();
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);
    client.write_all(b"late").unwrap();
    assert_eq!(read_exactly(&mut peer, 4), b"late");
    // The first open is not a reopen.
    assert_eq!(
        bridge.metric("hass_serial_bridge_device_reopens_total", &[]),
        0.0
    );
}

/// Runs the bridge on `yaml` expecting it to exit; returns code and stderr.
fn exits_with(yaml: &str) -> (i32, String) {
    let mut bridge = Bridge::start(yaml);
    let status = bridge
        .process
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running; stderr:\n{}", bridge.process.stderr()));
    let stderr = bridge.process.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn an_unknown_key_exits_2_naming_file_line_and_key() {
    let (code, stderr) = exits_with(&format!(
        "devices:\n  - name: zigbee\n    path: /dev/ttyUSB0\n    baudrate: 115200\n    listen: {}\n",
        free_addr()
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("bridge.yaml:4:5: devices[0].baudrate: unknown field `baudrate`"),
        "{stderr}"
    );
}

#[test]
fn a_path_that_is_not_a_tty_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "not a stick").unwrap();
    let (code, stderr) = exits_with(&format!(
        "devices:\n  - name: zigbee\n    path: {}\n    listen: {}\n",
        file.display(),
        free_addr()
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        // Checks after parsing point at the key as parse errors do.
        stderr.contains(&format!(
            "bridge.yaml:3:5: devices[0].path: {} is a regular file, not a serial device",
            file.display()
        )),
        "{stderr}"
    );

    // A character device, but not a tty: sysfs says so without opening it.
    let (code, stderr) = exits_with(&format!(
        "devices:\n  - name: zigbee\n    path: /dev/null\n    listen: {}\n",
        free_addr()
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "bridge.yaml:3:5: devices[0].path: /dev/null is a character device that is not a tty, not a serial device"
        ),
        "{stderr}"
    );
}

#[test]
fn a_port_in_use_exits_1_naming_device_and_address() {
    let stick = PtyPair::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, stderr) = exits_with(&format!(
        "devices:\n  - name: zigbee\n    path: {}\n    listen: {addr}\n",
        stick.device().display()
    ));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("devices[0] (zigbee): cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn no_devices_is_a_config_error() {
    let output = Command::new(BIN).args(["--check-config"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no devices configured"));
}

/// Holds a pty for the bridge and reports the slave's termios (read through
/// the master with TCGETS2, which carries the real baud rate) on request.
const PTY_HOLDER: &str = r#"
import fcntl, json, os, struct, sys
master, slave = os.openpty()
os.symlink(os.ttyname(slave), sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
TCGETS2 = 0x802C542A
raw = fcntl.ioctl(master, TCGETS2, bytes(44))
iflag, oflag, cflag, lflag = struct.unpack_from("4I", raw)
ispeed, ospeed = struct.unpack_from("2I", raw, 36)
print(json.dumps({"iflag": iflag, "cflag": cflag, "lflag": lflag, "ispeed": ispeed, "ospeed": ospeed}), flush=True)
"#;

#[test]
fn line_settings_are_applied_to_the_tty() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("stick");
    let mut holder = Command::new("python3")
        .args(["-c", PTY_HOLDER])
        .arg(&link)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let (mut bridge, _) = Bridge::one_device(
        &link,
        "    baud: 57600\n    data_bits: 7\n    parity: even\n    stop_bits: 2\n    flow_control: rts_cts\n",
    );
    bridge.wait_ready();
    writeln!(holder.stdin.as_mut().unwrap()).unwrap();
    let report: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let _ = holder.wait();
    let flag = |name: &str| report[name].as_u64().unwrap() as u32;
    let (iflag, cflag, lflag) = (flag("iflag"), flag("cflag"), flag("lflag"));
    use nix::libc;
    assert_eq!(flag("ospeed"), 57600);
    assert_eq!(flag("ispeed"), 57600);
    // The pty driver forces CS8 and clears PARENB whatever is asked
    // (pty_set_termios), so data bits and parity-enable cannot be seen on a
    // pty; parity shows as input checking (INPCK) and PARODD.
    assert_eq!(cflag & libc::CSIZE, libc::CS8, "ptys are always CS8");
    assert_ne!(iflag & libc::INPCK, 0, "parity checked on input");
    assert_eq!(cflag & libc::PARODD, 0, "parity even");
    assert_ne!(cflag & libc::CSTOPB, 0, "2 stop bits");
    assert_ne!(cflag & libc::CRTSCTS, 0, "RTS/CTS flow control");
    assert_eq!(iflag & (libc::IXON | libc::IXOFF), 0, "no XON/XOFF");
    assert_eq!(
        lflag & (libc::ICANON | libc::ECHO),
        0,
        "raw: no line editing or echo"
    );
}

#[test]
fn xon_xoff_is_applied_to_the_tty() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("stick");
    let mut holder = Command::new("python3")
        .args(["-c", PTY_HOLDER])
        .arg(&link)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let (mut bridge, _) =
        Bridge::one_device(&link, "    flow_control: xon_xoff\n    parity: odd\n");
    bridge.wait_ready();
    writeln!(holder.stdin.as_mut().unwrap()).unwrap();
    let report: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let _ = holder.wait();
    let flag = |name: &str| report[name].as_u64().unwrap() as u32;
    use nix::libc;
    assert_eq!(flag("ospeed"), 115_200, "the default baud rate");
    assert_eq!(flag("cflag") & libc::CSIZE, libc::CS8);
    assert_ne!(flag("iflag") & libc::INPCK, 0, "parity checked on input");
    assert_ne!(flag("cflag") & libc::PARODD, 0, "parity odd");
    assert_eq!(flag("cflag") & libc::CRTSCTS, 0);
    assert_eq!(
        flag("iflag") & (libc::IXON | libc::IXOFF),
        libc::IXON | libc::IXOFF
    );
}

#[test]
fn sigterm_with_a_client_connected_exits_0() {
    let stick = PtyPair::new();
    let (mut bridge, listen) = Bridge::one_device(&stick.device(), "");
    bridge.wait_ready();
    let mut client = connect(listen, Duration::from_secs(10));
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);
    bridge.process.signal(Signal::SIGTERM);
    let status = bridge
        .process
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", bridge.process.stderr());
    let mut buf = [0u8; 8];
    assert!(
        matches!(client.read(&mut buf), Ok(0) | Err(_)),
        "client closed"
    );
}
