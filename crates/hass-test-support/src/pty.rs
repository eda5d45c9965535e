//! A pair of connected pseudo-terminals made by socat, standing in for a USB
//! serial stick that can be unplugged and plugged back at the same path, as
//! `/dev/serial/by-id/...` links behave: the bridge opens `device()`, and the
//! test plays the stick's firmware on `peer()`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::wait_for;

#[derive(Debug)]
pub struct PtyPair {
    dir: TempDir,
    socat: Option<Child>,
    /// socat options for the device end (owner, mode).
    device_options: &'static str,
}

impl PtyPair {
    /// A plugged-in stick.
    pub fn new() -> Self {
        let mut pair = Self::unplugged();
        pair.plug();
        pair
    }

    /// A stick whose path does not exist yet.
    pub fn unplugged() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("hass-stick-")
                .tempdir()
                .expect("temp dir"),
            socat: None,
            device_options: "",
        }
    }

    /// A device node as udev makes one for a USB stick: group dialout (20),
    /// mode 0660, for a bridge that runs as a non-root user in that group.
    pub fn owned_by_dialout() -> Self {
        let mut pair = Self::unplugged();
        pair.device_options = ",group=20,perm=0660";
        pair.plug();
        pair
    }

    /// The path the code under test opens, like a `/dev/serial/by-id/` link.
    pub fn device(&self) -> PathBuf {
        self.dir.path().join("device")
    }

    /// The device node behind the link: what a device plugin hands out.
    pub fn device_node(&self) -> PathBuf {
        std::fs::canonicalize(self.device()).expect("the device link resolves")
    }

    /// The other end, where the test reads and writes as the stick.
    pub fn peer(&self) -> PathBuf {
        self.dir.path().join("peer")
    }

    /// The folder holding both links.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts socat and waits until both links exist.
    pub fn plug(&mut self) {
        assert!(self.socat.is_none(), "already plugged");
        let end = |name: &str, options: &str| {
            // raw + echo=0: bytes pass untouched, as on a real serial line.
            format!(
                "pty,raw,echo=0,link={}{options}",
                self.dir.path().join(name).display()
            )
        };
        let socat = Command::new("socat")
            .arg(end("device", self.device_options))
            .arg(end("peer", ""))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run socat; install Debian's socat (the README's test command does)");
        self.socat = Some(socat);
        let linked = wait_for(Duration::from_secs(5), || {
            (self.device().exists() && self.peer().exists()).then_some(())
        });
        assert!(linked.is_some(), "socat made no pty links within 5 s");
    }

    /// The stick vanishes: socat ends (open handles see the line drop) and
    /// the links go, as udev removes by-id links.
    pub fn unplug(&mut self) {
        if let Some(mut socat) = self.socat.take() {
            let _ = kill(Pid::from_raw(socat.id() as i32), Signal::SIGTERM);
            let _ = socat.wait();
        }
        let _ = std::fs::remove_file(self.device());
        let _ = std::fs::remove_file(self.peer());
    }

    /// Opens the stick's side for reading and writing, without making it
    /// the test's controlling terminal.
    pub fn open_peer(&self) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(self.peer())
            .expect("open the stick's end")
    }
}

impl Default for PtyPair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        self.unplug();
    }
}
