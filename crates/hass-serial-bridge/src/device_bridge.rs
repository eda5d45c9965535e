//! One device's life: wait for it, open it, serve one TCP client at a time,
//! and when it vanishes close the client, report not ready and wait again.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hass_runtime::readiness::ReadinessCheck;
use hass_runtime::shutdown::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tracing::{debug, info, warn};

use crate::client_socket;
use crate::config::{DeviceSource, DeviceSpec, KeepaliveConfig, SecondClient};
use crate::device_watcher::DeviceWatcher;
use crate::listeners::{Listeners, Protocol};
use crate::metrics::{DeviceMetrics, RefusalReason};
use crate::rfc2217::session;
use crate::serial_port::{self, OpenError, OpenedPort, PinOutcome};
use crate::serial_stream::SerialStream;
use crate::sysfs::{self, SysRoots, UsbInfo};
use crate::zeroconf::{Advertiser, Announcement};

/// Sized for a burst from a fast client; serial reads are far smaller.
const BUFFER: usize = 16 * 1024;

/// Everything one device's task needs.
#[derive(Debug)]
pub struct DeviceBridge {
    pub spec: DeviceSpec,
    pub keepalive: KeepaliveConfig,
    pub roots: SysRoots,
    pub metrics: DeviceMetrics,
    pub ready: ReadinessCheck,
    pub shutdown: Shutdown,
    /// Set when the device is announced on mDNS (`zeroconf:`).
    pub advertiser: Option<Arc<Advertiser>>,
}

/// Why serving an open device stopped.
enum DeviceEnd {
    Shutdown,
    Gone(String),
}

/// Why one client's session stopped.
#[derive(Debug)]
pub enum SessionEnd {
    ClientGone(String),
    DeviceGone(String),
}

impl DeviceBridge {
    /// Serves the device on its ports until shutdown.
    pub async fn run(self, listeners: Listeners) {
        let mut opened_before = false;
        loop {
            let port = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                port = self.wait_for_device(&listeners) => port,
            };
            if opened_before {
                self.metrics.reopens.inc();
            }
            opened_before = true;
            self.metrics.device_up.set(1);
            self.ready.set_ready();
            info!(device = %self.spec.name, "device open, serving on {}", self.spec.listen);
            let announced = self.announce();
            let end = self.serve_device(port, &listeners).await;
            self.metrics.device_up.set(0);
            if let (Some(advertiser), Some(name)) = (&self.advertiser, announced) {
                advertiser.withdraw(&name);
            }
            match end {
                DeviceEnd::Shutdown => return,
                DeviceEnd::Gone(reason) => {
                    warn!(device = %self.spec.name, "device lost: {reason}; waiting for it to return");
                    self.ready.set_not_ready(format!("device lost: {reason}"));
                }
            }
        }
    }

    /// Tries to open the device whenever it may have appeared, refusing
    /// clients meanwhile. Returns once it is open.
    async fn wait_for_device(&self, listeners: &Listeners) -> OpenedPort {
        let mut watcher = DeviceWatcher::new(&self.watch_dirs());
        let mut last_error: Option<OpenError> = None;
        loop {
            match self.open_device().await {
                Ok(opened) => {
                    if opened.pins == PinOutcome::NoModemLines {
                        self.metrics.pins_skipped.inc();
                        warn!(
                            device = %self.spec.name,
                            "the device has no modem-control lines (a pty or network tty?): \
                             dtr, rts and pin_sequence not applied; serving it anyway"
                        );
                    }
                    return opened;
                }
                Err(e) => {
                    // Log each new reason once, not on every poll.
                    if last_error.as_ref() != Some(&e) {
                        warn!(device = %self.spec.name, "device not available: {e}");
                        self.ready.set_not_ready(e.to_string());
                        last_error = Some(e);
                    }
                }
            }
            tokio::select! {
                _ = watcher.changed() => {}
                accepted = listeners.accept() => match accepted {
                    Ok((stream, peer, _)) => self.refuse(stream, peer, RefusalReason::DeviceAbsent),
                    Err(e) => self.accept_failed(e).await,
                },
            }
        }
    }

    async fn open_device(&self) -> Result<OpenedPort, OpenError> {
        let path = match &self.spec.source {
            DeviceSource::Path(path) => path.clone(),
            DeviceSource::Usb(usb) => {
                let ports = sysfs::scan(&self.roots);
                match usb.find(&ports) {
                    Ok(port) => port.dev_path.clone(),
                    Err(reason) => {
                        return Err(OpenError::Absent {
                            path: format!("USB {usb} ({reason})"),
                        });
                    }
                }
            }
        };
        serial_port::open(&path, &self.spec.serial).await
    }

    /// Announces the open device, if it is to be; returns the name to
    /// withdraw it by.
    fn announce(&self) -> Option<String> {
        let advertiser = self.advertiser.as_ref()?;
        let config = self.spec.zeroconf.as_ref()?;
        let usb = self.usb_identity();
        let ad = Announcement::of(
            &self.spec.name,
            config,
            self.spec.listen,
            usb.as_ref(),
            advertiser.host(),
        );
        advertiser.announce(&ad)
    }

    /// The USB identity of the device now open, from sysfs.
    fn usb_identity(&self) -> Option<UsbInfo> {
        let ports = sysfs::scan(&self.roots);
        match &self.spec.source {
            DeviceSource::Usb(usb) => usb.find(&ports).ok().and_then(|p| p.usb.clone()),
            DeviceSource::Path(path) => {
                let real = std::fs::canonicalize(path).ok()?;
                let tty = real.file_name()?.to_str()?;
                ports.into_iter().find(|p| p.tty == tty).and_then(|p| p.usb)
            }
        }
    }

    /// Folders where the device appears when plugged in.
    fn watch_dirs(&self) -> Vec<PathBuf> {
        match &self.spec.source {
            DeviceSource::Path(path) => path.parent().map(PathBuf::from).into_iter().collect(),
            DeviceSource::Usb(_) => vec![self.roots.dev.clone()],
        }
    }

    /// Serves clients on the open device until it goes away or shutdown.
    async fn serve_device(&self, port: OpenedPort, listeners: &Listeners) -> DeviceEnd {
        let (mut serial_rx, mut serial_tx) = tokio::io::split(port.stream);
        let mut control = port.control;
        let mut next_client: Option<(TcpStream, SocketAddr, Protocol)> = None;
        let mut buf = vec![0u8; BUFFER];
        loop {
            let (stream, peer, protocol) = match next_client.take() {
                Some(client) => client,
                None => {
                    // No client: keep reading so an unplug is noticed at once;
                    // what the stick says to nobody is dropped.
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return DeviceEnd::Shutdown,
                        read = serial_rx.read(&mut buf) => match read {
                            Ok(0) => return DeviceEnd::Gone("end of file".to_owned()),
                            Ok(n) => {
                                self.metrics.read_bytes.inc_by(n as u64);
                                self.metrics.dropped_bytes.inc_by(n as u64);
                                self.metrics.touch();
                                continue;
                            }
                            Err(e) => return DeviceEnd::Gone(e.to_string()),
                        },
                        accepted = listeners.accept() => match accepted {
                            Ok(client) => client,
                            Err(e) => {
                                self.accept_failed(e).await;
                                continue;
                            }
                        },
                    }
                }
            };
            if let Err(e) = client_socket::configure(&stream, &self.keepalive) {
                warn!(device = %self.spec.name, %peer, "cannot set socket options: {e}; closing");
                continue;
            }
            self.metrics.connects.inc();
            self.metrics.client_connected.set(1);
            info!(device = %self.spec.name, %peer, ?protocol, "client connected");

            let end = {
                let (client_rx, client_tx) = stream.into_split();
                let mut session = pin!(async {
                    match protocol {
                        Protocol::Raw => {
                            forward_both(
                                &mut serial_rx,
                                &mut serial_tx,
                                client_rx,
                                client_tx,
                                &self.metrics,
                            )
                            .await
                        }
                        Protocol::Rfc2217 => {
                            let device = session::Device {
                                rx: &mut serial_rx,
                                tx: &mut serial_tx,
                                control: &mut control,
                                configured: &self.spec.serial,
                                name: &self.spec.name,
                            };
                            session::serve(device, client_rx, client_tx, &self.metrics).await
                        }
                    }
                });
                loop {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break None,
                        end = &mut session => break Some(end),
                        accepted = listeners.accept() => match accepted {
                            Ok((newcomer, new_peer, new_protocol)) => match self.spec.second_client {
                                SecondClient::Reject => {
                                    self.refuse(newcomer, new_peer, RefusalReason::Busy);
                                }
                                SecondClient::Replace => {
                                    next_client = Some((newcomer, new_peer, new_protocol));
                                    break Some(SessionEnd::ClientGone(format!(
                                        "replaced by {new_peer}"
                                    )));
                                }
                            },
                            Err(e) => self.accept_failed(e).await,
                        },
                    }
                }
                // The session, and with it the old client's socket, is
                // dropped here: before any newcomer gets a byte.
            };
            self.metrics.client_connected.set(0);
            match end {
                None => return DeviceEnd::Shutdown,
                Some(SessionEnd::DeviceGone(reason)) => {
                    info!(device = %self.spec.name, %peer, "closing client: device lost");
                    return DeviceEnd::Gone(reason);
                }
                Some(SessionEnd::ClientGone(reason)) => {
                    if next_client.is_some() {
                        self.metrics.replacements.inc();
                    }
                    info!(device = %self.spec.name, %peer, "client gone: {reason}");
                }
            }
        }
    }

    /// Closes a client unserved, with nothing written.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr, reason: RefusalReason) {
        self.metrics.refused(reason);
        info!(device = %self.spec.name, %peer, ?reason, "client refused");
        drop(stream);
    }

    /// Accept fails on resource limits (EMFILE); pause so it cannot spin.
    async fn accept_failed(&self, e: io::Error) {
        warn!(device = %self.spec.name, "accept failed: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Copies both ways at once until either side ends.
async fn forward_both(
    serial_rx: &mut ReadHalf<SerialStream>,
    serial_tx: &mut WriteHalf<SerialStream>,
    mut client_rx: OwnedReadHalf,
    mut client_tx: OwnedWriteHalf,
    metrics: &DeviceMetrics,
) -> SessionEnd {
    let to_client = async {
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = match serial_rx.read(&mut buf).await {
                Ok(0) => return SessionEnd::DeviceGone("end of file".to_owned()),
                Ok(n) => n,
                Err(e) => return SessionEnd::DeviceGone(e.to_string()),
            };
            metrics.read_bytes.inc_by(n as u64);
            metrics.touch();
            if let Err(e) = client_tx.write_all(&buf[..n]).await {
                return SessionEnd::ClientGone(e.to_string());
            }
        }
    };
    let to_device = async {
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) => return SessionEnd::ClientGone("closed by the client".to_owned()),
                Ok(n) => n,
                Err(e) => return SessionEnd::ClientGone(e.to_string()),
            };
            if let Err(e) = serial_tx.write_all(&buf[..n]).await {
                return SessionEnd::DeviceGone(e.to_string());
            }
            metrics.written_bytes.inc_by(n as u64);
            metrics.touch();
        }
    };
    let end = tokio::select! {
        end = to_client => end,
        end = to_device => end,
    };
    debug!("session ended");
    end
}
