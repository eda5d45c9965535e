//! `hass-suite`: the launcher; the logic lives in the library ([`hass_suite::Suite`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    hass_runtime::run::<hass_suite::Suite>()
}
