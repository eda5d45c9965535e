//! hass-git-mirror, the binary, against git's own `git http-backend` over
//! HTTPS with a token: what it mirrors, and what it refuses. Each step
//! waits for the binary's count of fetches.

// Test helpers unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hass_test_support::git::GitHttpsServer;
use hass_test_support::{GitRemote, SpawnedBinary, free_addr, http, openmetrics, wait_for};

const TOKEN: &str = "ghp-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

struct Mirror {
    process: SpawnedBinary,
    admin: SocketAddr,
    repo: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mirror {
    /// Runs the binary against `remote`, trusting `cert` (None: only the
    /// system's roots), with `token` in a file and `extra` YAML lines.
    fn start(remote: &str, cert: Option<&Path>, token: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let repo = dir.path().join("mirror/repo.git");
        let admin = free_addr();
        let config = dir.path().join("mirror.yaml");
        std::fs::write(
            &config,
            format!(
                "remote: {remote}\nmirror: {}\ninterval: 100ms\ntoken: {{ file: {} }}\n{extra}",
                repo.display(),
                token_file.display()
            ),
        )
        .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_hass-git-mirror"));
        command
            .arg("--config")
            .arg(&config)
            .arg("--admin-listen")
            .arg(admin.to_string())
            .env_remove("SSL_CERT_DIR");
        match cert {
            Some(cert) => command.env("SSL_CERT_FILE", cert),
            None => command.env("SSL_CERT_FILE", "/nonexistent"),
        };
        let mut process = SpawnedBinary::spawn(command).unwrap();
        process.wait_ready(admin, WAIT).unwrap();
        Self {
            process,
            admin,
            repo,
            _dir: dir,
        }
    }

    fn fetches(&self, result: &str) -> f64 {
        let text = http::get(self.admin, "/metrics").unwrap().body;
        openmetrics::sum(
            &text,
            "hass_git_mirror_fetches_total",
            &[("result", result)],
        )
        .unwrap_or(0.0)
    }

    fn wait_for(&self, result: &str, n: f64) {
        let reached = wait_for(WAIT, || (self.fetches(result) >= n).then_some(()));
        assert!(
            reached.is_some(),
            "{n} fetches {result}\n{}",
            self.process.stderr()
        );
    }

    /// The mirror's `main`, or None.
    fn tip(&self) -> Option<String> {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&self.repo)
            .args(["rev-parse", "--verify", "-q", "refs/heads/main"])
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

fn served() -> (tempfile::TempDir, GitRemote, GitHttpsServer) {
    let dir = tempfile::tempdir().unwrap();
    let remote = GitRemote::new(dir.path(), "");
    remote.push(&[("configuration.yaml", Some("homeassistant:\n"))], "first");
    let server = GitHttpsServer::start(dir.path(), TOKEN);
    (dir, remote, server)
}

#[test]
fn a_private_repository_is_mirrored_over_https_and_followed() {
    let (_dir, remote, server) = served();
    let m = Mirror::start(&server.url("remote.git"), Some(&server.cert), TOKEN, "");
    m.wait_for("updated", 1.0);
    assert_eq!(m.tip(), Some(remote.head()));

    let second = remote.push(&[("scripts.yaml", Some("{}\n"))], "second");
    m.wait_for("updated", 2.0);
    assert_eq!(m.tip(), Some(second));

    // A force-push is mirrored as it is: whether to follow it is the
    // watcher's decision.
    remote.git(&["reset", "-q", "--hard", "HEAD~1"]);
    let rewritten = remote.push(&[("automations.yaml", Some("[]\n"))], "rewritten");
    m.wait_for("updated", 3.0);
    assert_eq!(m.tip(), Some(rewritten));
    m.wait_for("unchanged", 1.0);
    assert!(
        !m.process.stderr().contains(TOKEN),
        "the token is never logged"
    );
}

#[test]
fn a_wrong_token_an_untrusted_certificate_or_too_many_bytes_mirror_nothing() {
    let (_dir, remote, server) = served();
    let url = server.url("remote.git");

    let wrong = Mirror::start(&url, Some(&server.cert), "not-the-token", "");
    wrong.wait_for("failed", 2.0);
    assert_eq!(wrong.tip(), None);
    let log = wrong.process.stderr();
    assert!(!log.contains("not-the-token"), "{log}");
    // Said once while it lasts.
    assert_eq!(log.matches("fetch failed").count(), 1, "{log}");

    let untrusted = Mirror::start(&url, None, TOKEN, "");
    untrusted.wait_for("failed", 1.0);
    assert_eq!(untrusted.tip(), None);

    // 3 MiB that does not compress, against a 1 MiB limit.
    let noise: String = (0..3 * 1024 * 1024 / 2)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect();
    remote.push(&[("noise.yaml", Some(&noise))], "big");
    let big = Mirror::start(&url, Some(&server.cert), TOKEN, "max_mib: 1\n");
    big.wait_for("failed", 1.0);
    assert_eq!(big.tip(), None);
    assert!(
        big.process.stderr().contains("more than 1048576 bytes"),
        "{}",
        big.process.stderr()
    );
}

#[test]
fn credentials_in_the_url_or_plain_http_are_refused_at_start() {
    for (remote, extra, says) in [
        (
            "https://user:secret@example.invalid/r.git",
            "",
            "credentials in the URL",
        ),
        ("http://example.invalid/r.git", "", "allow_plain_http"),
        ("git@example.invalid:r.git", "", "https://"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mirror.yaml");
        std::fs::write(&config, format!("remote: {remote}\n{extra}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_hass-git-mirror"))
            .arg("--config")
            .arg(&config)
            .arg("--check-config")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{remote}: {stderr}");
        assert!(stderr.contains(says), "{remote}: {stderr}");
        assert!(!stderr.contains("secret"), "{stderr}");
    }
}
