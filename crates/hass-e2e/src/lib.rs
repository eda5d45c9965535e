//! End-to-end tests of hass-sidecars, in `tests/`: the built binaries run
//! together on loopback as one Home Assistant pod would run them, with a real
//! PostgreSQL, a stand-in Home Assistant, a pty stick and real MQTT clients.
//! This library is empty; the helpers live in `tests/common`.
