use std::process::ExitCode;

fn main() -> ExitCode {
    hass_runtime::run::<hass_exporter::Exporter>()
}
