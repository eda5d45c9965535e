//! A real Mosquitto (Debian's 2.0.11) on a free loopback port, with one user
//! in a password file made by `mosquitto_passwd`: the anchor tests compare
//! against, the peer the exporter probes, and the writer of the
//! `mosquitto.db` a user brings when moving to hass-broker.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::{SpawnedBinary, free_addr, wait_for};

/// Adds or changes `user` in the Mosquitto password file `passwd` (made
/// empty if missing) with `mosquitto_passwd`, as an operator does.
pub fn add_user(passwd: &Path, user: &str, password: &str) {
    if !passwd.exists() {
        std::fs::write(passwd, "").expect("passwd file");
    }
    let status = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(passwd)
        .args([user, password])
        .status()
        .expect("mosquitto_passwd (Debian's mosquitto package; scripts/test installs it)");
    assert!(status.success(), "mosquitto_passwd failed");
}

#[derive(Debug)]
pub struct Mosquitto {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    process: Option<SpawnedBinary>,
}

impl Mosquitto {
    /// Starts Mosquitto with `user`/`password` and `extra` lines appended
    /// to its config; `{dir}` in `extra` stands for its directory.
    pub fn start(user: &str, password: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let passwd = dir.path().join("passwd");
        add_user(&passwd, user, password);
        let addr = free_addr();
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        // `user root`: started as root, Mosquitto would otherwise switch to
        // its own user and lose access to this private directory.
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
                 log_dest stderr\nuser root\n{extra}",
                addr.port(),
                passwd.display()
            ),
        )
        .expect("mosquitto.conf");
        let mut m = Self {
            dir,
            addr,
            process: None,
        };
        m.launch();
        m
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the process (again), returning once it accepts connections.
    pub fn launch(&mut self) {
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(self.dir.path().join("mosquitto.conf"));
        let process = SpawnedBinary::spawn(cmd).expect("mosquitto");
        let addr = self.addr;
        let listening = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).ok()
        });
        assert!(
            listening.is_some(),
            "mosquitto not listening: {}",
            process.stderr()
        );
        self.process = Some(process);
    }

    /// SIGTERM, as a pod's shutdown: Mosquitto writes its persistence file
    /// before it exits.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.signal(Signal::SIGTERM);
            p.wait_exit(Duration::from_secs(10));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.signal(Signal::SIGKILL);
            p.wait_exit(Duration::from_secs(5));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
