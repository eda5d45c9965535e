//! A real Home Assistant (the release `scripts/ha-rootfs` installs, 2026.11
//! by default) for the tests whose subject is Home Assistant's behaviour:
//! started in the cached Debian unstable root filesystem on a free port with
//! a config of the test's, onboarded through its own API (an owner, then a
//! long-lived token over the WebSocket API), and stopped with SIGTERM.
//! [`HomeAssistantApi`] talks to any Home Assistant, the pod's included.
//! Stand-ins remain for faults a real one cannot be made to show.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::{SpawnedBinary, free_port, wait_for};

/// How long a first start may take (bootstrap, the database, the frontend).
const START_TIMEOUT: Duration = Duration::from_secs(240);
const USER: &str = "owner";
const PASSWORD: &str = "hass-sidecars-tests-owner";
/// Where the root filesystem has `hass`: the system Python's, as in the
/// official image.
const HASS: &str = "/usr/local/bin/hass";
/// The environment inside the root filesystem: the official image's uv
/// settings (Home Assistant installs what an integration lacks into the
/// system Python) and nothing of the host's.
const INSIDE_ENV: [&str; 4] = [
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "HOME=/root",
    "UV_SYSTEM_PYTHON=true",
    "UV_NO_CACHE=true",
];

/// A running Home Assistant.
#[derive(Debug)]
pub struct HomeAssistant {
    process: Option<SpawnedBinary>,
    root: PathBuf,
    config: RootfsDir,
    api: HomeAssistantApi,
    /// From spawn to `/api/onboarding` answering.
    pub started_in: Duration,
}

/// `chroot <root> env -i <INSIDE_ENV>`: a command inside the root
/// filesystem, with nothing of the host's environment; the program and its
/// arguments follow.
fn inside(root: &Path) -> Command {
    let mut command = Command::new("chroot");
    command.arg(root).args(["env", "-i"]).args(INSIDE_ENV);
    command
}

/// The Home Assistant release in the root filesystem (`hass --version`).
pub fn version() -> Result<String, String> {
    let out = inside(&rootfs()?)
        .args([HASS, "--version"])
        .output()
        .map_err(|e| format!("chroot: {e}"))?;
    if !out.status.success() {
        return Err(format!("hass --version exited with {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A temporary folder inside the root filesystem, removed on drop.
#[derive(Debug)]
pub struct RootfsDir {
    root: PathBuf,
    dir: tempfile::TempDir,
    inner: PathBuf,
}

impl RootfsDir {
    pub fn new(prefix: &str) -> Result<Self, String> {
        let root = rootfs()?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(root.join("tmp"))
            .map_err(|e| format!("a folder in the root filesystem: {e}"))?;
        let inner =
            Path::new("/tmp").join(dir.path().file_name().ok_or("a folder without a name")?);
        Ok(Self { root, dir, inner })
    }

    /// The folder from the host.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The same folder from inside the root filesystem.
    pub fn inner(&self) -> &Path {
        &self.inner
    }

    /// `hass --script check_config -c <this folder>` inside the root
    /// filesystem, with `extra` arguments before `-c`.
    pub fn check_config_command(&self, extra: &[&str]) -> Command {
        let mut command = inside(&self.root);
        command
            .args([HASS, "--script", "check_config"])
            .args(extra)
            .arg("-c")
            .arg(&self.inner);
        command
    }
}

/// The root filesystem, built by `scripts/ha-rootfs` on first use in this
/// process (a few minutes once per machine, then cached).
pub fn rootfs() -> Result<PathBuf, String> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ha-rootfs");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/ha-rootfs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .clone()
}

impl HomeAssistant {
    /// Starts Home Assistant with `configuration` (YAML, without `http:`,
    /// which the harness adds) and onboards it.
    pub fn start(configuration: &str) -> Result<Self, String> {
        let root = rootfs()?;
        let config = RootfsDir::new("hass-test-")?;
        let port = free_port();
        // A fresh config: 2026.8+ imports this block into .storage/http once.
        let yaml =
            format!("{configuration}\nhttp:\n  server_host: 127.0.0.1\n  server_port: {port}\n");
        std::fs::write(config.path().join("configuration.yaml"), yaml)
            .map_err(|e| format!("configuration.yaml: {e}"))?;
        let mut ha = Self {
            process: None,
            root,
            config,
            api: HomeAssistantApi::new(SocketAddr::from(([127, 0, 0, 1], port)), ""),
            started_in: Duration::ZERO,
        };
        ha.started_in = ha.launch()?;
        ha.api = HomeAssistantApi::onboard(ha.api.addr())?;
        // 2026.8+ imports the YAML `http:` block as a pending trial and
        // reverts to its defaults (port 8123) five minutes later unless it
        // is promoted, as its repair notice asks the user to.
        let http = ha.api.websocket(json!({"type": "http/config"}))?;
        if !http["result"]["pending"].is_null() {
            let promoted = ha.api.websocket(json!({"type": "http/config/promote"}))?;
            if promoted["success"] != true {
                return Err(format!("http/config/promote answered {promoted}"));
            }
        }
        Ok(ha)
    }

    /// Spawns Home Assistant and waits until its HTTP server answers.
    fn launch(&mut self) -> Result<Duration, String> {
        let mut command = inside(&self.root);
        command
            // Integrations install what they lack with uv, which checks the
            // package registry against this bundle (the host's, copied in).
            .arg("SSL_CERT_FILE=/etc/ssl/host-ca.crt")
            .args([HASS, "-c"])
            .arg(self.config.inner());
        let started = Instant::now();
        let mut process = SpawnedBinary::spawn(command)?;
        let url = format!("{}/api/onboarding", self.url());
        let answered = wait_for(START_TIMEOUT, || {
            if process.wait_exit(Duration::ZERO).is_some() {
                return Some(false);
            }
            crate::http::get(self.addr(), "/api/onboarding")
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| true)
        });
        let log = process.stderr();
        self.process = Some(process);
        match answered {
            Some(true) => Ok(started.elapsed()),
            _ => Err(format!(
                "{url} never answered; Home Assistant's log:\n{log}"
            )),
        }
    }

    /// The config folder, from the host.
    pub fn config_dir(&self) -> &Path {
        self.config.path()
    }

    /// Home Assistant's resident memory and CPU time so far (the process
    /// `chroot` became).
    pub fn usage(&self) -> Option<(u64, Duration)> {
        self.process.as_ref()?.usage()
    }

    /// Home Assistant's own log so far.
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(SpawnedBinary::stderr)
            .unwrap_or_default()
    }

    /// Waits until `/api/core/state` says RUNNING; the error has HA's log.
    pub fn wait_running(&self, timeout: Duration) -> Result<(), String> {
        self.api
            .wait_running(timeout)
            .map_err(|e| format!("{e}; log:\n{}", self.log()))
    }

    /// Waits for Home Assistant to exit on its own (`homeassistant.restart`
    /// exits with 100 for its supervisor to start it again); its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let process = self.process.as_mut()?;
        let status = process.wait_exit(timeout)?;
        status.code()
    }

    /// SIGTERM, and the exit status's code once it has stopped.
    pub fn stop(&mut self) -> Option<i32> {
        let mut process = self.process.take()?;
        process.signal(Signal::SIGTERM);
        process
            .wait_exit(Duration::from_secs(60))
            .and_then(|s| s.code())
    }

    /// Starts it again on the same config folder (after `stop`, or after
    /// Home Assistant restarted itself and exited).
    pub fn start_again(&mut self) -> Result<(), String> {
        self.stop();
        self.started_in = self.launch()?;
        Ok(())
    }

    /// Hands it to a supervisor that starts it again whenever it exits with
    /// 100, as its container's supervisor does (`homeassistant.restart`,
    /// `http/config/configure`).
    pub fn supervised(self) -> Supervised {
        let api = self.api.clone();
        let ha = std::sync::Arc::new(std::sync::Mutex::new(self));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let restarts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let thread = {
            let (ha, stop, restarts) = (ha.clone(), stop.clone(), restarts.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    {
                        let mut ha = ha.lock().unwrap_or_else(|e| e.into_inner());
                        if ha.wait_exit(Duration::ZERO) == Some(100) {
                            restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if let Err(e) = ha.start_again() {
                                eprintln!(
                                    "the supervisor could not start Home Assistant again: {e}"
                                );
                                return;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Supervised {
            ha,
            api,
            stop,
            restarts,
            thread: Some(thread),
        }
    }
}

/// A Home Assistant started again after each of its own restarts.
#[derive(Debug)]
pub struct Supervised {
    ha: std::sync::Arc<std::sync::Mutex<HomeAssistant>>,
    api: HomeAssistantApi,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    restarts: std::sync::Arc<std::sync::atomic::AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervised {
    /// How many times it restarted itself so far.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Home Assistant's log since its last start.
    pub fn log(&self) -> String {
        self.ha.lock().unwrap_or_else(|e| e.into_inner()).log()
    }

    /// The config folder, from the host.
    pub fn config_dir(&self) -> PathBuf {
        self.ha
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_dir()
            .to_owned()
    }
}

impl std::ops::Deref for Supervised {
    type Target = HomeAssistantApi;

    fn deref(&self) -> &HomeAssistantApi {
        &self.api
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The API calls (`get`, `post`, `websocket`, `core_state`…) reach the
/// process's Home Assistant as its owner.
impl std::ops::Deref for HomeAssistant {
    type Target = HomeAssistantApi;

    fn deref(&self) -> &HomeAssistantApi {
        &self.api
    }
}

impl Drop for HomeAssistant {
    fn drop(&mut self) {
        if let Some(process) = self.process.as_mut()
            && process.wait_exit(Duration::ZERO).is_none()
        {
            process.signal(Signal::SIGKILL);
            process.wait_exit(Duration::from_secs(10));
        }
    }
}

/// Home Assistant's REST and WebSocket APIs at an address, as its owner: the
/// harness's own process or one the test did not start (a pod's).
#[derive(Debug, Clone)]
pub struct HomeAssistantApi {
    addr: SocketAddr,
    token: String,
}

impl HomeAssistantApi {
    pub fn new(addr: SocketAddr, token: &str) -> Self {
        Self {
            addr,
            token: token.to_owned(),
        }
    }

    /// Onboards a new Home Assistant at `addr` as a user would: creates the
    /// owner, then a long-lived token over the WebSocket API.
    pub fn onboard(addr: SocketAddr) -> Result<Self, String> {
        let anonymous = Self::new(addr, "");
        let client_id = format!("{}/", anonymous.url());
        let created = anonymous.send(
            "/api/onboarding/users",
            "application/json",
            &json!({
                "client_id": client_id,
                "name": "Owner",
                "username": USER,
                "password": PASSWORD,
                "language": "en",
            })
            .to_string(),
        )?;
        let code = created.1["auth_code"]
            .as_str()
            .ok_or_else(|| format!("onboarding answered {created:?}"))?;
        let tokens = anonymous.send(
            "/auth/token",
            "application/x-www-form-urlencoded",
            &format!(
                "grant_type=authorization_code&code={code}&client_id={}",
                urlencode(&client_id)
            ),
        )?;
        let access = tokens.1["access_token"]
            .as_str()
            .ok_or_else(|| format!("/auth/token answered {tokens:?}"))?;
        let answer = Self::new(addr, access).websocket(json!({
            "type": "auth/long_lived_access_token",
            "client_name": "hass-sidecars tests",
            "lifespan": 3650,
        }))?;
        let token = answer["result"]
            .as_str()
            .ok_or_else(|| format!("auth/long_lived_access_token answered {answer}"))?;
        Ok(Self::new(addr, token))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A long-lived access token of the owner.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `GET <path>` with the token: the status and the body as JSON
    /// (`Value::Null` when it is not JSON).
    pub fn get(&self, path: &str) -> Result<(u16, Value), String> {
        self.get_with(path, &[])
    }

    /// `GET <path>` with the token and more headers (a proxy's
    /// `X-Forwarded-For`).
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, Value), String> {
        self.request("GET", path, headers, "", "")
    }

    /// `POST <path>` of `body` (JSON) with the token.
    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        self.send(path, "application/json", &body.to_string())
    }

    fn send(&self, path: &str, content_type: &str, body: &str) -> Result<(u16, Value), String> {
        self.request("POST", path, &[], content_type, body)
    }

    /// A request (with the token, when there is one); the status and the
    /// body as JSON.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        content_type: &str,
        body: &str,
    ) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.url());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let auth = (!self.token.is_empty()).then(|| format!("Bearer {}", self.token));
        let response = if method == "GET" {
            let mut request = agent.get(&url);
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.call()
        } else {
            let mut request = agent.post(&url).header("Content-Type", content_type);
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            request.send(body)
        };
        let mut response = response.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{method} {url}: {e}"))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// One WebSocket API command (`id` is added) and its answer.
    pub fn websocket(&self, mut command: Value) -> Result<Value, String> {
        let url = format!("ws://{}/api/websocket", self.addr);
        let (mut socket, _) = tungstenite::connect(&url).map_err(|e| format!("{url}: {e}"))?;
        let read = |socket: &mut tungstenite::WebSocket<_>| -> Result<Value, String> {
            loop {
                if let tungstenite::Message::Text(text) =
                    socket.read().map_err(|e| format!("{url}: {e}"))?
                {
                    return serde_json::from_str(&text).map_err(|e| format!("{text}: {e}"));
                }
            }
        };
        let hello = read(&mut socket)?;
        if hello["type"] != "auth_required" {
            return Err(format!("{url}: {hello}"));
        }
        let send = |socket: &mut tungstenite::WebSocket<_>, value: Value| {
            socket
                .send(tungstenite::Message::text(value.to_string()))
                .map_err(|e| format!("{url}: {e}"))
        };
        send(
            &mut socket,
            json!({ "type": "auth", "access_token": self.token }),
        )?;
        let auth = read(&mut socket)?;
        if auth["type"] != "auth_ok" {
            return Err(format!("{url}: {auth}"));
        }
        command["id"] = json!(1);
        send(&mut socket, command)?;
        loop {
            let answer = read(&mut socket)?;
            if answer["id"] == 1 && answer["type"] == "result" {
                let _ = socket.close(None);
                return Ok(answer);
            }
        }
    }

    /// `/api/core/state`'s `state` (RUNNING, NOT_RUNNING, …), if it answers.
    pub fn core_state(&self) -> Option<String> {
        let (status, body) = self.get("/api/core/state").ok()?;
        (status == 200).then(|| body["state"].as_str().map(str::to_owned))?
    }

    /// Waits until `/api/core/state` says RUNNING.
    pub fn wait_running(&self, timeout: Duration) -> Result<(), String> {
        wait_for(timeout, || {
            (self.core_state().as_deref() == Some("RUNNING")).then_some(())
        })
        .ok_or_else(|| {
            format!(
                "Home Assistant never reached RUNNING in {timeout:?} (now {:?})",
                self.core_state()
            )
        })
    }

    /// Sets up the MQTT integration through its config flow, as a user fills
    /// in the form: the broker at `host:port` with a password-file user, no
    /// TLS. The config entry's answer.
    pub fn add_mqtt_broker(
        &self,
        host: &str,
        port: u16,
        username: &str,
        password: &str,
    ) -> Result<Value, String> {
        let (status, flow) = self.post(
            "/api/config/config_entries/flow",
            &json!({ "handler": "mqtt" }),
        )?;
        let flow_id = match (status, flow["step_id"].as_str(), flow["flow_id"].as_str()) {
            (200, Some("broker"), Some(id)) => id.to_owned(),
            _ => return Err(format!("the MQTT config flow answered {status} {flow}")),
        };
        let (status, entry) = self.post(
            &format!("/api/config/config_entries/flow/{flow_id}"),
            &json!({
                "broker": host,
                "port": port,
                "username": username,
                "password": password,
                // The form's collapsed section, as the frontend fills it in:
                // no client certificate, no TLS.
                "other_settings": { "set_client_cert": false, "set_ca_cert": "off" },
            }),
        )?;
        if status != 200 || entry["type"] != "create_entry" {
            return Err(format!("the MQTT broker step answered {status} {entry}"));
        }
        Ok(entry)
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What Home Assistant's own `hass --script check_config --json` said of a
/// config folder.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// 0 valid, 1 errors (or the script itself failed, as it does on an
    /// empty `configuration.yaml`).
    pub exit_code: i32,
    /// Its JSON report; `Value::Null` when it printed none.
    pub report: Value,
}

impl CheckConfig {
    pub fn valid(&self) -> bool {
        self.exit_code == 0
    }
}

/// Runs Home Assistant's `check_config` script on a copy of `dir` (copied
/// into the root filesystem, links kept as links).
pub fn check_config(dir: &Path) -> Result<CheckConfig, String> {
    let copy = RootfsDir::new("check-config-")?;
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", dir.display()))
        .arg(copy.path())
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if !copied.success() {
        return Err(format!("cp -a {} failed", dir.display()));
    }
    let out = copy
        .check_config_command(&["--json"])
        .output()
        .map_err(|e| format!("chroot: {e}"))?;
    Ok(CheckConfig {
        exit_code: out.status.code().unwrap_or(-1),
        report: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
    })
}
