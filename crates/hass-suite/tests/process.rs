//! The binary as kubelet and an operator meet it: flags and env, config
//! errors, exit codes, signals and logs.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hass_test_support::binary::run;
use hass_test_support::{SpawnedBinary, free_addr, http, openmetrics};
use nix::sys::signal::Signal;

const BIN: &str = env!("CARGO_BIN_EXE_hass-suite");

fn suite(dir: &Path, admin: SocketAddr) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .arg("--admin-listen")
        .arg(admin.to_string());
    cmd
}

/// Every port the suite opens, moved to free ones so tests never collide, plus
/// `extra` YAML; written as `suite.yaml` in `dir`.
fn config_with_free_ports(dir: &Path, extra: &str) -> std::path::PathBuf {
    let port = || hass_test_support::free_port();
    let yaml = format!(
        "ports:\n  mqtt: {}\n  mqtt_ws: {}\n  serial: {}\n  broker_admin: {}\n  bridge_admin: {}\n  watcher_admin: {}\n  exporter_admin: {}\n  postgres: {}\n{extra}",
        port(),
        port(),
        port(),
        port(),
        port(),
        port(),
        port(),
        port()
    );
    write(dir, "suite.yaml", &yaml)
}

/// The suite with all its children on free ports.
fn running_suite(dir: &Path, admin: SocketAddr, extra: &str) -> Command {
    let config = config_with_free_ports(dir, extra);
    let mut cmd = suite(dir, admin);
    cmd.arg("--config").arg(config);
    cmd
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

#[test]
fn serves_admin_endpoints_and_exits_zero_on_sigterm_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let mut cmd = running_suite(dir.path(), admin, "");
    cmd.args(["--drain-timeout", "3s"]);
    let mut bin = SpawnedBinary::spawn(cmd).unwrap();
    bin.wait_ready(admin, Duration::from_secs(30)).unwrap();

    assert!(dir.path().join("hass-sidecars-data").is_dir());
    assert_eq!(http::get(admin, "/healthz").unwrap().status, 200);
    let families = openmetrics::parse(&http::get(admin, "/metrics").unwrap().body).unwrap();
    let build = openmetrics::find(&families, "hass_suite_build").expect("build info");
    assert_eq!(
        build.samples[0].labels["version"],
        env!("CARGO_PKG_VERSION")
    );

    let sent = Instant::now();
    bin.signal(Signal::SIGTERM);
    let status = bin
        .wait_exit(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("still running 3 s after SIGTERM; stderr:\n{}", bin.stderr()));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", bin.stderr());
    assert!(sent.elapsed() < Duration::from_secs(3));
    let stderr = bin.stderr();
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
}

#[test]
fn sigint_stops_it_too() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let mut bin = SpawnedBinary::spawn(running_suite(dir.path(), admin, "")).unwrap();
    bin.wait_ready(admin, Duration::from_secs(30)).unwrap();
    bin.signal(Signal::SIGINT);
    let status = bin.wait_exit(Duration::from_secs(20)).expect("exited");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", bin.stderr());
}

#[test]
fn unknown_config_key_exits_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "suite.yaml",
        "data_dir: /tmp/x\nhome_assistant:\n  url: http://ha:8123\n  tokn: { file: /run/t }\n",
    );
    let mut cmd = suite(dir.path(), free_addr());
    cmd.arg("--config").arg(&config);
    let (status, _, stderr) = run(cmd).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    let expected = format!(
        "{}:4:3: home_assistant.tokn: unknown field `tokn`",
        config.display()
    );
    assert!(
        stderr.contains(&expected),
        "want {expected:?} in:\n{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one clear line:\n{stderr}");
}

#[test]
fn wrong_type_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "suite.yaml", "home_assistant:\n  url: [1, 2]\n");
    let mut cmd = suite(dir.path(), free_addr());
    cmd.arg("--config").arg(&config);
    let (status, _, stderr) = run(cmd).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(":2:8: home_assistant.url:"), "{stderr}");
}

#[test]
fn missing_config_file_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = suite(dir.path(), free_addr());
    cmd.args(["--config", "/nonexistent/suite.yaml"]);
    let (status, _, stderr) = run(cmd).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/suite.yaml: cannot read config file"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unreadable_secret_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "suite.yaml",
        "home_assistant:\n  token: { file: /nonexistent/ha-token }\n",
    );
    let mut cmd = suite(dir.path(), free_addr());
    cmd.arg("--config").arg(&config);
    let (status, _, stderr) = run(cmd).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("home_assistant.token: cannot read secret file /nonexistent/ha-token"),
        "{stderr}"
    );
}

#[test]
fn port_in_use_exits_1_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap();
    let (status, _, stderr) = run(suite(dir.path(), admin)).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("admin server: cannot listen on {admin}")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn bad_flag_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = suite(dir.path(), free_addr());
    cmd.args(["--drain-timeout", "soon"]);
    let (status, _, stderr) = run(cmd).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--drain-timeout"), "{stderr}");
}

#[test]
fn check_config_validates_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    // Holding the admin port proves --check-config never binds it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap();
    let good = write(dir.path(), "good.yaml", "data_dir: ./state\n");
    let mut cmd = suite(dir.path(), admin);
    cmd.arg("--check-config").arg("--config").arg(&good);
    let (status, _, stderr) = run(cmd).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("configuration is valid"), "{stderr}");
    assert!(
        !dir.path().join("state").exists(),
        "check-config must not act"
    );

    let bad = write(dir.path(), "bad.yaml", "home_assistant:\n  url: ftp://ha\n");
    let mut cmd = suite(dir.path(), admin);
    cmd.arg("--check-config").arg("--config").arg(&bad);
    let (status, _, stderr) = run(cmd).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("home_assistant.url"), "{stderr}");
}

#[test]
fn every_flag_reads_its_env_var() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let config = config_with_free_ports(dir.path(), "data_dir: ./from-env\n");
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .env("HASS_SUITE_ADMIN_LISTEN", admin.to_string())
        .env("HASS_SUITE_CONFIG", &config)
        .env("HASS_SUITE_LOG_FORMAT", "json");
    let mut bin = SpawnedBinary::spawn(cmd).unwrap();
    bin.wait_ready(admin, Duration::from_secs(30)).unwrap();
    assert!(dir.path().join("from-env").is_dir());
    bin.signal(Signal::SIGTERM);
    assert_eq!(
        bin.wait_exit(Duration::from_secs(20))
            .and_then(|s| s.code()),
        Some(0)
    );
    for line in bin.stderr().lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not a JSON log line: {line}"
        );
    }
}

#[test]
fn secrets_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let token = "eyJhbGciOiJIUzI1NiJ9.hunter2-long-lived-token";
    write(dir.path(), "ha-token", &format!("{token}\n"));
    let config = config_with_free_ports(
        dir.path(),
        "home_assistant:\n  token: { file: ./ha-token }\n",
    );
    for format in ["text", "json"] {
        let mut cmd = suite(dir.path(), admin);
        cmd.env("RUST_LOG", "trace")
            .args(["--log-format", format])
            .arg("--config")
            .arg(&config);
        let mut bin = SpawnedBinary::spawn(cmd).unwrap();
        bin.wait_ready(admin, Duration::from_secs(30)).unwrap();
        bin.signal(Signal::SIGTERM);
        bin.wait_exit(Duration::from_secs(20)).expect("exited");
        let logs = bin.stderr() + &bin.stdout();
        // The children got the token as a file reference, never its value.
        let run_dir = dir.path().join("hass-sidecars-data/run");
        for entry in std::fs::read_dir(&run_dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
            assert!(!text.contains("hunter2"), "token copied into {text}");
        }
        // The effective configuration is logged, with the token redacted.
        assert!(logs.contains("effective configuration"), "{logs}");
        assert!(logs.contains("REDACTED"), "{logs}");
        assert!(
            !logs.contains("hunter2"),
            "token leaked in {format} logs:\n{logs}"
        );
    }
}

#[test]
fn a_supervisor_gone_before_start_means_no_start() {
    // HASS_PARENT_PID names the supervisor; if our parent is someone else,
    // that supervisor died before we could ask to follow it.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = suite(dir.path(), free_addr());
    cmd.env("HASS_PARENT_PID", "1");
    let (status, _, stderr) = run(cmd).expect("run hass-suite");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the supervisor (pid 1) is gone; not starting"),
        "{stderr}"
    );
    let mut cmd = suite(dir.path(), free_addr());
    cmd.env("HASS_PARENT_PID", "someone");
    let (status, _, stderr) = run(cmd).expect("run hass-suite");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("HASS_PARENT_PID"), "{stderr}");
}
