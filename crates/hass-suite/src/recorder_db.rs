//! A PostgreSQL for Home Assistant's recorder, kept in the data folder, when
//! PostgreSQL's server binaries are installed: created once with `initdb`
//! (user and database `homeassistant`, a generated password, password auth
//! over TCP only), then run as one more supervised child.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Uid, User};

use crate::setup::{Layout, read_or_make_password};
use crate::supervise::{ChildSpec, Probe};

/// The role and database the recorder uses.
pub(crate) const NAME: &str = "homeassistant";

/// The recorder database as the suite runs it.
#[derive(Debug, Clone)]
pub(crate) struct RecorderDb {
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    pub(crate) password: String,
    /// The password in a file (mode 0600), for the exporter.
    pub(crate) password_file: PathBuf,
    pub(crate) spec: ChildSpec,
}

impl RecorderDb {
    /// Home Assistant's `recorder.db_url`.
    pub(crate) fn url(&self) -> String {
        format!("postgresql://{NAME}:{}@{}/{NAME}", self.password, self.addr)
    }
}

/// Why there is no recorder database; printed in the banner.
#[derive(Debug, Clone)]
pub(crate) struct Skipped(pub(crate) String);

/// Finds PostgreSQL, creates the cluster on first use, and returns the
/// child to run. `listen` is where the server binds, `client` where
/// clients reach it.
pub(crate) fn prepare(
    layout: &Layout,
    listen: SocketAddr,
    client: SocketAddr,
) -> Result<RecorderDb, Skipped> {
    let bin = find_bin_dir().ok_or_else(|| {
        Skipped("PostgreSQL is not installed (Debian: apt install postgresql)".to_owned())
    })?;
    let dir = layout.root.join("postgres");
    let data = dir.join("data");
    // Ours from a suite that was killed outright: it holds the port.
    crate::leftover::stop_leftover(
        &data.join("postmaster.pid"),
        "postgres",
        Signal::SIGINT,
        Duration::from_secs(10),
    );
    // Another PostgreSQL (a system one on 5432, say) would answer our probe
    // and the printed URL would point at it with a password it does not know.
    if let Err(e) = std::net::TcpListener::bind(listen) {
        return Err(Skipped(format!(
            "{listen} is taken ({e}); another PostgreSQL? set ports.postgres to a free port"
        )));
    }
    let run_as = run_as_user(&layout.root)?;
    let password_file = layout.root.join("postgres-password");
    let password = read_or_make_password(&password_file).map_err(Skipped)?;
    if !data.join("PG_VERSION").is_file() {
        init_cluster(&bin, &dir, &data, &password, run_as.as_ref())?;
    }
    let args = vec![
        "-D".to_owned(),
        data.display().to_string(),
        "-c".to_owned(),
        format!("listen_addresses={}", listen.ip()),
        "-c".to_owned(),
        format!("port={}", listen.port()),
        // TCP only: no socket in /var/run/postgresql, which may not exist.
        "-c".to_owned(),
        "unix_socket_directories=".to_owned(),
    ];
    Ok(RecorderDb {
        addr: client,
        password,
        password_file,
        spec: ChildSpec {
            name: "postgres",
            program: bin.join("postgres"),
            args,
            probe: Probe::Tcp(client),
            log: layout.logs.join("postgres.log"),
            run_as: run_as.map(|u| (u.uid.as_raw(), u.gid.as_raw())),
            // SIGTERM is PostgreSQL's "smart" shutdown, which waits for every
            // client (Home Assistant, the exporter) to leave; SIGINT is "fast".
            stop_signal: Signal::SIGINT,
            // Not ours: PostgreSQL cannot be asked to follow the suite
            // without code between fork and exec.
            follows_suite: false,
        },
    })
}

/// `initdb` with `homeassistant` as the superuser and its password, then
/// the `homeassistant` database in single-user mode (no client needed).
fn init_cluster(
    bin: &Path,
    dir: &Path,
    data: &Path,
    password: &str,
    run_as: Option<&User>,
) -> Result<(), Skipped> {
    let fail = |what: &str, e: String| Skipped(format!("{what}: {e}"));
    std::fs::create_dir_all(dir)
        .map_err(|e| fail("cannot create the database folder", e.to_string()))?;
    let pwfile = dir.join("initdb-password");
    std::fs::write(&pwfile, format!("{password}\n"))
        .and_then(|()| std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| fail("cannot write the initdb password file", e.to_string()))?;
    if let Some(user) = run_as {
        for path in [dir, &pwfile] {
            std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(|e| {
                    fail(
                        &format!("cannot hand {} to {}", path.display(), user.name),
                        e.to_string(),
                    )
                })?;
        }
    }
    let mut initdb = command(&bin.join("initdb"), run_as);
    initdb
        .arg("-D")
        .arg(data)
        .args([
            &format!("--username={NAME}"),
            "--encoding=UTF8",
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", pwfile.display()));
    let result = run(initdb, None);
    let _ = std::fs::remove_file(&pwfile);
    result.map_err(|e| {
        // A half-made cluster would stop the next attempt.
        let _ = std::fs::remove_dir_all(data);
        fail("initdb failed", e)
    })?;
    let mut single = command(&bin.join("postgres"), run_as);
    single.arg("--single").arg("-D").arg(data).arg("postgres");
    run(
        single,
        Some(&format!("CREATE DATABASE {NAME} OWNER {NAME};\n")),
    )
    .map_err(|e| {
        let _ = std::fs::remove_dir_all(data);
        fail("cannot create the homeassistant database", e)
    })
}

fn command(program: &Path, run_as: Option<&User>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(user) = run_as {
        use std::os::unix::process::CommandExt;
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    cmd
}

/// Runs `cmd` to the end with `input` on stdin; its stderr as the error.
fn run(mut cmd: Command, input: Option<&str>) -> Result<(), String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        std::io::Write::write_all(&mut stdin, text.as_bytes()).map_err(|e| e.to_string())?;
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr
            .trim()
            .lines()
            .last()
            .unwrap_or("no message")
            .to_owned())
    }
}

/// PostgreSQL refuses to run as root: then it runs as the `postgres` user,
/// which must be able to reach the data folder.
fn run_as_user(root: &Path) -> Result<Option<User>, Skipped> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres").ok().flatten().ok_or_else(|| {
        Skipped("running as root and there is no `postgres` user to run PostgreSQL as".to_owned())
    })?;
    for dir in root.ancestors() {
        let mode = std::fs::metadata(dir)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o001 == 0 {
            return Err(Skipped(format!(
                "running as root, PostgreSQL runs as `postgres`, which cannot enter {} (mode {:o}); \
                 put data_dir somewhere it can reach, or run as a normal user",
                dir.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(Some(user))
}

/// The folder of `initdb` and `postgres`: on PATH, or Debian's newest
/// `/usr/lib/postgresql/<major>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|d| has_both(d)))
    {
        return Some(dir);
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .max_by_key(|(major, _)| *major)
        .map(|(_, dir)| dir)
}
