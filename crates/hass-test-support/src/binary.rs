//! A built binary running as a child process, the way kubelet runs it: probed
//! over its admin port, stopped with SIGTERM, judged by its exit code and logs.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{http, wait_for};

/// A running binary whose stdout and stderr are kept in files for assertions.
#[derive(Debug)]
pub struct SpawnedBinary {
    child: Child,
    logs: TempDir,
}

impl SpawnedBinary {
    /// Spawns `command` with stdout and stderr captured.
    pub fn spawn(mut command: Command) -> Result<Self, String> {
        let logs = tempfile::Builder::new()
            .prefix("hass-bin-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let file = |name: &str| {
            fs::File::create(logs.path().join(name)).map_err(|e| format!("log file: {e}"))
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(file("stdout")?)
            .stderr(file("stderr")?)
            .spawn()
            .map_err(|e| format!("cannot spawn {:?}: {e}", command.get_program()))?;
        Ok(Self { child, logs })
    }

    /// Resident memory (bytes) and CPU time used so far (user + system), from
    /// `/proc`; `None` once the process is gone.
    pub fn usage(&self) -> Option<(u64, Duration)> {
        process_usage(self.child.id())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `GET /readyz` on `admin` answers 200. On timeout, or if the
    /// process exits first, the error carries its stderr.
    pub fn wait_ready(&mut self, admin: SocketAddr, timeout: Duration) -> Result<(), String> {
        let outcome = wait_for(timeout, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(Err(format!("exited with {status} before becoming ready")));
            }
            match http::get(admin, "/readyz") {
                Ok(reply) if reply.status == 200 => Some(Ok(())),
                _ => None,
            }
        });
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(format!("{e}; stderr:\n{}", self.stderr())),
            None => Err(format!(
                "/readyz on {admin} not 200 within {timeout:?}; stderr:\n{}",
                self.stderr()
            )),
        }
    }

    /// The address a log line says was bound: the first stderr line
    /// containing `message`, its `field=ADDR` (`admin` of the runtime's
    /// "started" line, `address` of a listener's). For binaries started on
    /// port 0, which the kernel picks, so no two tests race for a port.
    pub fn logged_addr(
        &mut self,
        message: &str,
        field: &str,
        timeout: Duration,
    ) -> Result<SocketAddr, String> {
        let key = format!("{field}=");
        let found = wait_for(timeout, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(Err(format!(
                    "exited with {status} before logging {message:?}"
                )));
            }
            self.stderr()
                .lines()
                .filter(|line| line.contains(message))
                .find_map(|line| {
                    let at = line.find(&key)? + key.len();
                    line[at..].split_whitespace().next()?.parse().ok()
                })
                .map(Ok)
        });
        match found {
            Some(Ok(addr)) => Ok(addr),
            Some(Err(e)) => Err(format!("{e}; stderr:\n{}", self.stderr())),
            None => Err(format!(
                "no {message:?} line with {field}= within {timeout:?}; stderr:\n{}",
                self.stderr()
            )),
        }
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, || self.child.try_wait().ok().flatten())
    }

    pub fn stdout(&self) -> String {
        self.read_log("stdout")
    }

    pub fn stderr(&self) -> String {
        self.read_log("stderr")
    }

    fn read_log(&self, name: &str) -> String {
        fs::read_to_string(self.logs.path().join(name)).unwrap_or_default()
    }
}

impl Drop for SpawnedBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary a test kills, stops and starts again: one run at a time, the
/// stderr of every run kept, so a failure shows the whole story.
#[derive(Debug, Default)]
pub struct Restartable {
    current: Option<SpawnedBinary>,
    earlier_logs: String,
}

impl Restartable {
    /// The next run; the one before must have ended.
    pub fn started(&mut self, process: SpawnedBinary) {
        assert!(self.current.is_none(), "still running");
        self.current = Some(process);
    }

    /// The current run, if any.
    pub fn running(&self) -> Option<&SpawnedBinary> {
        self.current.as_ref()
    }

    pub fn running_mut(&mut self) -> Option<&mut SpawnedBinary> {
        self.current.as_mut()
    }

    /// SIGKILL: no drain, no flush, as an OOM kill or a node lost.
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.current.take() {
            process.signal(Signal::SIGKILL);
            process.wait_exit(Duration::from_secs(10));
            self.earlier_logs.push_str(&process.stderr());
        }
    }

    /// SIGTERM, as kubelet stops a container; the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut process = self.current.take()?;
        process.signal(Signal::SIGTERM);
        let status = process.wait_exit(Duration::from_secs(20));
        self.earlier_logs.push_str(&process.stderr());
        status.and_then(|s| s.code())
    }

    /// The stderr of every run so far, the current one last.
    pub fn logs(&self) -> String {
        let current = self
            .current
            .as_ref()
            .map(SpawnedBinary::stderr)
            .unwrap_or_default();
        format!("{}{current}", self.earlier_logs)
    }
}

/// Runs `command` to completion, returning its exit status, stdout and stderr.
pub fn run(mut command: Command) -> Result<(ExitStatus, String, String), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
    Ok((
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// A binary of this workspace, found beside the running test executable
/// (`target/<profile>/`), for tests that start another crate's binary.
pub fn workspace_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // Test executables live in target/<profile>/deps/.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("test executable has no profile directory")?;
    let path = profile_dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not built: run `cargo build --workspace` first (cargo test --workspace does)",
            path.display()
        ))
    }
}

/// Resident memory (bytes) and CPU time (user + system) of process `pid`,
/// from `/proc`; `None` when it is gone.
pub fn process_usage(pid: u32) -> Option<(u64, Duration)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t as u64);
    Some((
        rss_kib * 1024,
        Duration::from_millis(ticks * 1000 / per_second),
    ))
}
