//! The newcomer's run: the suite starts every part, prints endpoints that
//! work with real clients, reports and restarts a child that dies, and stops
//! every child on SIGTERM. Needs the other binaries built beside hass-suite
//! (`cargo build --workspace`; `cargo test --workspace` does).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hass_test_support::binary::run;
use hass_test_support::{SpawnedBinary, free_addr, free_port, http, openmetrics, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_hass-suite");

/// A running suite with every port moved to a free one.
struct Running {
    dir: tempfile::TempDir,
    admin: SocketAddr,
    exporter: SocketAddr,
    process: SpawnedBinary,
}

fn start() -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let admin = free_addr();
    let exporter = free_port();
    let yaml = format!(
        "ports:\n  mqtt: {}\n  mqtt_ws: {}\n  serial: {}\n  broker_admin: {}\n  bridge_admin: {}\n  watcher_admin: {}\n  exporter_admin: {exporter}\n",
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    std::fs::write(dir.path().join("suite.yaml"), yaml).expect("suite.yaml");
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .env_remove("RUST_LOG")
        .args(["--config", "suite.yaml", "--admin-listen"])
        .arg(admin.to_string());
    let mut process = SpawnedBinary::spawn(cmd).expect("spawn hass-suite");
    process
        .wait_ready(admin, Duration::from_secs(30))
        .expect("suite ready");
    Running {
        dir,
        admin,
        exporter: SocketAddr::from(([127, 0, 0, 1], exporter)),
        process,
    }
}

impl Running {
    /// The banner on stdout, once printed.
    fn banner(&self) -> String {
        wait_for(Duration::from_secs(10), || {
            let out = self.process.stdout();
            out.contains("Stop with Ctrl-C").then_some(out)
        })
        .unwrap_or_else(|| panic!("no banner; stderr:\n{}", self.process.stderr()))
    }
}

impl Drop for Running {
    /// SIGTERM, so the suite stops its children: the SIGKILL of
    /// `SpawnedBinary`'s own drop would leave them orphaned.
    fn drop(&mut self) {
        if self.process.wait_exit(Duration::ZERO).is_none() {
            self.process.signal(Signal::SIGTERM);
            self.process.wait_exit(Duration::from_secs(20));
        }
    }
}

/// The value after `key` on the banner line that holds it.
fn field<'a>(banner: &'a str, key: &str) -> &'a str {
    banner
        .lines()
        .find_map(|line| line.trim().strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key:?} in the banner:\n{banner}"))
}

/// Direct children of `pid` with their command names (from `/proc/*/stat`:
/// the per-thread `children` lists miss children of exited threads).
fn children(pid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid ...`; comm may hold spaces, so split at the last `)`.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = tail
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
            out.push((child, comm.to_owned()));
        }
    }
    out
}

fn exporter_value(exporter: SocketAddr, name: &str) -> Option<f64> {
    let reply = http::get(exporter, "/metrics").ok()?;
    let families = openmetrics::parse(&reply.body).ok()?;
    openmetrics::find(&families, name)?
        .samples
        .first()
        .map(|s| s.value)
}

#[test]
fn prints_working_endpoints_and_sigterm_stops_every_child() {
    let mut suite = start();
    let banner = suite.banner();
    let server = field(&banner, "MQTT broker");
    let addr: SocketAddr = server
        .strip_prefix("mqtt://")
        .expect("mqtt:// address")
        .parse()
        .expect("host:port");
    let user = field(&banner, "username:");
    let password = field(&banner, "password:");
    assert!(
        banner.contains("serial:\n    port: tcp://127.0.0.1:"),
        "{banner}"
    );
    assert!(banner.contains("job_name: hass-sidecars"), "{banner}");

    // mosquitto_sub with the printed address and credentials receives a message.
    let mqtt = |program: &str, extra: &[&str]| {
        let mut cmd = Command::new(program);
        cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-u", user, "-P", password, "-t", "hello/newcomer"])
            .args(extra);
        cmd
    };
    let mut sub = SpawnedBinary::spawn(mqtt("mosquitto_sub", &["-C", "1", "-W", "15"]))
        .expect("mosquitto_sub (Debian's mosquitto-clients)");
    // Published until the subscriber has it: it may not have subscribed yet.
    let received = wait_for(Duration::from_secs(15), || {
        let (status, _, stderr) = run(mqtt("mosquitto_pub", &["-m", "it works"])).expect("pub");
        assert!(status.success(), "mosquitto_pub: {stderr}");
        std::thread::sleep(Duration::from_millis(200));
        sub.wait_exit(Duration::ZERO)
    });
    assert!(
        received.is_some_and(|s| s.success()),
        "sub: {}",
        sub.stderr()
    );
    assert_eq!(sub.stdout().trim(), "it works");
    // A wrong password is refused: the user is real.
    let (status, _, _) = run(mqtt("mosquitto_pub", &["-m", "x", "-P", "wrong"])).expect("pub");
    assert!(!status.success());

    // The exporter sees the broker and the bridge up.
    for metric in [
        "hass_exporter_broker_up",
        "hass_exporter_bridge_up",
        "hass_exporter_bridge_device_up",
    ] {
        let up = wait_for(Duration::from_secs(15), || {
            (exporter_value(suite.exporter, metric) == Some(1.0)).then_some(())
        });
        assert!(
            up.is_some(),
            "{metric} not 1: {:?}",
            exporter_value(suite.exporter, metric)
        );
    }

    let kids = children(suite.process.pid());
    let names: Vec<&str> = kids.iter().map(|(_, c)| c.as_str()).collect();
    for name in [
        "hass-broker",
        "hass-config-wat",
        "hass-exporter",
        "hass-serial-bri",
        "socat",
    ] {
        assert!(names.contains(&name), "{name} not among {names:?}");
    }
    suite.process.signal(Signal::SIGTERM);
    let status = suite
        .process
        .wait_exit(Duration::from_secs(20))
        .expect("the suite exits after SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "stderr:\n{}",
        suite.process.stderr()
    );
    for (pid, name) in kids {
        // Reaped by the suite: nothing is left, not even a zombie.
        assert!(
            kill(Pid::from_raw(pid), None).is_err(),
            "{name} (pid {pid}) still exists"
        );
    }
    let stderr = suite.process.stderr();
    assert!(stderr.contains("every child stopped"), "{stderr}");
    // Each child drained on SIGTERM and said so in its own log.
    let logs = suite.dir.path().join("hass-sidecars-data/logs");
    for log in [
        "hass-broker",
        "hass-exporter",
        "hass-serial-bridge",
        "hass-config-watcher",
    ] {
        let text = std::fs::read_to_string(logs.join(format!("{log}.log"))).expect("child log");
        assert!(text.contains("stopped cleanly"), "{log}:\n{text}");
    }
}

#[test]
fn a_child_that_dies_is_reported_and_restarted() {
    let suite = start();
    let kids = children(suite.process.pid());
    let (bridge, _) = kids
        .iter()
        .find(|(_, name)| name == "hass-serial-bri")
        .cloned()
        .unwrap_or_else(|| panic!("no bridge among {kids:?}"));
    kill(Pid::from_raw(bridge), Signal::SIGKILL).expect("kill the bridge");
    let reported = wait_for(Duration::from_secs(5), || {
        let reply = http::get(suite.admin, "/readyz").ok()?;
        (reply.status == 503 && reply.body.contains("child:serial-bridge")).then_some(reply.body)
    });
    assert!(reported.is_some(), "readiness did not drop");
    let back = wait_for(Duration::from_secs(15), || {
        (http::get(suite.admin, "/readyz").ok()?.status == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "not ready again; stderr:\n{}",
        suite.process.stderr()
    );
    let stderr = suite.process.stderr();
    assert!(stderr.contains("child exited"), "{stderr}");
    assert!(stderr.contains("serial-bridge"), "{stderr}");
    let restarted = children(suite.process.pid())
        .into_iter()
        .any(|(pid, name)| name == "hass-serial-bri" && pid != bridge);
    assert!(restarted);
}

#[test]
fn a_missing_binary_is_named_with_the_build_command() {
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("hass-suite");
    std::fs::copy(BIN, &lonely).unwrap();
    let mut cmd = Command::new(&lonely);
    cmd.current_dir(dir.path())
        .args(["--admin-listen", &free_addr().to_string()]);
    let (status, _, stderr) = run(cmd).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
    assert!(stderr.contains("cargo build --workspace"), "{stderr}");
    assert!(Path::new(&dir.path().join("hass-sidecars-data")).is_dir());
}
