//! A real Git remote for tests of the config watcher's Git source: a bare
//! repository on disk and a clone that the `git` command line commits and
//! pushes from, with the user's and the system's git config kept out.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Keeps the user's and the system's git config out of the tests.
const GIT_ENV: [(&str, &str); 6] = [
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ("GIT_CONFIG_NOSYSTEM", "1"),
    ("GIT_AUTHOR_NAME", "test"),
    ("GIT_AUTHOR_EMAIL", "test@example.invalid"),
    ("GIT_COMMITTER_NAME", "test"),
    ("GIT_COMMITTER_EMAIL", "test@example.invalid"),
];

/// A bare repository (`remote.git`) and a clone (`work`) inside a folder,
/// on branch `main`; files live under `prefix` in the clone.
#[derive(Debug)]
pub struct GitRemote {
    pub remote: PathBuf,
    pub work: PathBuf,
    prefix: PathBuf,
}

impl GitRemote {
    /// Creates both in `dir`; commits go under `prefix` (`""`: the top).
    pub fn new(dir: &Path, prefix: &str) -> Self {
        let remote = dir.join("remote.git");
        let work = dir.join("work");
        git(dir, &["init", "-q", "--bare", "-b", "main", "remote.git"]);
        // Not a clone: cloning an empty repository warns on every test.
        git(dir, &["init", "-q", "-b", "main", "work"]);
        git(&work, &["remote", "add", "origin", "../remote.git"]);
        Self {
            remote,
            work,
            prefix: PathBuf::from(prefix),
        }
    }

    /// The path of `rel` in the clone.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.work.join(&self.prefix).join(rel)
    }

    /// Writes (Some) or deletes (None) files, commits everything in the
    /// clone and force-pushes it; returns the commit id.
    pub fn push(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (rel, text) in files {
            let path = self.path(rel);
            match text {
                Some(text) => {
                    fs::create_dir_all(path.parent().expect("a file has a folder"))
                        .expect("create the folder");
                    fs::write(&path, text).expect("write the file");
                }
                None => fs::remove_file(&path).expect("delete the file"),
            }
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["push", "-q", "-f", "origin", "main"]);
        self.head()
    }

    /// The clone's HEAD commit id.
    pub fn head(&self) -> String {
        let out = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&self.work)
            .envs(GIT_ENV)
            .output()
            .expect("git rev-parse");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs git in the clone.
    pub fn git(&self, args: &[&str]) {
        git(&self.work, args);
    }
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .envs(GIT_ENV)
        .status()
        .expect("git is installed (the README's test command installs it)");
    assert!(status.success(), "git {args:?} in {}", dir.display());
}

/// git's own `git http-backend` over HTTPS on loopback, asking for basic
/// auth with a token, serving the repositories under a folder; its
/// certificate, for `SSL_CERT_FILE`, is self-signed for 127.0.0.1.
#[derive(Debug)]
pub struct GitHttpsServer {
    child: std::process::Child,
    pub port: u16,
    /// The server's certificate: the one root a client must trust.
    pub cert: PathBuf,
    _dir: tempfile::TempDir,
}

impl GitHttpsServer {
    pub fn start(root: &Path, token: &str) -> Self {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("temp folder");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl is installed (the README's test command installs it)");
        assert!(
            made.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/clients/git_https_server.py"
            ))
            .arg("--root")
            .arg(root)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--token", token])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            // Its request log is noise beside a test's own output.
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server's first line");
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("git_https_server.py said {line:?}"));
        Self {
            child,
            port,
            cert,
            _dir: dir,
        }
    }

    /// The URL of the repository `name` under the served folder.
    pub fn url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitHttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
