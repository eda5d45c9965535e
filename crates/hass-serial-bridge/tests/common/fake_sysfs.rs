//! Fake sysfs and /dev trees shaped like the kernel's and udev's, in a temp
//! dir, for `list` and USB matching.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use hass_serial_bridge::sysfs::SysRoots;

/// A USB serial port as the kernel lays it out: the USB device folder with
/// its attributes, an interface folder, and the tty below it.
#[derive(Debug)]
pub(crate) struct FakeUsbPort<'a> {
    pub(crate) tty: &'a str,
    pub(crate) bus_path: &'a str,
    pub(crate) vid: &'a str,
    pub(crate) pid: &'a str,
    pub(crate) manufacturer: Option<&'a str>,
    pub(crate) product: Option<&'a str>,
    pub(crate) serial: Option<&'a str>,
    pub(crate) driver: &'a str,
    pub(crate) by_id: Option<&'a str>,
}

pub(crate) fn roots(dir: &Path) -> SysRoots {
    SysRoots {
        sys: dir.join("sys"),
        dev: dir.join("dev"),
    }
}

pub(crate) fn add_usb_port(dir: &Path, port: &FakeUsbPort<'_>) {
    let roots = roots(dir);
    let usb = roots
        .sys
        .join("devices/pci0000:00/0000:00:14.0/usb1")
        .join(port.bus_path);
    let interface = usb.join(format!("{}:1.0", port.bus_path));
    let tty_dir = interface.join(port.tty).join("tty").join(port.tty);
    fs::create_dir_all(&tty_dir).expect("fake tty dir");
    fs::write(usb.join("idVendor"), format!("{}\n", port.vid)).expect("idVendor");
    fs::write(usb.join("idProduct"), format!("{}\n", port.pid)).expect("idProduct");
    for (name, value) in [
        ("manufacturer", port.manufacturer),
        ("product", port.product),
        ("serial", port.serial),
    ] {
        if let Some(value) = value {
            fs::write(usb.join(name), format!("{value}\n")).expect("usb attribute");
        }
    }
    fs::write(interface.join("bInterfaceNumber"), "00\n").expect("bInterfaceNumber");
    let drivers = roots.sys.join("bus/usb-serial/drivers").join(port.driver);
    fs::create_dir_all(&drivers).expect("driver dir");
    symlink(&drivers, interface.join(port.tty).join("driver")).expect("driver link");
    // /sys/class/tty/<tty> -> devices/.../tty/<tty>, whose `device` is the port.
    symlink(interface.join(port.tty), tty_dir.join("device")).expect("device link");
    let class = roots.sys.join("class/tty");
    fs::create_dir_all(&class).expect("class dir");
    symlink(&tty_dir, class.join(port.tty)).expect("class link");
    fs::create_dir_all(&roots.dev).expect("dev dir");
    if let Some(by_id) = port.by_id {
        let dir = roots.dev.join("serial/by-id");
        fs::create_dir_all(&dir).expect("by-id dir");
        symlink(format!("../../{}", port.tty), dir.join(by_id)).expect("by-id link");
    }
}

/// A virtual terminal: in the class folder, with no `device` link.
pub(crate) fn add_virtual_tty(dir: &Path, tty: &str) {
    let roots = roots(dir);
    let virtual_dir = roots.sys.join("devices/virtual/tty").join(tty);
    fs::create_dir_all(&virtual_dir).expect("virtual tty");
    let class = roots.sys.join("class/tty");
    fs::create_dir_all(&class).expect("class dir");
    symlink(&virtual_dir, class.join(tty)).expect("class link");
}

/// A legacy 8250 port: `uart_type` 0 when no UART is there (the kernel
/// registers them anyway), 4 for a 16550A.
pub(crate) fn add_8250(dir: &Path, tty: &str, uart_type: u8) {
    let roots = roots(dir);
    let port = roots.sys.join("devices/platform/serial8250").join(tty);
    let tty_dir = port.join("tty").join(tty);
    fs::create_dir_all(&tty_dir).expect("8250 tty dir");
    fs::write(tty_dir.join("type"), format!("{uart_type}\n")).expect("type");
    let driver = roots.sys.join("bus/serial-base/drivers/port");
    fs::create_dir_all(&driver).expect("8250 driver");
    symlink(&driver, port.join("driver")).expect("driver link");
    symlink(&port, tty_dir.join("device")).expect("device link");
    let class = roots.sys.join("class/tty");
    fs::create_dir_all(&class).expect("class dir");
    symlink(&tty_dir, class.join(tty)).expect("class link");
}
