//! The bridge as a `hass_runtime::Component`: validate the config, bind every
//! device's port, and run one task per device until shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hass_runtime::{Component, ComponentInfo, Context, Fatal};
use tracing::{error, info};

use crate::config::{self, BridgeConfig, DeviceSource, DeviceSpec, KeepaliveConfig};
use crate::device_bridge::DeviceBridge;
use crate::listeners::{BoundPorts, Listeners};
use crate::metrics::BridgeMetrics;
use crate::serial_port;
use crate::sysfs::SysRoots;
use crate::zeroconf::Advertiser;

/// Flags of `hass-serial-bridge` beside the shared ones.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Run `hass-serial-bridge list` to see the serial devices this node has.")]
pub struct BridgeArgs {
    /// Where sysfs is mounted (for `match:` devices), e.g. a host's /sys
    /// mounted elsewhere in the container.
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs_root: PathBuf,

    /// Where device nodes live (for `match:` devices).
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    pub dev_root: PathBuf,
}

impl BridgeArgs {
    pub fn roots(&self) -> SysRoots {
        SysRoots {
            sys: self.sysfs_root.clone(),
            dev: self.dev_root.clone(),
        }
    }
}

/// The serial bridge, validated and ready to run.
#[derive(Debug)]
pub struct SerialBridge {
    devices: Vec<DeviceSpec>,
    keepalive: KeepaliveConfig,
    roots: SysRoots,
}

impl Component for SerialBridge {
    const INFO: ComponentInfo = ComponentInfo {
        name: "serial-bridge",
        version: env!("CARGO_PKG_VERSION"),
        admin_port: hass_runtime::ports::BRIDGE_ADMIN,
    };
    type Args = BridgeArgs;
    type Config = BridgeConfig;

    fn admin_config(config: &BridgeConfig) -> Option<hass_runtime::config::AdminConfig> {
        Some(config.admin)
    }

    fn prepare(
        args: BridgeArgs,
        config: BridgeConfig,
        config_path: Option<&Path>,
    ) -> Result<Self, Fatal> {
        let file = config_path.map_or_else(
            || "built-in defaults".to_owned(),
            |p| p.display().to_string(),
        );
        let (devices, keepalive) =
            config::validate(config).map_err(|e| Fatal::config(format!("{file}: {e}")))?;
        if devices.is_empty() {
            return Err(Fatal::config(format!(
                "{file}: no devices configured; list them under `devices:` (see `hass-serial-bridge list`)"
            )));
        }
        for (i, device) in devices.iter().enumerate() {
            // A missing device is fine (it may be plugged in later); a path
            // that is something else is a mistake in the config.
            if let DeviceSource::Path(path) = &device.source
                && let Some(kind) = serial_port::not_a_tty_kind(path)
            {
                return Err(Fatal::config(format!(
                    "{file}: devices[{i}].path: {} is {kind}, not a serial device",
                    path.display()
                )));
            }
        }
        Ok(Self {
            devices,
            keepalive,
            roots: args.roots(),
        })
    }

    async fn run(self, ctx: Context) -> Result<(), Fatal> {
        // Registered first: with no checks yet, /readyz would say ready.
        let checks: Vec<_> = self
            .devices
            .iter()
            .map(|d| ctx.readiness.register(format!("device:{}", d.name)))
            .collect();
        // Bind every port before serving any, so a port in use stops the
        // process at start instead of leaving one device unserved.
        let mut listeners = Vec::with_capacity(self.devices.len());
        for (i, device) in self.devices.iter().enumerate() {
            let bound = BoundPorts::bind(device)
                .await
                .map_err(|e| Fatal::runtime(format!("devices[{i}] ({}): {e}", device.name)))?;
            listeners.push(bound);
        }
        let names: Vec<String> = self.devices.iter().map(|d| d.name.clone()).collect();
        let mut metrics = None;
        ctx.metrics
            .register(|registry| metrics = Some(BridgeMetrics::register(registry, &names)));
        let metrics = metrics.unwrap_or_default();
        // One mDNS responder for the devices that are announced; without it
        // they are still served, only not found by themselves.
        let advertiser = if self.devices.iter().any(|d| d.zeroconf.is_some()) {
            match Advertiser::start() {
                Ok(advertiser) => Some(Arc::new(advertiser)),
                Err(e) => {
                    error!("{e}; devices are served but not announced");
                    None
                }
            }
        } else {
            None
        };
        for ((spec, listener), ready) in self.devices.into_iter().zip(listeners).zip(checks) {
            let bridge = DeviceBridge {
                ready,
                metrics: metrics.device(&spec.name),
                keepalive: self.keepalive,
                roots: self.roots.clone(),
                shutdown: ctx.shutdown.clone(),
                advertiser: advertiser.clone().filter(|_| spec.zeroconf.is_some()),
                spec,
            };
            match bridge.spec.rfc2217_listen {
                Some(rfc2217) => info!(
                    device = %bridge.spec.name, listen = %bridge.spec.listen, %rfc2217, "listening"
                ),
                None => {
                    info!(device = %bridge.spec.name, listen = %bridge.spec.listen, "listening")
                }
            }
            ctx.shutdown.spawn(async move {
                let name = bridge.spec.name.clone();
                let served =
                    tokio::task::spawn_blocking(move || serve_on_own_thread(bridge, listener));
                match served.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => error!(device = %name, "device task failed to start: {e}"),
                    Err(e) => error!(device = %name, "device task ended abnormally: {e}"),
                }
            });
        }
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}

/// Runs one device on a thread of its own with a single-threaded runtime:
/// every wakeup for its bytes lands on the thread already running it, with no
/// hand-off between worker threads in the round trip.
fn serve_on_own_thread(bridge: DeviceBridge, bound: BoundPorts) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listeners = Listeners::register(bound)?;
        bridge.run(listeners).await;
        Ok(())
    })
}
