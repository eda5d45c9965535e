//! `hass-broker`: the MQTT broker; the logic lives in the library ([`hass_broker::Broker`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    hass_runtime::run::<hass_broker::Broker>()
}
