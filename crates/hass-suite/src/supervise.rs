//! One child process under supervision: started, its `/readyz` mirrored into
//! the suite's readiness, restarted with backoff when it dies, and stopped
//! with SIGTERM (then SIGKILL after a deadline) when the suite stops.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hass_runtime::backoff::Backoff;
use hass_runtime::readiness::ReadinessCheck;
use hass_runtime::shutdown::Shutdown;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tracing::{error, info, warn};

/// How long a child may take to stop after SIGTERM before it is killed; its
/// own `--drain-timeout` is shorter.
const STOP_DEADLINE: Duration = Duration::from_secs(15);
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A child to run: one of the suite's binaries with its arguments.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// The binary's name without `hass-`, e.g. `broker`.
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// How to tell it is ready.
    pub probe: Probe,
    /// Its stdout and stderr, appended across restarts.
    pub log: PathBuf,
    /// The uid and gid to run as (PostgreSQL under root); None: the suite's.
    pub run_as: Option<(u32, u32)>,
    /// What asks it to stop cleanly.
    pub stop_signal: Signal,
    /// Whether it ends with the suite: hass-sidecars binaries do, through
    /// [`hass_runtime::parent`], when the suite dies without stopping them.
    pub follows_suite: bool,
}

/// How the suite tells a child is ready.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// A hass-sidecars binary: `GET /readyz` on its admin port is 200.
    Readyz(SocketAddr),
    /// Anything else (PostgreSQL): it accepts TCP connections.
    Tcp(SocketAddr),
}

impl Probe {
    async fn check(self) -> Result<(), String> {
        match self {
            Self::Readyz(addr) => readyz(addr).await,
            Self::Tcp(addr) => {
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| format!("{addr}: connect timed out"))?
                    .map(drop)
                    .map_err(|e| format!("{addr}: {e}"))
            }
        }
    }
}

/// The folder of the running executable, where the other binaries are built.
pub(crate) fn own_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    exe.parent()
        .map(PathBuf::from)
        .ok_or_else(|| format!("{} has no folder", exe.display()))
}

/// Runs `spec` until `shutdown`, restarting it when it exits.
pub(crate) async fn supervise(spec: ChildSpec, check: ReadinessCheck, shutdown: Shutdown) {
    let mut backoff = Backoff::new(Duration::from_secs(1), BACKOFF_MAX);
    loop {
        let started = Instant::now();
        let mut child = match spawn(&spec) {
            Ok(child) => child,
            Err(e) => {
                error!(child = spec.name, "{e}");
                check.set_not_ready(e);
                if !shutdown.sleep(backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        };
        info!(child = spec.name, pid = child.id(), log = %spec.log.display(), "started");
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        let status = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                () = shutdown.cancelled() => break None,
                _ = probe.tick() => {
                    match spec.probe.check().await {
                        Ok(()) => check.set_ready(),
                        Err(e) => check.set_not_ready(e),
                    }
                }
            }
        };
        let Some(status) = status else {
            terminate(&mut child, spec.name, spec.stop_signal, STOP_DEADLINE).await;
            return;
        };
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        check.set_not_ready(format!("exited ({status}); restarting"));
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        error!(
            child = spec.name,
            %status,
            restart_in = ?wait,
            "child exited; the end of its log ({}):\n{}",
            spec.log.display(),
            log_tail(&spec.log)
        );
        if !shutdown.sleep(wait).await {
            return;
        }
    }
}

fn spawn(spec: &ChildSpec) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| format!("cannot open {}: {e}", spec.log.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", spec.log.display()))?;
    let mut command = Command::new(&spec.program);
    if let Some((uid, gid)) = spec.run_as {
        command.uid(uid).gid(gid);
    }
    if spec.follows_suite {
        command.env(
            hass_runtime::parent::PARENT_PID_ENV,
            std::process::id().to_string(),
        );
    }
    command
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // A suite that dies without stopping its children must not leave
        // them holding the ports: dropping the handle kills the child.
        .kill_on_drop(true)
        // Out of the terminal's process group: Ctrl-C reaches the suite
        // only, which then stops each child once. A child signalled by the
        // terminal too would take the suite's SIGTERM as a second signal
        // and exit at once, without draining.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.program.display()))
}

/// `signal`, then SIGKILL if `child` has not exited within `deadline`.
pub(crate) async fn terminate(child: &mut Child, name: &str, signal: Signal, deadline: Duration) {
    let Some(pid) = child.id() else {
        return; // already reaped
    };
    let _ = kill(Pid::from_raw(pid as i32), signal);
    match tokio::time::timeout(deadline, child.wait()).await {
        // socat, unlike the sidecars, ends on SIGTERM by the signal itself
        // (or exits 128 + its number).
        Ok(Ok(status))
            if status.success()
                || status.signal() == Some(signal as i32)
                || status.code() == Some(128 + signal as i32) =>
        {
            info!(child = name, "stopped cleanly");
        }
        Ok(Ok(status)) => warn!(child = name, %status, "stopped"),
        Ok(Err(e)) => warn!(child = name, "cannot wait for it: {e}"),
        Err(_) => {
            warn!(
                child = name,
                ?deadline,
                "still running after SIGTERM; killing it"
            );
            let _ = child.kill().await;
        }
    }
}

/// `GET /readyz` as HTTP/1.0; Ok on a 200.
async fn readyz(addr: SocketAddr) -> Result<(), String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("admin {addr}: {e}"))?;
        stream
            .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .map_err(|e| format!("admin {addr}: {e}"))?;
        let mut reply = Vec::new();
        stream
            .read_to_end(&mut reply)
            .await
            .map_err(|e| format!("admin {addr}: {e}"))?;
        let reply = String::from_utf8_lossy(&reply);
        let status = reply.split(' ').nth(1).unwrap_or_default();
        if status == "200" {
            Ok(())
        } else {
            let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
            Err(format!(
                "/readyz {status}: {}",
                body.trim().replace('\n', "; ")
            ))
        }
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or_else(|_| Err(format!("admin {addr}: /readyz timed out")))
}

fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}
