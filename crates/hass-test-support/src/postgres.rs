//! A throwaway PostgreSQL server per test: `initdb` into a temp dir, started on
//! a free loopback port, stopped and deleted when dropped. Uses Debian's
//! postgresql binaries (PATH first, then `/usr/lib/postgresql/<newest>/bin`).
//!
//! PostgreSQL refuses to run as root, and CI runs as root, so under root the
//! server runs as the `postgres` user that Debian's package creates.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, geteuid};
use tempfile::TempDir;

use crate::{free_port, wait_for};

/// Server settings beyond the defaults, for [`TempPostgres::start_with`].
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// A PEM certificate and its PEM private key: the server runs with
    /// `ssl = on` and serves them.
    pub tls: Option<(String, String)>,
    /// Replaces pg_hba.conf, e.g. `hostssl all all 127.0.0.1/32 trust` to
    /// refuse clients that do not use TLS.
    pub hba: Option<String>,
}

/// A running server; drop it to stop it and delete its data.
#[derive(Debug)]
pub struct TempPostgres {
    child: Child,
    port: u16,
    bin: PathBuf,
    run_as: Option<User>,
    // Dropped after `child` is stopped in `Drop`.
    dir: TempDir,
}

impl TempPostgres {
    /// Initializes and starts a server, retrying on a port taken in between.
    pub fn start() -> Result<Self, String> {
        Self::start_with(&PostgresOptions::default())
    }

    /// [`TempPostgres::start`] with TLS or pg_hba.conf rules; they are
    /// written into the data directory, so [`TempPostgres::restart`] keeps them.
    pub fn start_with(options: &PostgresOptions) -> Result<Self, String> {
        let bin = find_bin_dir()?;
        let run_as = run_as_user()?;
        let dir = tempfile::Builder::new()
            .prefix("hass-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let data = dir.path().join("data");
        if let Some(user) = &run_as {
            std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(|e| format!("chown {}: {e}", dir.path().display()))?;
        }
        let initdb = command(&bin.join("initdb"), run_as.as_ref())
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg("--pgdata")
            .arg(&data)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.join("initdb").display()))?;
        if !initdb.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr)
            ));
        }
        configure(&data, run_as.as_ref(), options)?;
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port();
            match launch(&bin, run_as.as_ref(), dir.path(), &data, port) {
                Ok(child) => {
                    return Ok(Self {
                        child,
                        port,
                        bin,
                        run_as,
                        dir,
                    });
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq-style connection string for the `postgres` superuser and database.
    pub fn connection_string(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// The same as a URL, as Home Assistant's `recorder.db_url` takes it.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's data directory (deleted on drop).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Runs `sql` with `psql` as the superuser (for roles and databases a
    /// test's client needs); the error carries psql's message.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        self.psql_in("postgres", sql)
    }

    /// `psql` as the superuser in `database` (what a client wrote there).
    pub fn psql_in(&self, database: &str, sql: &str) -> Result<String, String> {
        // Debian puts psql on PATH (postgresql-client), not beside initdb.
        let beside = self.bin.join("psql");
        let psql = if beside.is_file() {
            beside
        } else {
            PathBuf::from("psql")
        };
        let output = Command::new(psql)
            .args([
                "--no-psqlrc",
                "--quiet",
                "--tuples-only",
                "--set=ON_ERROR_STOP=1",
            ])
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres dbname={database}",
                self.port
            ))
            .args(["--command", sql])
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// A hung database: every process of the server stopped (SIGSTOP):
    /// connections open, nothing answers, until [`Self::resume`].
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// `signal` to the postmaster (first line of `postmaster.pid`) and its
    /// children.
    fn signal(&self, signal: nix::sys::signal::Signal) {
        let Ok(pid_file) = std::fs::read_to_string(self.data_dir().join("postmaster.pid")) else {
            return;
        };
        let Some(postmaster) = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return;
        };
        let children =
            std::fs::read_to_string(format!("/proc/{postmaster}/task/{postmaster}/children"))
                .unwrap_or_default();
        let pids = children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .chain([postmaster]);
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Stops the server the way an outage would: no clean shutdown.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same data and port, as after an
    /// outage; a running server is killed first. The server runs with fsync
    /// off, so data survives a kill only after a `CHECKPOINT`.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let data = self.data_dir();
        let mut last_error = String::new();
        // Backends of the killed server may hold shared memory a moment longer.
        for _ in 0..50 {
            match launch(
                &self.bin,
                self.run_as.as_ref(),
                self.dir.path(),
                &data,
                self.port,
            ) {
                Ok(child) => {
                    self.child = child;
                    return Ok(());
                }
                Err(e) => last_error = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("postgres would not restart: {last_error}"))
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGINT is PostgreSQL's "fast" shutdown: disconnect clients, exit.
            let pid = Pid::from_raw(self.child.id() as i32);
            let _ = kill(pid, Signal::SIGINT);
            let exited = wait_for(Duration::from_secs(10), || {
                matches!(self.child.try_wait(), Ok(Some(_))).then_some(())
            });
            if exited.is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Writes `options` into a fresh data directory.
fn configure(data: &Path, run_as: Option<&User>, options: &PostgresOptions) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let write = |name: &str, text: &str, mode: u32| -> Result<(), String> {
        let path = data.join(name);
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        // PostgreSQL refuses a key that others can read, or that another user owns.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
        Ok(())
    };
    if let Some((cert, key)) = &options.tls {
        write("server.crt", cert, 0o644)?;
        write("server.key", key, 0o600)?;
        let conf = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).map_err(|e| format!("{}: {e}", conf.display()))?;
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
    }
    if let Some(hba) = &options.hba {
        write("pg_hba.conf", hba, 0o600)?;
    }
    Ok(())
}

fn launch(
    bin: &Path,
    run_as: Option<&User>,
    dir: &Path,
    data: &Path,
    port: u16,
) -> Result<Child, String> {
    let log_path = dir.join("postgres.log");
    let log = fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let mut child = command(&bin.join("postgres"), run_as)
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        // Durability is not under test here; speed is welcome.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.join("postgres").display()))?;
    // postgres marks itself ready in postmaster.pid, which is what pg_ctl -w reads.
    let ready = wait_for(Duration::from_secs(30), || {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(Err(format!("postgres exited with {status}")));
        }
        let pid_file = fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
        // Ready, and ours: a pid file left by a killed server says "ready" too.
        let lines: Vec<&str> = pid_file.lines().map(str::trim).collect();
        (lines.get(7) == Some(&"ready") && lines.first() == Some(&child.id().to_string().as_str()))
            .then_some(Ok(()))
    });
    let log_tail = || fs::read_to_string(&log_path).unwrap_or_default();
    match ready {
        Some(Ok(())) => Ok(child),
        Some(Err(e)) => Err(format!("{e}; log:\n{}", log_tail())),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "postgres not ready after 30 s; log:\n{}",
                log_tail()
            ))
        }
    }
}

fn command(program: &Path, run_as: Option<&User>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(user) = run_as {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    cmd
}

fn run_as_user() -> Result<Option<User>, String> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    match User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some(user)),
        _ => Err(
            "running as root, but there is no `postgres` user to run PostgreSQL as; \
                  install Debian's postgresql package (the README's test command does)"
                .to_owned(),
        ),
    }
}

fn find_bin_dir() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file());
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    // Debian keeps server binaries off PATH, one folder per major version.
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "PostgreSQL server binaries not found (initdb, postgres): install Debian's \
         postgresql package (the README's test command does)"
            .to_owned()
    })
}
