//! Reading the serial devices the kernel knows from sysfs
//! (`/sys/class/tty/*/device/...`) and udev's `/dev/serial/by-id` links.
//! The roots are parameters so tests can run on a fake tree.

use std::fs;
use std::path::{Path, PathBuf};

/// Where sysfs and device nodes live: `/sys` and `/dev` outside tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysRoots {
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl Default for SysRoots {
    fn default() -> Self {
        Self {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// One serial port as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPortInfo {
    /// Kernel name, e.g. `ttyUSB0`.
    pub tty: String,
    /// `/dev/ttyUSB0`.
    pub dev_path: PathBuf,
    /// udev's stable names for it, e.g. `/dev/serial/by-id/usb-ITead_...-port0`.
    pub by_id: Vec<PathBuf>,
    /// The kernel driver, e.g. `cp210x`, `cdc_acm`.
    pub driver: Option<String>,
    /// Present when the port sits on a USB device.
    pub usb: Option<UsbInfo>,
}

/// The USB device a port belongs to, from its sysfs attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbInfo {
    pub vid: u16,
    pub pid: u16,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    /// The interface number, for sticks with several ports.
    pub interface: Option<u8>,
}

/// Every tty backed by a device, sorted by name. Unreadable entries are
/// skipped: a port that vanishes mid-scan is simply not listed.
pub fn scan(roots: &SysRoots) -> Vec<SerialPortInfo> {
    let by_id = by_id_links(&roots.dev);
    // Device links resolve to canonical paths; compare like with like.
    let sys = fs::canonicalize(&roots.sys).unwrap_or_else(|_| roots.sys.clone());
    let Ok(entries) = fs::read_dir(roots.sys.join("class/tty")) else {
        return Vec::new();
    };
    let mut ports: Vec<SerialPortInfo> = entries
        .flatten()
        .filter_map(|entry| {
            let tty = entry.file_name().to_string_lossy().into_owned();
            // Virtual terminals and ptys have no `device` link.
            let device = fs::canonicalize(entry.path().join("device")).ok()?;
            // Legacy 8250 ports are registered whether or not a UART is
            // there; the empty ones say `type` 0 (PORT_UNKNOWN).
            if read_attr(&entry.path().join("type")).as_deref() == Some("0") {
                return None;
            }
            let driver = link_name(&device.join("driver"));
            Some(SerialPortInfo {
                dev_path: roots.dev.join(&tty),
                by_id: by_id
                    .iter()
                    .filter(|(_, target)| *target == tty)
                    .map(|(link, _)| link.clone())
                    .collect(),
                usb: usb_info(&device, &sys),
                driver,
                tty,
            })
        })
        .collect();
    ports.sort_by(|a, b| a.tty.cmp(&b.tty));
    ports
}

/// `/dev/serial/by-id/*` links and the tty name each points to.
fn by_id_links(dev: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = fs::read_dir(dev.join("serial/by-id")) else {
        return Vec::new();
    };
    let mut links: Vec<_> = entries
        .flatten()
        .filter_map(|entry| Some((entry.path(), link_name(&entry.path())?)))
        .collect();
    links.sort();
    links
}

/// The last component of a symlink's target.
fn link_name(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Walks up from the tty's device to the USB device (the first folder with
/// `idVendor`), noting the interface passed on the way.
fn usb_info(device: &Path, sys: &Path) -> Option<UsbInfo> {
    let mut interface = None;
    let mut dir = device;
    while dir.starts_with(sys) && dir != sys {
        if let Some(vid) = read_hex(&dir.join("idVendor")) {
            return Some(UsbInfo {
                vid,
                pid: read_hex(&dir.join("idProduct"))?,
                manufacturer: read_attr(&dir.join("manufacturer")),
                product: read_attr(&dir.join("product")),
                serial: read_attr(&dir.join("serial")),
                interface,
            });
        }
        if interface.is_none() {
            interface = read_attr(&dir.join("bInterfaceNumber"))
                .and_then(|s| u8::from_str_radix(&s, 16).ok());
        }
        dir = dir.parent()?;
    }
    None
}

fn read_attr(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn read_hex(path: &Path) -> Option<u16> {
    u16::from_str_radix(&read_attr(path)?, 16).ok()
}
