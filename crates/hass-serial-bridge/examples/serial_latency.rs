//! Benchmark: round-trip latency and throughput of hass-serial-bridge, socat
//! (`nodelay`) and ser2net (defaults, and tuned with `nodelay` and
//! `chardelay: false`) against the same pty, beside the direct-pty baseline;
//! and of RFC 2217 (Telnet, IAC escaped both ways) on hass-serial-bridge's
//! `rfc2217_port` and ser2net's `telnet(rfc2217)`, tuned, through one client.
//!
//! The test plays a stick that echoes every byte; a TCP client sends a frame
//! and waits for it to come back. Added latency is each bridge's round trip
//! minus the direct one. Run (needs socat and ser2net on PATH):
//!
//! ```sh
//! cargo build --release -p hass-serial-bridge --bins --examples
//! target/release/examples/serial_latency [--rounds N] [--without-ser2net]
//! ```
//!
//! Bridge and socat differ by a few µs on a ~150 µs round trip, so telling
//! them apart needs more rounds than the default; ser2net, measured once, can
//! be left out of such runs to keep them short.
#![allow(clippy::print_stdout)] // Printing the results is the job.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hass_test_support::PtyPair;

use hass_serial_bridge::rfc2217::telnet::{self, Decoder, Event, Verb};

const FRAME_SIZES: [usize; 4] = [8, 64, 100, 1024];
const HASS_RFC2217: &str = "hass-serial-bridge rfc2217";
const SER2NET_RFC2217: &str = "ser2net rfc2217 tuned";
/// Candidates take turns, round after round, so that load from anything else
/// on the machine spreads over all of them alike.
const DEFAULT_ROUNDS: usize = 5;
/// Round trips per frame size and round, unless the time cap comes first.
const ROUND_TRIPS: usize = 400;
const TIME_CAP: Duration = Duration::from_secs(2);
/// Bytes sent each way for throughput, per round.
const BULK: usize = 4 * 1024 * 1024;

/// The stick: echoes what it reads, or only counts it.
struct EchoStick {
    /// The ptys live as long as the stick (socat ends on drop).
    _pair: PtyPair,
    device: PathBuf,
    peer: File,
    echo: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
}

impl EchoStick {
    fn start() -> Result<Self, String> {
        let pair = PtyPair::new();
        let device = pair.device();
        let peer = open_tty(&pair.peer())?;
        let echo = Arc::new(AtomicBool::new(true));
        let received = Arc::new(AtomicU64::new(0));
        let mut reader = peer.try_clone().map_err(|e| e.to_string())?;
        let mut writer = peer.try_clone().map_err(|e| e.to_string())?;
        let (echo_flag, count) = (echo.clone(), received.clone());
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
                if echo_flag.load(Ordering::Relaxed) && writer.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            _pair: pair,
            device,
            peer,
            echo,
            received,
        })
    }
}

fn open_tty(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A bridge under test, stopped on drop.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

fn spawn(mut command: Command, dir: tempfile::TempDir) -> Result<Server, String> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{:?}: {e}", command.get_program()))?;
    Ok(Server { child, _dir: dir })
}

/// The bridge built beside this example.
fn hass_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("hass-serial-bridge"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            "build hass-serial-bridge first: cargo build --release -p hass-serial-bridge --bins --examples"
                .to_owned()
        })
}

/// The bridge serving `device` on `listen`: raw, or with `rfc2217` on
/// `listen`'s port (the raw port then elsewhere).
fn start_hass(
    binary: &Path,
    device: &Path,
    listen: SocketAddr,
    rfc2217: bool,
) -> Result<Server, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("bridge.yaml");
    let ports = if rfc2217 {
        format!(
            "    listen: {}\n    rfc2217_port: {}\n",
            free_addr(),
            listen.port()
        )
    } else {
        format!("    listen: {listen}\n")
    };
    std::fs::write(
        &config,
        format!(
            "devices:\n  - name: bench\n    path: {}\n{ports}",
            device.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut command = Command::new(binary);
    command
        .arg("--config")
        .arg(&config)
        .args(["--admin-listen", &free_addr().to_string()])
        .env("RUST_LOG", "warn");
    spawn(command, dir)
}

fn start_socat(device: &Path, listen: SocketAddr) -> Result<Server, String> {
    let mut command = Command::new("socat");
    command
        .arg(format!(
            "TCP-LISTEN:{},bind={},reuseaddr,nodelay",
            listen.port(),
            listen.ip()
        ))
        .arg(format!("OPEN:{},raw,echo=0", device.display()));
    spawn(command, tempfile::tempdir().map_err(|e| e.to_string())?)
}

fn start_ser2net(
    device: &Path,
    listen: SocketAddr,
    tuned: bool,
    rfc2217: bool,
) -> Result<Server, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("ser2net.yaml");
    let (tcp, options) = if tuned {
        ("tcp(nodelay)", "  options:\n    chardelay: false\n")
    } else {
        ("tcp", "")
    };
    let accepter = if rfc2217 {
        format!("telnet(rfc2217),{tcp}")
    } else {
        tcp.to_owned()
    };
    std::fs::write(
        &config,
        format!(
            "connection: &bench\n  accepter: {accepter},{},{}\n  connector: serialdev,{},115200n81,local\n{options}",
            listen.ip(),
            listen.port(),
            device.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut command = Command::new("ser2net");
    command.arg("-n").arg("-c").arg(&config);
    spawn(command, dir)
}

fn connect(listen: SocketAddr) -> Result<TcpStream, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(listen) {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .map_err(|e| e.to_string())?;
                // Let the bridge open the device before timing starts.
                thread::sleep(Duration::from_millis(300));
                return Ok(stream);
            }
            Err(e) if Instant::now() > deadline => return Err(format!("connect {listen}: {e}")),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

trait Link: Read + Write {}
impl<T: Read + Write> Link for T {}

/// A Telnet client's view of a connection: data with IAC escaped on the way
/// out and Telnet stripped on the way in; agrees to binary, no go-ahead and
/// the com port, refuses the rest, once each.
struct TelnetLink {
    stream: TcpStream,
    decoder: Decoder,
    data: Vec<u8>,
    answered: Vec<(u8, u8)>,
}

impl TelnetLink {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            decoder: Decoder::default(),
            data: Vec::new(),
            answered: Vec::new(),
        }
    }
}

impl Read for TelnetLink {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut raw = [0u8; 16 * 1024];
        while self.data.is_empty() {
            let n = self.stream.read(&mut raw)?;
            if n == 0 {
                return Ok(0);
            }
            let mut events = Vec::new();
            self.decoder.decode(&raw[..n], &mut self.data, &mut events);
            let mut answer = Vec::new();
            for event in events {
                let Event::Negotiate(verb, option) = event else {
                    continue;
                };
                let agreed = [
                    telnet::BINARY,
                    telnet::SUPPRESS_GO_AHEAD,
                    telnet::COM_PORT_OPTION,
                ]
                .contains(&option);
                let reply = match (verb, agreed) {
                    (Verb::Do, true) => Verb::Will,
                    (Verb::Do, false) => Verb::Wont,
                    (Verb::Will, true) => Verb::Do,
                    (Verb::Will, false) => Verb::Dont,
                    (Verb::Dont | Verb::Wont, _) => continue,
                };
                if !self.answered.contains(&(reply.code(), option)) {
                    self.answered.push((reply.code(), option));
                    telnet::negotiate(reply, option, &mut answer);
                }
            }
            self.stream.write_all(&answer)?;
        }
        let n = buf.len().min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data.drain(..n);
        Ok(n)
    }
}

impl Write for TelnetLink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut escaped = Vec::with_capacity(buf.len() + buf.len() / 64);
        telnet::escape(buf, &mut escaped);
        self.stream.write_all(&escaped)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// Round-trip times of one frame size, sorted.
fn round_trips(link: &mut dyn Link, size: usize) -> Result<Vec<Duration>, String> {
    let frame: Vec<u8> = (0..size).map(|i| (i * 7 + 1) as u8).collect();
    let mut back = vec![0u8; size];
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    let started = Instant::now();
    while times.len() < ROUND_TRIPS && started.elapsed() < TIME_CAP {
        let t = Instant::now();
        link.write_all(&frame).map_err(|e| format!("write: {e}"))?;
        link.read_exact(&mut back)
            .map_err(|e| format!("read: {e}"))?;
        times.push(t.elapsed());
        if back != frame {
            return Err("echo came back different".into());
        }
    }
    times.sort();
    Ok(times)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// MB/s client→stick, then stick→client.
fn throughput(link: &mut dyn Link, stick: &EchoStick) -> Result<(f64, f64), String> {
    stick.echo.store(false, Ordering::Relaxed);
    let before = stick.received.load(Ordering::Relaxed);
    let chunk = vec![0x5a_u8; 16 * 1024];
    let t = Instant::now();
    let mut sent = 0;
    while sent < BULK {
        link.write_all(&chunk).map_err(|e| format!("write: {e}"))?;
        sent += chunk.len();
    }
    while stick.received.load(Ordering::Relaxed) - before < BULK as u64 {
        if t.elapsed() > Duration::from_secs(60) {
            return Err("upload stalled".into());
        }
        thread::sleep(Duration::from_micros(200));
    }
    let up = BULK as f64 / t.elapsed().as_secs_f64() / 1e6;

    let mut writer = stick.peer.try_clone().map_err(|e| e.to_string())?;
    let t = Instant::now();
    let source = thread::spawn(move || {
        let chunk = vec![0xa5_u8; 16 * 1024];
        let mut sent = 0;
        while sent < BULK && writer.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < BULK {
        let n = link.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed during download".into());
        }
        got += n;
    }
    let down = BULK as f64 / t.elapsed().as_secs_f64() / 1e6;
    let _ = source.join();
    stick.echo.store(true, Ordering::Relaxed);
    Ok((up, down))
}

/// Everything measured for one candidate over all rounds.
#[derive(Default)]
struct Results {
    /// Round-trip samples per frame size.
    samples: Vec<Vec<Duration>>,
    /// Each round's p50 per frame size, µs: rounds compare like with like.
    round_p50: Vec<Vec<f64>>,
    /// MB/s per round, each way.
    up: Vec<f64>,
    down: Vec<f64>,
}

fn measure_round(link: &mut dyn Link, stick: &EchoStick, into: &mut Results) -> Result<(), String> {
    if into.samples.is_empty() {
        into.samples = vec![Vec::new(); FRAME_SIZES.len()];
        into.round_p50 = vec![Vec::new(); FRAME_SIZES.len()];
    }
    for (i, size) in FRAME_SIZES.into_iter().enumerate() {
        let mut round = round_trips(link, size)?;
        round.sort();
        into.round_p50[i].push(micros(percentile(&round, 0.5)));
        into.samples[i].extend(round);
    }
    let (up, down) = throughput(link, stick)?;
    into.up.push(up);
    into.down.push(down);
    Ok(())
}

/// Starts a bridge on the device, listening on the address.
type StartBridge = Box<dyn Fn(&Path, SocketAddr) -> Result<Server, String>>;

/// How a candidate is reached: the pty itself, or a bridge started per round,
/// spoken to raw or over Telnet.
enum Candidate {
    Direct,
    Bridge(StartBridge),
    Telnet(StartBridge),
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

struct Options {
    rounds: usize,
    ser2net: bool,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        rounds: DEFAULT_ROUNDS,
        ser2net: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                options.rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--rounds needs a count above 0")?;
            }
            "--without-ser2net" => options.ser2net = false,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}; usage: serial_latency [--rounds N] [--without-ser2net]");
            return ExitCode::FAILURE;
        }
    };
    let stick = match EchoStick::start() {
        Ok(stick) => stick,
        Err(e) => {
            eprintln!("cannot start the pty stick: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hass = match hass_binary() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let hass_rfc2217 = hass.clone();
    let mut candidates: Vec<(String, Candidate)> = vec![
        ("direct pty".into(), Candidate::Direct),
        (
            "hass-serial-bridge".into(),
            Candidate::Bridge(Box::new(move |d, l| start_hass(&hass, d, l, false))),
        ),
    ];
    // Another build of the bridge, to compare two versions in one run.
    if let Some(other) = std::env::var_os("BENCH_BRIDGE_BIN") {
        let other = PathBuf::from(other);
        candidates.push((
            format!("hass {}", other.display()),
            Candidate::Bridge(Box::new(move |d, l| start_hass(&other, d, l, false))),
        ));
    }
    candidates.push((
        "socat nodelay".into(),
        Candidate::Bridge(Box::new(start_socat)),
    ));
    if options.ser2net {
        candidates.push((
            "ser2net defaults".into(),
            Candidate::Bridge(Box::new(|d, l| start_ser2net(d, l, false, false))),
        ));
        candidates.push((
            "ser2net tuned".into(),
            Candidate::Bridge(Box::new(|d, l| start_ser2net(d, l, true, false))),
        ));
    }
    candidates.push((
        HASS_RFC2217.into(),
        Candidate::Telnet(Box::new(move |d, l| start_hass(&hass_rfc2217, d, l, true))),
    ));
    if options.ser2net {
        candidates.push((
            SER2NET_RFC2217.into(),
            Candidate::Telnet(Box::new(|d, l| start_ser2net(d, l, true, true))),
        ));
    }

    let mut results: Vec<Results> = candidates.iter().map(|_| Results::default()).collect();
    let mut failed = vec![false; candidates.len()];
    for round in 1..=options.rounds {
        eprintln!("round {round}/{}", options.rounds);
        for (i, (name, candidate)) in candidates.iter().enumerate() {
            if failed[i] {
                continue;
            }
            let outcome = match candidate {
                Candidate::Direct => open_tty(&stick.device)
                    .and_then(|mut tty| measure_round(&mut tty, &stick, &mut results[i])),
                Candidate::Bridge(start) | Candidate::Telnet(start) => {
                    let listen = free_addr();
                    let telnet = matches!(candidate, Candidate::Telnet(_));
                    start(&stick.device, listen).and_then(|server| {
                        let stream = connect(listen)?;
                        let mut link: Box<dyn Link> = if telnet {
                            Box::new(TelnetLink::new(stream))
                        } else {
                            Box::new(stream)
                        };
                        let outcome = measure_round(&mut *link, &stick, &mut results[i]);
                        drop(link);
                        drop(server);
                        outcome
                    })
                }
            };
            if let Err(e) = outcome {
                eprintln!("{name}: {e}");
                failed[i] = true;
            }
            // Let the pty settle before the next one opens it.
            thread::sleep(Duration::from_millis(200));
        }
    }
    if failed[0] {
        return ExitCode::FAILURE;
    }
    let named: Vec<(&str, &Results)> = candidates
        .iter()
        .zip(&results)
        .zip(&failed)
        .filter(|(_, failed)| !**failed)
        .map(|(((name, _), r), _)| (name.as_str(), r))
        .collect();
    report(&named, options.rounds);
    ExitCode::SUCCESS
}

fn report(all: &[(&str, &Results)], rounds: usize) {
    let stats = |r: &Results, i: usize| {
        let mut sorted = r.samples[i].clone();
        sorted.sort();
        (
            micros(percentile(&sorted, 0.5)),
            micros(percentile(&sorted, 0.99)),
            sorted.len(),
        )
    };
    let direct = all[0].1;
    let socat = all.iter().find(|(name, _)| *name == "socat nodelay");
    println!(
        "Round trip through an echoing pty, {rounds} interleaved rounds; added = candidate minus direct pty (µs)."
    );
    println!(
        "{:<26} {:>5} {:>9} {:>9} {:>10} {:>10} {:>13} {:>6}",
        "", "frame", "p50", "p99", "added p50", "added p99", "added vs socat", "n"
    );
    for (name, r) in all {
        for (i, size) in FRAME_SIZES.iter().enumerate() {
            let (p50, p99, n) = stats(r, i);
            let (d50, d99, _) = stats(direct, i);
            let vs_socat = socat
                .map(|(_, s)| format!("{:.2}x", (p50 - d50) / (stats(s, i).0 - d50)))
                .unwrap_or_default();
            println!(
                "{:<26} {:>5} {:>9.1} {:>9.1} {:>10.1} {:>10.1} {:>13} {:>6}",
                name,
                size,
                p50,
                p99,
                p50 - d50,
                p99 - d99,
                vs_socat,
                n
            );
        }
    }
    if let Some((_, socat)) = socat {
        println!();
        println!(
            "Added p50 vs socat's, round by round (median ratio over rounds; rounds at or below socat):"
        );
        for (name, r) in all.iter().filter(|(name, _)| name.starts_with("hass")) {
            for (i, size) in FRAME_SIZES.iter().enumerate() {
                let ratios: Vec<f64> = (0..r.round_p50[i].len().min(socat.round_p50[i].len()))
                    .map(|k| {
                        let direct = direct.round_p50[i][k];
                        (r.round_p50[i][k] - direct) / (socat.round_p50[i][k] - direct)
                    })
                    .collect();
                let at_or_below = ratios.iter().filter(|ratio| **ratio <= 1.0).count();
                println!(
                    "{:<26} {:>5} {:>6.2}x   {}/{}",
                    name,
                    size,
                    median(&ratios),
                    at_or_below,
                    ratios.len()
                );
            }
        }
    }
    let find = |wanted: &str| {
        all.iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, r)| *r)
    };
    if let (Some(telnet), Some(raw)) = (find(HASS_RFC2217), find("hass-serial-bridge")) {
        println!();
        println!(
            "RFC 2217: added p50 against raw mode and ser2net's RFC 2217, median of per-round ratios:"
        );
        let ser2net = find(SER2NET_RFC2217);
        for (i, size) in FRAME_SIZES.iter().enumerate() {
            let ratio = |other: &Results| {
                let ratios: Vec<f64> = (0..telnet.round_p50[i].len().min(other.round_p50[i].len()))
                    .map(|k| {
                        let direct = direct.round_p50[i][k];
                        (telnet.round_p50[i][k] - direct) / (other.round_p50[i][k] - direct)
                    })
                    .collect();
                format!("{:.2}x", median(&ratios))
            };
            println!(
                "{:>5}  vs raw {:>7}  vs ser2net rfc2217 {:>7}",
                size,
                ratio(raw),
                ser2net.map(ratio).unwrap_or_else(|| "-".into())
            );
        }
    }
    println!();
    println!(
        "Throughput, {} MiB each way per round, median of rounds (MB/s, and ratio to direct pty):",
        BULK >> 20
    );
    for (name, r) in all {
        let (up, down) = (median(&r.up), median(&r.down));
        println!(
            "{:<26} client->stick {:>7.1} ({:.2}x)   stick->client {:>7.1} ({:.2}x)",
            name,
            up,
            up / median(&direct.up),
            down,
            down / median(&direct.down)
        );
    }
}
