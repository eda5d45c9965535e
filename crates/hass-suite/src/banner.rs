//! What the suite prints once everything is up: each endpoint, the MQTT
//! credentials, and how to point Home Assistant, Zigbee2MQTT and Prometheus
//! at them. Tests read it, so every address is printed as a client dials it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::Suite;
use crate::recorder_db::{RecorderDb, Skipped};
use crate::setup::Layout;
use crate::supervise::{ChildSpec, Probe};

/// The stick the bridge serves.
#[derive(Debug, Clone)]
pub(crate) enum Stick {
    Real(PathBuf),
    /// A socat pty pair: the bridge opens `device`, a simulator `peer`.
    Virtual {
        device: PathBuf,
        peer: PathBuf,
    },
}

impl Stick {
    pub(crate) fn device(&self) -> &Path {
        match self {
            Self::Real(device) | Self::Virtual { device, .. } => device,
        }
    }
}

pub(crate) fn render(
    suite: &Suite,
    layout: &Layout,
    stick: Option<&Stick>,
    database: Result<&RecorderDb, &Skipped>,
    specs: &[ChildSpec],
) -> String {
    let ports = suite.config.ports;
    let mqtt = suite.client_addr(ports.mqtt);
    let ws = suite.client_addr(ports.mqtt_ws);
    let serial = suite.client_addr(ports.serial);
    let user = &suite.config.mqtt_user;
    let password = &layout.password;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nhass-sidecars is running; data in {}\n",
        layout.root.display()
    );
    let _ = writeln!(
        out,
        "  MQTT broker      mqtt://{mqtt}   (WebSocket ws://{ws}/mqtt)"
    );
    let _ = writeln!(out, "    username: {user}");
    let _ = writeln!(
        out,
        "    password: {password}   (kept in {})",
        layout.password_file.display()
    );
    match stick {
        Some(Stick::Real(device)) => {
            let _ = writeln!(
                out,
                "  Serial bridge    tcp://{serial}   serving {}",
                device.display()
            );
        }
        Some(Stick::Virtual { peer, .. }) => {
            let _ = writeln!(
                out,
                "  Serial bridge    tcp://{serial}   serving a virtual stick (play its firmware on {})",
                peer.display()
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  Serial bridge    skipped: no serial_device set and socat not found"
            );
        }
    }
    let _ = writeln!(
        out,
        "  Config watcher   watching {}{}",
        layout.ha_config.display(),
        if suite.ha_token.is_some() {
            format!(", reloading through {}", suite.config.home_assistant.url)
        } else {
            " (validates only: set home_assistant.token to reload)".to_owned()
        }
    );
    match database {
        Ok(db) => {
            let _ = writeln!(out, "  Recorder DB      {}", db.url());
        }
        Err(skipped) => {
            let _ = writeln!(out, "  Recorder DB      skipped: {}", skipped.0);
        }
    }
    let exporter = suite.client_addr(ports.exporter_admin);
    let _ = writeln!(out, "  Exporter         http://{exporter}/metrics");
    let _ = writeln!(
        out,
        "  Suite            /readyz on its admin port ({} unless --admin-listen): ready when every part is",
        hass_runtime::ports::SUITE_ADMIN
    );
    let _ = writeln!(out, "  Logs             {}", layout.logs.display());

    let _ = writeln!(
        out,
        "\nHome Assistant: add the MQTT integration with broker {}, port {}, username {user}, password above;",
        mqtt.ip(),
        mqtt.port()
    );
    let _ = writeln!(
        out,
        "  run it on the demo config with `hass -c {}`.",
        layout.ha_config.display()
    );
    if let Ok(db) = database {
        let _ = writeln!(
            out,
            "  Its recorder on PostgreSQL (configuration.yaml):\n    recorder:\n      db_url: {}",
            db.url()
        );
    }
    let _ = writeln!(out, "\nZigbee2MQTT (configuration.yaml):");
    let _ = writeln!(
        out,
        "  mqtt:\n    server: mqtt://{mqtt}\n    user: {user}\n    password: {password}"
    );
    if stick.is_some() {
        let _ = writeln!(out, "  serial:\n    port: tcp://{serial}");
    }
    let _ = writeln!(out, "\nPrometheus (prometheus.yml):");
    let _ = writeln!(
        out,
        "  scrape_configs:\n    - job_name: hass-sidecars\n      static_configs:"
    );
    let targets: Vec<String> = specs
        .iter()
        .filter_map(|s| match s.probe {
            Probe::Readyz(admin) => Some(format!("'{admin}'")),
            Probe::Tcp(_) => None,
        })
        .collect();
    let _ = writeln!(out, "        - targets: [{}]", targets.join(", "));
    let _ = writeln!(out, "\nStop with Ctrl-C.");
    out
}

/// Prints the banner on stdout, where it is the program's output.
#[allow(clippy::print_stdout)]
pub(crate) fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
