//! `hass-serial-bridge`: the daemon, and its `list` command; the logic lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    // `list` is a one-shot subcommand outside the runtime's serve lifecycle.
    if std::env::args_os().nth(1).is_some_and(|arg| arg == "list") {
        return hass_serial_bridge::list::main(std::env::args_os().skip(2));
    }
    hass_runtime::run::<hass_serial_bridge::SerialBridge>()
}
