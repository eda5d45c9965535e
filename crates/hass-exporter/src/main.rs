//! `hass-exporter`: probes and metrics; the logic lives in the library ([`hass_exporter::Exporter`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    hass_runtime::run::<hass_exporter::Exporter>()
}
