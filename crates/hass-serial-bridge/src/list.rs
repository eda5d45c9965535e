//! `hass-serial-bridge list`: the serial devices this node can see, with what
//! a config needs to name them (by-id path, VID:PID, serial number).

use hass_runtime::logging::Untrusted;
use std::ffi::OsString;
use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::coordinators;
use crate::sysfs::{self, SerialPortInfo, SysRoots};

/// hass-serial-bridge list: print the serial devices this node can see.
#[derive(Debug, Parser)]
#[command(name = "hass-serial-bridge list")]
struct ListCli {
    /// Where sysfs is mounted.
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    sysfs_root: PathBuf,
    /// Where device nodes live.
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    dev_root: PathBuf,
}

/// Runs `list` with the arguments after the word `list`.
#[allow(clippy::print_stdout)] // Printing the report is the job.
pub fn main(args: impl Iterator<Item = OsString>) -> ExitCode {
    let cli = ListCli::parse_from(std::iter::once(OsString::from("list")).chain(args));
    let roots = SysRoots {
        sys: cli.sysfs_root,
        dev: cli.dev_root,
    };
    print!("{}", render(&sysfs::scan(&roots)));
    ExitCode::SUCCESS
}

/// The report `list` prints, one block per port.
pub fn render(ports: &[SerialPortInfo]) -> String {
    if ports.is_empty() {
        return "no serial devices found (is /sys mounted and the stick plugged in?)\n".to_owned();
    }
    let mut out = String::new();
    for port in ports {
        // Writing into a String cannot fail. Paths are escaped too: udev
        // names by-id links after the stick's own strings.
        let _ = writeln!(out, "{}", Untrusted(&port.dev_path.to_string_lossy()));
        for link in &port.by_id {
            let _ = writeln!(
                out,
                "  by-id:        {}",
                Untrusted(&link.to_string_lossy())
            );
        }
        if let Some(driver) = &port.driver {
            let _ = writeln!(out, "  driver:       {driver}");
        }
        match &port.usb {
            Some(usb) => {
                let _ = writeln!(out, "  usb:          {:04x}:{:04x}", usb.vid, usb.pid);
                let fields = [
                    ("manufacturer", &usb.manufacturer),
                    ("product", &usb.product),
                    ("serial", &usb.serial),
                ];
                // The device's own words: escaped, as a hostile stick could
                // send terminal control sequences.
                for (label, value) in fields {
                    if let Some(value) = value {
                        let _ = writeln!(out, "  {:<13} {}", format!("{label}:"), Untrusted(value));
                    }
                }
                if let Some(guess) = coordinators::guess(usb) {
                    let _ = writeln!(out, "  looks like:   {guess}");
                }
            }
            None => {
                let _ = writeln!(out, "  usb:          (not a USB device)");
            }
        }
    }
    out
}
