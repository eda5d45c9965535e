//! RFC 2217 on a device's second port, driven by pyserial's `rfc2217://`
//! client: the line settings it asks for reach the tty (read back with
//! `stty`), bytes cross both ways with IAC intact, the configured line is back
//! for the next client, the raw port is unchanged, one client is served
//! across both ports, and hostile Telnet input is dropped and counted.
//!
//! A pty has no modem-control lines, so the pin tests put a loopback plug's
//! lines (RTS to CTS, DTR to DSR and CD) in front of the pty, in process.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Bridge, PtyPair, connect, read_exactly};
use hass_serial_bridge::config::SerialSettings;
use hass_serial_bridge::line_control::{LineControl, LineSettings, ModemState, TtyControl};
use hass_serial_bridge::metrics::BridgeMetrics;
use hass_serial_bridge::rfc2217::session::{self, Device};
use hass_serial_bridge::serial_port::{self, Pin, PinError};
use hass_test_support::{free_addr, wait_for};

const IAC: u8 = 255;
const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/rfc2217_client.py"
);

/// pyserial's RFC 2217 client, a command at a time.
struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(CLIENT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with pyserial (tests/requirements.txt)");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command and returns its answer line.
    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("write to the client");
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).expect("read the answer");
        answer.trim_end().to_owned()
    }

    /// Sends one command that must succeed; returns what follows "ok".
    fn ok(&mut self, command: &str) -> String {
        let answer = self.ask(command);
        let Some(rest) = answer.strip_prefix("ok") else {
            panic!("{command}: {answer}");
        };
        rest.trim().to_owned()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tty's settings as `stty -a` prints them.
fn stty(device: &Path) -> String {
    let out = Command::new("stty")
        .arg("-F")
        .arg(device)
        .arg("-a")
        .output()
        .expect("stty");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tty's output speed. The bridge sets speeds as Linux's termios2
/// (`BOTHER` and a number), which `stty` shows as 0: read it as termios2.
fn speed(device: &Path) -> u32 {
    const TCGETS2: &str = r#"
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
termios2 = fcntl.ioctl(fd, 0x802C542A, bytes(44))  # TCGETS2
print(struct.unpack_from("I", termios2, 40)[0])  # c_ospeed
"#;
    let out = Command::new("python3")
        .args(["-c", TCGETS2])
        .arg(device)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a speed")
}

/// True when every word of `flags` is one of stty's words for the tty.
fn has(stty: &str, flags: &str) -> bool {
    let words: Vec<&str> = stty.split([' ', ';', '\n']).collect();
    flags.split(' ').all(|flag| words.contains(&flag))
}

fn one_device_with_rfc2217(stick: &PtyPair, extra: &str) -> (Bridge, SocketAddr, u16) {
    let port = free_addr().port();
    let (bridge, listen) = Bridge::one_device(
        &stick.device(),
        &format!("    rfc2217_port: {port}\n{extra}"),
    );
    (bridge, listen, port)
}

#[test]
fn a_client_sets_the_line_and_exchanges_bytes_then_the_next_gets_the_configured_line() {
    let stick = PtyPair::new();
    let (mut bridge, listen, port) = one_device_with_rfc2217(&stick, "");
    bridge.wait_ready();
    let device = stick.device();
    assert_eq!(speed(&device), 115_200);
    assert!(has(&stty(&device), "cs8 -parenb -cstopb -crtscts"));
    let mut peer = stick.open_peer();

    let mut client = Client::start();
    client.ok(&format!("open rfc2217://127.0.0.1:{port} 9600"));
    assert_eq!(speed(&device), 9600);

    // IAC (0xff) is Telnet's escape: it must cross as data both ways.
    client.ok("write ff00ff41");
    assert_eq!(read_exactly(&mut peer, 4), [IAC, 0, IAC, b'A']);
    peer.write_all(&[IAC, IAC, b'B']).unwrap();
    assert_eq!(client.ok("read 3"), "ffff42");

    client.ok("set stopbits 2");
    client.ok("set rtscts True");
    assert!(has(&stty(&device), "cstopb crtscts"), "{}", stty(&device));
    client.ok("set rtscts False");
    client.ok("set xonxoff True");
    client.ok("set baudrate 57600");
    assert_eq!(speed(&device), 57_600);
    assert!(has(&stty(&device), "cstopb -crtscts ixon ixoff"));
    client.ok("purge");
    // What the tty refuses is answered with what it kept, and the client
    // says so: Linux ptys keep 8 data bits and no parity, and no tty has
    // mark parity.
    for refused in ["set bytesize 7", "set parity E", "set parity M"] {
        let answer = client.ask(refused);
        assert!(answer.contains("rejected"), "{refused}: {answer}");
    }
    assert!(has(&stty(&device), "cs8 -parenb"));
    // A pty has no DTR: refused, not faked.
    let answer = client.ask("set dtr False");
    assert!(answer.contains("rejected"), "{answer}");
    // 9600 and both purges at open; stop bits; RTS/CTS on and off;
    // XON/XOFF; 57600; both purges. Settings resent unchanged, as pyserial
    // does on every change, and refused ones are not counted.
    assert_eq!(
        bridge.metric("hass_serial_bridge_rfc2217_line_changes_total", &[]),
        10.0
    );

    client.ok("close");
    drop(client);
    let restored = wait_for(Duration::from_secs(10), || {
        (speed(&device) == 115_200 && has(&stty(&device), "cs8 -parenb -cstopb -crtscts -ixon"))
            .then_some(())
    });
    assert!(restored.is_some(), "{}", stty(&device));

    // The raw port serves as before.
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 0.0);
    let mut raw = connect(listen, Duration::from_secs(10));
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);
    raw.write_all(&[IAC, b'r']).unwrap();
    assert_eq!(read_exactly(&mut peer, 2), [IAC, b'r']);
}

#[test]
fn one_client_is_served_across_both_ports() {
    let stick = PtyPair::new();
    let (mut bridge, listen, port) = one_device_with_rfc2217(&stick, "    second_client: reject\n");
    bridge.wait_ready();
    let _raw = connect(listen, Duration::from_secs(10));
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);

    let mut second = connect(([127, 0, 0, 1], port).into(), Duration::from_secs(10));
    bridge.wait_metric(
        "hass_serial_bridge_client_refusals_total",
        &[("reason", "busy")],
        1.0,
    );
    let mut got = Vec::new();
    let _ = second.read_to_end(&mut got);
    assert_eq!(
        got, b"",
        "a refused client gets not even the Telnet opening"
    );
}

#[test]
fn hostile_telnet_input_is_dropped_counted_and_the_session_goes_on() {
    let stick = PtyPair::new();
    let (mut bridge, _, port) = one_device_with_rfc2217(&stick, "");
    bridge.wait_ready();
    let mut peer = stick.open_peer();
    let mut client = connect(([127, 0, 0, 1], port).into(), Duration::from_secs(10));
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // WILL BINARY, DO BINARY, WILL SUPPRESS-GO-AHEAD, DO COM-PORT-OPTION.
    assert_eq!(
        read_exactly(&mut client, 12),
        [IAC, 251, 0, IAC, 253, 0, IAC, 251, 3, IAC, 253, 44]
    );

    let mut attack = vec![IAC, 250, 44, 0];
    attack.extend(std::iter::repeat_n(b'x', 1 << 20)); // a signature that never ends
    attack.extend([IAC, 240]);
    attack.extend([IAC, 250, 44, 99, IAC, 240]); // no such command
    attack.extend([IAC, 250, 44, 1, 0, IAC, 240]); // a baud rate one byte long
    attack.extend([IAC, 240]); // SE with no SB
    attack.extend([IAC, 250, 1, 2, 3, IAC, 240]); // a subnegotiation for ECHO
    attack.extend([IAC, 250, 44, 5, 200, IAC, 240]); // SET-CONTROL 200
    attack.extend([IAC, 241]); // NOP: harmless, not counted
    attack.extend([IAC, 253, 99]); // DO an option nobody has
    client.write_all(&attack).unwrap();
    // SET-CONTROL's answer is the flow control in effect (1: none), then
    // WONT for the unknown option.
    assert_eq!(
        read_exactly(&mut client, 10),
        [IAC, 250, 44, 105, 1, IAC, 240, IAC, 252, 99]
    );
    bridge.wait_metric("hass_serial_bridge_rfc2217_protocol_errors_total", &[], 6.0);

    client.write_all(&[b'o', b'k', IAC, IAC]).unwrap();
    assert_eq!(read_exactly(&mut peer, 3), [b'o', b'k', IAC]);
    assert_eq!(speed(&stick.device()), 115_200);
    assert_eq!(
        bridge.metric("hass_serial_bridge_rfc2217_line_changes_total", &[]),
        0.0
    );
}

/// A loopback plug's lines in front of the pty: RTS drives CTS, DTR drives
/// DSR and CD. Line settings go to the real tty.
struct LoopbackPlug {
    tty: TtyControl,
    dtr: bool,
    rts: bool,
    changes: Arc<Mutex<Vec<(Instant, Pin, bool)>>>,
}

impl LineControl for LoopbackPlug {
    fn apply(&mut self, line: &LineSettings) -> Result<LineSettings, String> {
        self.tty.apply(line)
    }

    fn set_pin(&mut self, pin: Pin, level: bool) -> Result<(), PinError> {
        match pin {
            Pin::Dtr => self.dtr = level,
            Pin::Rts => self.rts = level,
        }
        self.changes
            .lock()
            .expect("the plug's log")
            .push((Instant::now(), pin, level));
        Ok(())
    }

    fn set_break(&mut self, on: bool) -> Result<(), String> {
        self.tty.set_break(on)
    }

    fn purge(&mut self, input: bool, output: bool) -> Result<(), String> {
        self.tty.purge(input, output)
    }

    fn modem_state(&mut self) -> Option<ModemState> {
        let cts = if self.rts { 0x10 } else { 0 };
        let dsr_cd = if self.dtr { 0x20 | 0x80 } else { 0 };
        Some(cts | dsr_cd)
    }
}

#[test]
fn a_bootloader_pin_sequence_from_the_client_reaches_the_lines_in_order() {
    let stick = PtyPair::new();
    let settings = SerialSettings::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opened = runtime
        .block_on(serial_port::open(&stick.device(), &settings))
        .expect("open the pty");
    let changes = Arc::new(Mutex::new(Vec::new()));
    let mut plug = LoopbackPlug {
        tty: opened.control,
        dtr: true,
        rts: true,
        changes: changes.clone(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let metrics =
        BridgeMetrics::register(&mut Default::default(), &["stick".to_owned()]).device("stick");

    let server = std::thread::spawn(move || {
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (client, _) = listener.accept().await.unwrap();
            let (client_rx, client_tx) = client.into_split();
            let (mut rx, mut tx) = tokio::io::split(opened.stream);
            let device = Device {
                rx: &mut rx,
                tx: &mut tx,
                control: &mut plug,
                configured: &settings,
                name: "stick",
            };
            session::serve(device, client_rx, client_tx, &metrics).await;
        });
    });

    let mut client = Client::start();
    client.ok(&format!(
        "open rfc2217://127.0.0.1:{port}?poll_modem 115200"
    ));
    let opened_at = changes.lock().unwrap().len();
    // Reset into the bootloader: RTS is reset, DTR the boot pin.
    for step in [
        "set dtr False",
        "set rts True",
        "sleep 0.1",
        "set dtr True",
        "set rts False",
        "sleep 0.05",
        "set dtr False",
    ] {
        client.ok(step);
    }
    let seen: Vec<(Instant, Pin, bool)> = changes.lock().unwrap()[opened_at..].to_vec();
    let levels: Vec<(Pin, bool)> = seen.iter().map(|&(_, pin, level)| (pin, level)).collect();
    assert_eq!(
        levels,
        [
            (Pin::Dtr, false),
            (Pin::Rts, true),
            (Pin::Dtr, true),
            (Pin::Rts, false),
            (Pin::Dtr, false),
        ]
    );
    assert!(
        seen[2].0 - seen[1].0 >= Duration::from_millis(100),
        "reset held"
    );
    assert!(
        seen[4].0 - seen[3].0 >= Duration::from_millis(50),
        "boot pin held"
    );

    // The inputs come back through NOTIFY-MODEMSTATE.
    assert_eq!(client.ok("get cts"), "False");
    client.ok("set rts True");
    let cts = wait_for(Duration::from_secs(5), || {
        (client.ok("get cts") == "True").then_some(())
    });
    assert!(cts.is_some(), "CTS follows RTS through the plug");
    assert_eq!(client.ok("get dsr"), "False");

    client.ok("close");
    drop(client);
    server.join().expect("the session ends with its client");
    let last: Vec<(Pin, bool)> = changes.lock().unwrap()[..]
        .iter()
        .map(|&(_, pin, level)| (pin, level))
        .collect();
    assert_eq!(
        last.last(),
        Some(&(Pin::Rts, true)),
        "with no dtr/rts configured, nothing is put back"
    );
}
