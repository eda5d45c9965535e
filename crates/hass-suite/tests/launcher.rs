//! The newcomer's run: the suite starts every part, prints endpoints that
//! work with real clients, reports and restarts a child that dies, and stops
//! every child on SIGTERM. Needs the other binaries built beside hass-suite
//! (`cargo build --workspace`; `cargo test --workspace` does).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

use hass_test_support::binary::run;
use hass_test_support::{SpawnedBinary, free_addr, free_port, http, openmetrics, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_hass-suite");

/// A running suite with every port moved to a free one.
struct Running {
    /// Shared by a second suite started in the same folder.
    dir: Rc<tempfile::TempDir>,
    admin: SocketAddr,
    exporter: SocketAddr,
    process: SpawnedBinary,
}

fn start() -> Running {
    start_with(|_| {})
}

/// `start`, with `adjust` applied to the command first.
fn start_with(adjust: impl FnOnce(&mut Command)) -> Running {
    start_full(free_port(), adjust)
}

/// `start_with`, the recorder database on `postgres`.
fn start_full(postgres: u16, adjust: impl FnOnce(&mut Command)) -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    // Under root the recorder database runs as `postgres`, which must be
    // able to enter the data folder.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the temp dir");
    let admin = free_addr();
    let exporter = free_port();
    let yaml = format!(
        "ports:\n  mqtt: {}\n  mqtt_ws: {}\n  serial: {}\n  broker_admin: {}\n  bridge_admin: {}\n  watcher_admin: {}\n  exporter_admin: {exporter}\n  postgres: {postgres}\n",
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    std::fs::write(dir.path().join("suite.yaml"), yaml).expect("suite.yaml");
    launch(
        Rc::new(dir),
        admin,
        SocketAddr::from(([127, 0, 0, 1], exporter)),
        adjust,
    )
}

/// Starts the suite in `dir`, whose suite.yaml is there already.
fn launch(
    dir: Rc<tempfile::TempDir>,
    admin: SocketAddr,
    exporter: SocketAddr,
    adjust: impl FnOnce(&mut Command),
) -> Running {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .env_remove("RUST_LOG")
        .args(["--config", "suite.yaml", "--admin-listen"])
        .arg(admin.to_string());
    adjust(&mut cmd);
    let mut process = SpawnedBinary::spawn(cmd).expect("spawn hass-suite");
    process
        .wait_ready(admin, Duration::from_secs(30))
        .expect("suite ready");
    Running {
        dir,
        admin,
        exporter,
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

impl Running {
    /// Each sidecar's own log says it drained and stopped, on one signal (a
    /// second would have made it exit at once).
    fn assert_children_drained_once(&self) {
        let logs = self.dir.path().join("hass-sidecars-data/logs");
        for log in [
            "hass-broker",
            "hass-exporter",
            "hass-serial-bridge",
            "hass-config-watcher",
        ] {
            let text = std::fs::read_to_string(logs.join(format!("{log}.log"))).expect("child log");
            assert!(!text.contains("exiting now"), "{log}:\n{text}");
            assert!(text.contains("stopped cleanly"), "{log}:\n{text}");
        }
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

    // Home Assistant's recorder URL works as printed, on its own database.
    let db_url = field(&banner, "Recorder DB");
    assert!(
        db_url.starts_with("postgresql://homeassistant:") && db_url.ends_with("/homeassistant"),
        "{banner}"
    );
    assert!(banner.contains(&format!("db_url: {db_url}")), "{banner}");
    let mut psql = Command::new("psql");
    psql.arg(db_url)
        .args(["--no-psqlrc", "--tuples-only", "--no-align"])
        .args(["--command", "SELECT current_database(), current_user"]);
    let (status, stdout, stderr) = run(psql).expect("psql (Debian's postgresql-client)");
    assert!(status.success(), "psql: {stderr}");
    assert_eq!(stdout.trim(), "homeassistant|homeassistant");
    // …and only with the password.
    let mut wrong = Command::new("psql");
    wrong
        .arg(db_url.replacen("homeassistant:", "homeassistant:x", 1))
        .args(["--no-psqlrc", "--command", "SELECT 1"]);
    let (status, _, stderr) = run(wrong).expect("psql");
    assert!(!status.success());
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );

    // The exporter sees the broker, the bridge and the database up.
    for metric in [
        "hass_exporter_broker_up",
        "hass_exporter_bridge_up",
        "hass_exporter_bridge_device_up",
        "hass_exporter_postgres_up",
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
        "postgres",
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
    // PostgreSQL shut down cleanly (SIGINT, "fast"), not killed.
    let data = suite.dir.path().join("hass-sidecars-data/postgres/data");
    assert!(data.join("PG_VERSION").is_file());
    assert!(
        !data.join("postmaster.pid").exists(),
        "postgres left its pid file"
    );
    let log = std::fs::read_to_string(
        suite
            .dir
            .path()
            .join("hass-sidecars-data/logs/postgres.log"),
    )
    .unwrap();
    assert!(log.contains("database system is shut down"), "{log}");
    // Each child drained on SIGTERM and said so in its own log.
    suite.assert_children_drained_once();
}

#[test]
fn ctrl_c_in_a_terminal_stops_every_child_cleanly() {
    // A terminal's Ctrl-C is SIGINT to its whole foreground process group:
    // here the suite leads a group of its own, as a shell would start it.
    let mut suite = start_with(|cmd| {
        std::os::unix::process::CommandExt::process_group(cmd, 0);
    });
    suite.banner();
    let pid = suite.process.pid() as i32;
    kill(Pid::from_raw(-pid), Signal::SIGINT).expect("SIGINT to the group");
    let status = suite
        .process
        .wait_exit(Duration::from_secs(20))
        .expect("the suite exits after Ctrl-C");
    let stderr = suite.process.stderr();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    // Each child was asked once and drained; none took a second signal.
    for child in [
        "broker",
        "exporter",
        "serial-bridge",
        "config-watcher",
        "postgres",
        "socat",
    ] {
        assert!(
            stderr.contains(&format!("stopped cleanly child=\"{child}\"")),
            "{child}: {stderr}"
        );
    }
    suite.assert_children_drained_once();
}

/// Whether `pid` is still a live process (a zombie waiting for a reaper is not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, tail) = stat.rsplit_once(')')?;
            tail.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

#[test]
fn a_killed_suite_leaves_no_sidecar_running() {
    let mut suite = start();
    let kids = children(suite.process.pid());
    let (sidecars, others): (Vec<_>, Vec<_>) = kids
        .into_iter()
        .partition(|(_, name)| name.starts_with("hass-"));
    assert_eq!(sidecars.len(), 4, "{sidecars:?}");
    suite.process.signal(Signal::SIGKILL);
    suite
        .process
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    // The kernel's parent-death SIGTERM: each drains and exits on its own.
    let gone = wait_for(Duration::from_secs(15), || {
        sidecars.iter().all(|(pid, _)| !alive(*pid)).then_some(())
    });
    let left: Vec<_> = sidecars.iter().filter(|(pid, _)| alive(*pid)).collect();
    // PostgreSQL and socat cannot follow the suite; tidy them up here.
    for (pid, _) in others.iter().chain(left.iter().copied()) {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    assert!(
        gone.is_some(),
        "still running after the suite's kill -9: {left:?}"
    );
}

/// PostgreSQL and socat cannot follow a suite killed with SIGKILL; the next
/// start in the same folder stops them instead of finding the database port
/// taken.
#[test]
fn the_next_start_stops_what_a_killed_suite_left_running() {
    let mut first = start();
    let banner = first.banner();
    let kids = children(first.process.pid());
    let leftovers: Vec<(i32, String)> = kids
        .iter()
        .filter(|(_, name)| name == "postgres" || name == "socat")
        .cloned()
        .collect();
    // The README's test command installs both.
    assert_eq!(leftovers.len(), 2, "{kids:?}\n{banner}");
    first.process.signal(Signal::SIGKILL);
    first
        .process
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    // The sidecars follow it (and free their ports); these two do not.
    let sidecars_gone = wait_for(Duration::from_secs(15), || {
        kids.iter()
            .filter(|(_, name)| name.starts_with("hass-"))
            .all(|(pid, _)| !alive(*pid))
            .then_some(())
    });
    assert!(sidecars_gone.is_some(), "{kids:?}");
    assert!(
        leftovers.iter().all(|(pid, _)| alive(*pid)),
        "{leftovers:?}"
    );

    let second = launch(Rc::clone(&first.dir), first.admin, first.exporter, |_| {});
    let banner = second.banner();
    let left: Vec<_> = leftovers.iter().filter(|(pid, _)| alive(*pid)).collect();
    for (pid, _) in &left {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    assert!(left.is_empty(), "still running: {left:?}");
    assert!(banner.contains("db_url"), "{banner}");
    assert!(!banner.contains("skipped"), "{banner}");
    let names: Vec<String> = children(second.process.pid())
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert!(names.iter().any(|n| n == "postgres"), "{names:?}");
    assert!(names.iter().any(|n| n == "socat"), "{names:?}");
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
fn a_taken_database_port_skips_the_database_and_says_why() {
    // Another PostgreSQL already on the port: the suite must not probe it as
    // its own, nor print a URL that points at it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let suite = start_full(port, |_| {});
    let banner = suite.banner();
    assert!(
        banner.contains(&format!(
            "Recorder DB      skipped: 127.0.0.1:{port} is taken"
        )),
        "{banner}"
    );
    assert!(
        banner.contains("set ports.postgres to a free port"),
        "{banner}"
    );
    assert!(!banner.contains("db_url"), "{banner}");
    let names: Vec<String> = children(suite.process.pid())
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert!(!names.iter().any(|n| n == "postgres"), "{names:?}");
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
