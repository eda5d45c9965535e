//! A throwaway OCI registry: Debian's `docker-registry` (the CNCF
//! distribution server) on a loopback port of its choosing, storing in a
//! temporary folder, and `skopeo`, a client independent of ours, to read
//! back what was pushed.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[derive(Debug)]
pub struct TempRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
    dir: tempfile::TempDir,
}

impl TempRegistry {
    /// Starts the registry and returns once it has said where it listens.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp folder");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:0\n  secret: test-only\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker-registry is installed (the README's test command installs it)");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        // `level=info msg="listening on 127.0.0.1:PORT"`.
        let address = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                line.split("msg=\"listening on ")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .map(str::to_owned)
            })
            .expect("docker-registry said where it listens");
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            address,
            dir,
        }
    }

    /// Copies `REPOSITORY:TAG` (or `@DIGEST`) from the registry into an OCI
    /// layout folder with skopeo; returns the folder.
    pub fn pull_layout(&self, reference: &str) -> PathBuf {
        let layout = self.dir.path().join(format!(
            "layout-{}",
            reference.replace(['/', ':', '@'], "_")
        ));
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false", "--all"])
            .arg(format!("docker://{}/{reference}", self.address))
            .arg(format!("oci:{}", layout.display()))
            .output()
            .expect("skopeo is installed (the README's test command installs it)");
        assert!(
            out.status.success(),
            "skopeo copy {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        layout
    }

    /// The digest the registry gives `REPOSITORY:TAG`'s manifest, read with
    /// skopeo (`sha256:…`).
    pub fn digest(&self, reference: &str) -> String {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/{reference}", self.address))
            .output()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo inspect {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = self.dir.path().join("manifest.json");
        std::fs::write(&file, &out.stdout).expect("manifest copy");
        let digest = Command::new("skopeo")
            .arg("manifest-digest")
            .arg(&file)
            .output()
            .expect("skopeo");
        String::from_utf8_lossy(&digest.stdout).trim().to_owned()
    }
}

/// Reads blob `digest` (`sha256:…`) of an OCI layout folder.
pub fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let (algorithm, hex) = digest.split_once(':').expect("algorithm:hex");
    std::fs::read(layout.join("blobs").join(algorithm).join(hex)).expect("blob in the layout")
}

impl Drop for TempRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
