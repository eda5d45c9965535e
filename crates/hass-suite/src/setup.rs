//! The data folder the suite runs from: the generated MQTT user, the demo
//! Home Assistant config, each child's config file, and the virtual stick.

use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hass_runtime::Fatal;
use hass_runtime::secret::SecretSource;
use sha2::Sha512;

use crate::Suite;
use crate::banner::Stick;
use crate::recorder_db::{self, RecorderDb};
use crate::supervise::{ChildSpec, Probe};

/// Where everything lives, as absolute paths.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    /// The demo Home Assistant config folder the watcher watches.
    pub(crate) ha_config: PathBuf,
    /// The MQTT user's password in plain text (mode 0600), read by the
    /// exporter as a secret file.
    pub(crate) password_file: PathBuf,
    pub(crate) password: String,
    pub(crate) logs: PathBuf,
    run: PathBuf,
}

/// Creates the data folder on first use and reads it on later ones.
pub(crate) fn prepare_data_dir(data_dir: &Path, user: &str) -> Result<Layout, String> {
    let root = std::path::absolute(data_dir)
        .map_err(|e| format!("data_dir {}: {e}", data_dir.display()))?;
    let dir = |name: &str| -> Result<PathBuf, String> {
        let path = root.join(name);
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(path)
    };
    let layout = Layout {
        ha_config: dir("config")?,
        logs: dir("logs")?,
        run: dir("run")?,
        password_file: root.join("mqtt-password"),
        password: String::new(),
        root: root.clone(),
    };
    dir("broker")?;
    let password = read_or_make_password(&layout.password_file)?;
    // The hash is made fresh each start (new salt); the password stays.
    write(
        &layout.run.join("passwd"),
        &format!("{user}:{}\n", mosquitto_hash(&password, &random_bytes(12)?)),
    )?;
    write_demo_config(&layout.ha_config)?;
    Ok(Layout { password, ..layout })
}

pub(crate) fn read_or_make_password(path: &Path) -> Result<String, String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let password = text.trim_end_matches('\n');
        if !password.is_empty() {
            return Ok(password.to_owned());
        }
    }
    let password = URL_SAFE_NO_PAD.encode(random_bytes(18)?);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{password}\n").as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    // An existing file keeps its mode through `open`; make sure it is private.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(password)
}

/// A Mosquitto 2 `$7$` hash: PBKDF2-HMAC-SHA512, 101 iterations (what
/// `mosquitto_passwd` writes), salt and 64-byte hash in base64.
pub(crate) fn mosquitto_hash(password: &str, salt: &[u8]) -> String {
    const ITERATIONS: u32 = 101;
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, ITERATIONS, &mut hash);
    format!(
        "$7${ITERATIONS}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(hash)
    )
}

fn random_bytes(n: usize) -> Result<Vec<u8>, String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(bytes)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A small valid Home Assistant config, written only when the folder has none.
fn write_demo_config(dir: &Path) -> Result<(), String> {
    if dir.join("configuration.yaml").exists() {
        return Ok(());
    }
    write(
        &dir.join("configuration.yaml"),
        "# A demo Home Assistant config made by hass-suite. Edit it (or run\n\
         # `hass -c` on this folder) and hass-config-watcher validates the change\n\
         # and reloads exactly the domains that changed.\n\
         homeassistant:\n  name: hass-sidecars demo\n  unit_system: metric\n  time_zone: UTC\n\
         default_config:\n\
         automation: !include automations.yaml\n\
         script: !include scripts.yaml\n\
         input_boolean:\n  guest_mode:\n    name: Guest mode\n",
    )?;
    write(&dir.join("automations.yaml"), "[]\n")?;
    write(&dir.join("scripts.yaml"), "{}\n")
}

/// Where a running virtual stick's socat writes its PID, for the next start
/// to stop it if this suite is killed outright.
const SOCAT_PIDFILE: &str = "socat.pid";

/// A socat pty pair standing in for a USB stick: the bridge opens `device`,
/// and whoever plays the stick's firmware opens `peer`.
#[derive(Debug)]
pub(crate) struct VirtualStick {
    socat: tokio::process::Child,
    dir: PathBuf,
}

impl VirtualStick {
    pub(crate) async fn start(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // The pair of a suite that was killed outright, still holding its ptys.
        let pidfile = dir.join(SOCAT_PIDFILE);
        crate::leftover::stop_leftover(
            &pidfile,
            "socat",
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_secs(5),
        );
        let pair = Self {
            socat: tokio::process::Command::new("socat")
                .arg(format!("pty,raw,echo=0,link={}", dir.join("device").display()))
                .arg(format!("pty,raw,echo=0,link={}", dir.join("peer").display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                // Stopped by the suite, not by the terminal's Ctrl-C.
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot run socat for a virtual stick ({e}); install socat or set serial_device"))?,
            dir: dir.to_owned(),
        };
        if let Some(pid) = pair.socat.id() {
            std::fs::write(&pidfile, format!("{pid}\n"))
                .map_err(|e| format!("cannot write {}: {e}", pidfile.display()))?;
        }
        for _ in 0..250 {
            if pair.device().exists() && pair.peer().exists() {
                return Ok(pair);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("socat made no pty links within 5 s".to_owned())
    }

    pub(crate) fn device(&self) -> PathBuf {
        self.dir.join("device")
    }

    pub(crate) fn peer(&self) -> PathBuf {
        self.dir.join("peer")
    }

    pub(crate) async fn stop(mut self) {
        let _ = std::fs::remove_file(self.dir.join(SOCAT_PIDFILE));
        crate::supervise::terminate(
            &mut self.socat,
            "socat",
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_secs(5),
        )
        .await;
    }
}

fn secret_yaml(source: &SecretSource) -> String {
    match source {
        SecretSource::File(path) => format!("{{ file: {:?} }}", path.display().to_string()),
        SecretSource::Env(name) => format!("{{ env: {name:?} }}"),
    }
}

/// The children to run, each with its config file written into `run/`.
pub(crate) fn child_specs(
    suite: &Suite,
    layout: &Layout,
    bin_dir: &Path,
    stick: Option<&Stick>,
    database: Option<&RecorderDb>,
) -> Result<Vec<ChildSpec>, Fatal> {
    let ports = suite.config.ports;
    let quoted = |p: &Path| format!("{:?}", p.display().to_string());
    // The database first, so it is up when the exporter starts probing it.
    let mut specs: Vec<ChildSpec> = database.map(|db| db.spec.clone()).into_iter().collect();
    let mut add = |name: &'static str, yaml: String, admin_port: u16, subcommand: Option<&str>| {
        let config = layout.run.join(format!("{name}.yaml"));
        write(&config, &yaml).map_err(Fatal::runtime)?;
        let binary = format!("hass-{name}");
        let program = bin_dir.join(&binary);
        if !program.is_file() {
            return Err(Fatal::runtime(format!(
                "{} not found: build every binary first with `cargo build --workspace` \
                 (`cargo build --workspace --release` for a release hass-suite)",
                program.display()
            )));
        }
        let mut args: Vec<String> = subcommand.into_iter().map(str::to_owned).collect();
        args.extend([
            "--config".to_owned(),
            config.display().to_string(),
            "--admin-listen".to_owned(),
            suite.addr(admin_port).to_string(),
            "--drain-timeout".to_owned(),
            "10s".to_owned(),
        ]);
        specs.push(ChildSpec {
            name,
            program,
            args,
            probe: Probe::Readyz(suite.client_addr(admin_port)),
            log: layout.logs.join(format!("{binary}.log")),
            run_as: None,
            stop_signal: nix::sys::signal::Signal::SIGTERM,
            follows_suite: true,
        });
        Ok(())
    };

    add(
        "broker",
        format!(
            "data_dir: {}\npassword_file: {}\nallow_anonymous: false\nlisteners:\n  mqtt: {}\n  ws: {}\n",
            quoted(&layout.root.join("broker")),
            quoted(&layout.run.join("passwd")),
            suite.addr(ports.mqtt),
            suite.addr(ports.mqtt_ws),
        ),
        ports.broker_admin,
        None,
    )?;

    let ha_token = suite.ha_token.as_ref().map(secret_yaml);
    let mut watcher = format!(
        "config_dir: {}\nhome_assistant:\n  url: {}\n",
        quoted(&layout.ha_config),
        suite.config.home_assistant.url
    );
    if let Some(token) = &ha_token {
        let _ = writeln!(watcher, "  token: {token}");
    }
    add("config-watcher", watcher, ports.watcher_admin, Some("run"))?;

    if let Some(stick) = stick {
        add(
            "serial-bridge",
            format!(
                "devices:\n  - name: zigbee\n    path: {}\n    listen: {}\n",
                quoted(stick.device()),
                suite.addr(ports.serial)
            ),
            ports.bridge_admin,
            None,
        )?;
    }

    let mut exporter = format!(
        "broker:\n  address: {}\n  username: {:?}\n  password: {}\n  interval: 5s\n",
        suite.client_addr(ports.mqtt),
        suite.config.mqtt_user,
        secret_yaml(&SecretSource::File(layout.password_file.clone())),
    );
    if stick.is_some() {
        let _ = write!(
            exporter,
            "bridges:\n  - name: zigbee\n    url: http://{}\n    interval: 5s\n",
            suite.client_addr(ports.bridge_admin)
        );
    }
    if let Some(token) = &ha_token {
        let _ = write!(
            exporter,
            "home_assistant:\n  url: {}\n  token: {token}\n",
            suite.config.home_assistant.url
        );
    }
    if let Some(db) = database {
        let _ = write!(
            exporter,
            "postgres:\n  host: {:?}\n  port: {}\n  user: {}\n  dbname: {}\n  password: {}\n  interval: 5s\n",
            db.addr.ip().to_string(),
            db.addr.port(),
            recorder_db::NAME,
            recorder_db::NAME,
            secret_yaml(&SecretSource::File(db.password_file.clone())),
        );
    }
    add("exporter", exporter, ports.exporter_admin, None)?;
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_has_mosquittos_shape() {
        let hash = mosquitto_hash("secret", b"0123456789ab");
        let parts: Vec<&str> = hash.split('$').collect();
        assert_eq!(parts[..3], ["", "7", "101"]);
        assert_eq!(STANDARD.decode(parts[3]).unwrap(), b"0123456789ab");
        assert_eq!(STANDARD.decode(parts[4]).unwrap().len(), 64);
    }
}
