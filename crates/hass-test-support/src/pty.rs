//! A pair of connected pseudo-terminals made by socat, standing in for a USB
//! serial stick: the bridge opens `device()` as if it were
//! `/dev/serial/by-id/...`, and the test plays the stick's firmware on `peer()`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::wait_for;

#[derive(Debug)]
pub struct PtyPair {
    socat: Child,
    dir: TempDir,
}

impl PtyPair {
    /// Starts socat and waits until both link paths exist.
    pub fn new() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("hass-pty-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let end = |name: &str| {
            // raw + echo=0: bytes pass untouched, as on a real serial line.
            format!("pty,raw,echo=0,link={}", dir.path().join(name).display())
        };
        let mut socat = Command::new("socat")
            .arg(end("device"))
            .arg(end("peer"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot run socat ({e}); install Debian's socat (the README's test command does)")
            })?;
        let linked = wait_for(Duration::from_secs(5), || {
            (dir.path().join("device").exists() && dir.path().join("peer").exists()).then_some(())
        });
        if linked.is_none() {
            let _ = socat.kill();
            let _ = socat.wait();
            return Err("socat did not create the pty links within 5 s".to_owned());
        }
        Ok(Self { socat, dir })
    }

    /// The path the code under test opens, like a `/dev/serial/by-id/` link.
    pub fn device(&self) -> PathBuf {
        self.dir.path().join("device")
    }

    /// The other end, where the test reads and writes as the stick.
    pub fn peer(&self) -> PathBuf {
        self.dir.path().join("peer")
    }

    /// The folder holding both links.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Removes the pair as an unplugged stick vanishes: the links go away and
    /// open handles see the line drop.
    pub fn unplug(&mut self) {
        let _ = self.socat.kill();
        let _ = self.socat.wait();
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        self.unplug();
    }
}
