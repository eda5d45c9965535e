//! A device with `zeroconf:` is found the way ZHA finds network
//! coordinators: python-zeroconf (the library Home Assistant uses), browsing
//! from another host, sees `_zigbee-coordinator._tcp` with the bridge's
//! address, port and TXT `radio_type` / `serial_number` while the stick is
//! open, sees it withdrawn when the stick is unplugged and when the bridge
//! stops, and announced again on replug; malformed and oversized mDNS from
//! the LAN in between changes none of that.
//!
//! The two hosts are network namespaces made by the test, joined by a veth
//! pair with a multicast route (root and iproute2, as CI has).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{BIN, BRIDGE_IP, NetnsPair, PtyPair};
use hass_test_support::{SpawnedBinary, wait_for};
use nix::sys::signal::Signal;
use serde_json::Value;

const PORT: u16 = 6638;
const SERVICE: &str = "_zigbee-coordinator._tcp.local.";

/// Prints one JSON line per change of the services it browses.
const BROWSER: &str = r#"
import json, sys
from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

def on_change(zeroconf, service_type, name, state_change):
    event = {"event": state_change.name.lower(), "name": name}
    if state_change is not ServiceStateChange.Removed:
        info = zeroconf.get_service_info(service_type, name, timeout=3000)
        if info is not None:
            event.update(
                port=info.port,
                addresses=info.parsed_addresses(),
                properties={k.decode(): (v or b"").decode() for k, v in info.properties.items()},
            )
    print(json.dumps(event), flush=True)

zc = Zeroconf(ip_version=IPVersion.V4Only)
browser = ServiceBrowser(zc, sys.argv[1], handlers=[on_change])
print(json.dumps({"event": "browsing"}), flush=True)
sys.stdin.read()
zc.close()
"#;

/// Malformed and oversized mDNS packets, to the group and to `argv[1]`.
const HOSTILE: &str = r#"
import os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
header = lambda qd, an: struct.pack("!6H", 0, 0x8400, qd, an, 0, 0)
packets = [
    os.urandom(512),
    b"\x00\x00\x84",
    header(1, 0) + b"\xc0\x0c" + struct.pack("!2H", 12, 1),
    header(0, 1) + b"\x07zigbee" + b"\xc0\x0c" + struct.pack("!2HIH", 16, 1, 120, 60000),
    header(1, 0) + b"\x3f" + b"a" * 8900,
]
for packet in packets * 20:
    for dest in ("224.0.0.251", sys.argv[1]):
        s.sendto(packet, (dest, 5353))
"#;

struct Browser {
    child: Child,
    events: mpsc::Receiver<Value>,
}

impl Browser {
    fn start(pair: &NetnsPair) -> Self {
        let mut child = pair
            .exec(&pair.client_ns, "python3")
            .args(["-c", BROWSER, SERVICE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with zeroconf (tests/requirements.txt)");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(event);
                }
            }
        });
        let browser = Self { child, events };
        browser
            .next("browsing")
            .unwrap_or_else(|seen| panic!("the browser never started; saw {seen:?}"));
        browser
    }

    /// The next event of `kind`, skipping others (`updated` comes and goes);
    /// what else came when it does not within 30 s.
    fn next(&self, kind: &str) -> Result<Value, Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut others = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(event) = self.events.recv_timeout(left) else {
                return Err(others);
            };
            if event["event"] == kind {
                return Ok(event);
            }
            others.push(event);
        }
    }

    /// [`Self::next`], or a failure with the events seen and `bridge`'s log.
    fn expect(&self, kind: &str, bridge: &SpawnedBinary) -> Value {
        self.next(kind).unwrap_or_else(|seen| {
            panic!(
                "no `{kind}` event within 30 s; saw {seen:?}; the bridge's log:\n{}",
                bridge.stderr()
            )
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn zha_finds_the_stick_while_it_is_plugged_in() {
    let pair = NetnsPair::new("z");
    pair.route_multicast();
    let mut stick = PtyPair::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bridge.yaml");
    std::fs::write(
        &config,
        format!(
            "devices:\n  - name: zigbee\n    path: {}\n    listen: {BRIDGE_IP}:{PORT}\n    zeroconf: {{ radio_type: znp }}\n",
            stick.device().display()
        ),
    )
    .expect("config");
    let browser = Browser::start(&pair);
    let mut command = pair.exec(&pair.bridge_ns, BIN);
    command
        .arg("--config")
        .arg(&config)
        .args(["--admin-listen", "127.0.0.1:9182"]);
    let mut bridge = SpawnedBinary::spawn(command).expect("spawn the bridge");

    let added = browser.expect("added", &bridge);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(
        added["name"],
        format!("zigbee on {}.{SERVICE}", host.trim()),
        "{added}"
    );
    assert_eq!(added["port"], PORT, "{added}");
    assert_eq!(
        added["addresses"],
        serde_json::json!([BRIDGE_IP]),
        "{added}"
    );
    assert_eq!(added["properties"]["radio_type"], "znp", "{added}");
    assert_eq!(
        added["properties"]["serial_number"],
        format!("{}-zigbee", host.trim()),
        "a pty has no USB serial number: host and device name stand in"
    );

    // Hostile mDNS from the LAN: garbage, a truncated header, a name whose
    // compression pointer points at itself, a 9000-byte datagram, to the
    // group and to the bridge. The responder carries on: the unplug below
    // is still announced.
    let sent = pair
        .exec(&pair.client_ns, "python3")
        .args(["-c", HOSTILE, BRIDGE_IP])
        .status()
        .expect("python3");
    assert!(sent.success());

    stick.unplug();
    let removed = browser.expect("removed", &bridge);
    assert_eq!(removed["name"], added["name"]);

    let plugged = Instant::now();
    stick.plug();
    let again = browser.expect("added", &bridge);
    eprintln!("re-announced {:?} after replug", plugged.elapsed());
    assert_eq!(again["name"], added["name"]);

    bridge.signal(Signal::SIGTERM);
    assert!(
        bridge.wait_exit(Duration::from_secs(20)).is_some(),
        "{}",
        bridge.stderr()
    );
    assert_eq!(
        browser.expect("removed", &bridge)["name"],
        added["name"],
        "goodbye on stop"
    );
    let logged = wait_for(Duration::from_secs(1), || {
        bridge
            .stderr()
            .contains("withdrawn from mDNS")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", bridge.stderr());
    assert!(!bridge.stderr().contains("panicked"), "{}", bridge.stderr());
}
