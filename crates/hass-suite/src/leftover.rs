//! Processes an earlier suite left running when it was killed outright
//! (`kill -9`, the OOM killer). The sidecars follow the suite by themselves;
//! PostgreSQL and socat cannot be asked to, so each start stops what the
//! last one left before it needs the port or the device again.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{info, warn};

/// Stops the process whose PID is the first line of `pidfile`, if it is
/// still running a program named `comm` (a PID may have been reused since):
/// `signal`, then SIGKILL if it has not exited within `grace`. Returns the
/// PID it stopped.
pub(crate) fn stop_leftover(
    pidfile: &Path,
    comm: &str,
    signal: Signal,
    grace: Duration,
) -> Option<i32> {
    let text = std::fs::read_to_string(pidfile).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 1 || !running(pid, comm) {
        return None;
    }
    info!(
        pid,
        program = comm,
        pidfile = %pidfile.display(),
        "stopping what an earlier run left running"
    );
    let _ = kill(Pid::from_raw(pid), signal);
    let deadline = Instant::now() + grace;
    while running(pid, comm) {
        if Instant::now() >= deadline {
            warn!(
                pid,
                program = comm,
                "did not stop within {grace:?}; killing it"
            );
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(pid)
}

/// Whether `pid` is alive (a zombie is not) and runs `comm`.
pub(crate) fn running(pid: i32, comm: &str) -> bool {
    let named = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|name| name.trim_end() == comm);
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, tail) = stat.rsplit_once(')')?;
            tail.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false);
    named && alive
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn stops_the_named_process_and_leaves_others_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = i32::try_from(sleeper.id()).unwrap();
        let pidfile = dir.path().join("sleep.pid");
        std::fs::write(&pidfile, format!("{pid}\n/some/dir\n")).unwrap();

        // Another program's name: a reused PID is not ours to stop.
        let grace = Duration::from_secs(5);
        assert_eq!(
            stop_leftover(&pidfile, "postgres", Signal::SIGTERM, grace),
            None
        );
        assert!(running(pid, "sleep"));

        assert_eq!(
            stop_leftover(&pidfile, "sleep", Signal::SIGTERM, grace),
            Some(pid)
        );
        let status = sleeper.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(15)
        );
        // Gone now (and reaped): nothing to stop, and no missing file either.
        assert_eq!(
            stop_leftover(&pidfile, "sleep", Signal::SIGTERM, grace),
            None
        );
        assert_eq!(
            stop_leftover(
                &dir.path().join("none.pid"),
                "sleep",
                Signal::SIGTERM,
                grace
            ),
            None
        );
    }
}
