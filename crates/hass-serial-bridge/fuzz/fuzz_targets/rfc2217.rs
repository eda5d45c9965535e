//! A whole RFC 2217 session fed arbitrary client bytes: Telnet decoding,
//! COM-PORT-OPTION commands and the answers must end cleanly when the client
//! goes, never panic or hang; how the bytes are split across reads must not
//! change what they decode to; and what the decoder lets pass untouched must
//! be what it would have decoded.
#![no_main]

use hass_serial_bridge::config::SerialSettings;
use hass_serial_bridge::line_control::{LineControl, LineSettings, ModemState};
use hass_serial_bridge::metrics::BridgeMetrics;
use hass_serial_bridge::rfc2217::session::{self, Device};
use hass_serial_bridge::rfc2217::telnet::Decoder;
use hass_serial_bridge::serial_port::{Pin, PinError};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tty that takes every setting; the fuzzer picks how it answers.
struct AnyLine {
    refuse: bool,
    levels: u8,
}

impl LineControl for AnyLine {
    fn apply(&mut self, line: &LineSettings) -> Result<LineSettings, String> {
        if self.refuse { Err("refused".into()) } else { Ok(*line) }
    }
    fn set_pin(&mut self, pin: Pin, level: bool) -> Result<(), PinError> {
        let bit = if pin == Pin::Dtr { 0x20 } else { 0x10 };
        self.levels = if level { self.levels | bit } else { self.levels & !bit };
        if self.refuse { Err(PinError::NoModemLines) } else { Ok(()) }
    }
    fn set_break(&mut self, _on: bool) -> Result<(), String> {
        Ok(())
    }
    fn purge(&mut self, _input: bool, _output: bool) -> Result<(), String> {
        Ok(())
    }
    fn modem_state(&mut self) -> Option<ModemState> {
        (!self.refuse).then_some(self.levels)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };

    // Split anywhere, the decoder says the same.
    let split = usize::from(selector) % (input.len() + 1);
    let (mut whole, mut at_once) = (Decoder::default(), (Vec::new(), Vec::new()));
    whole.decode(input, &mut at_once.0, &mut at_once.1);
    let (mut parts, mut in_two) = (Decoder::default(), (Vec::new(), Vec::new()));
    parts.decode(&input[..split], &mut in_two.0, &mut in_two.1);
    parts.decode(&input[split..], &mut in_two.0, &mut in_two.1);
    assert_eq!(at_once, in_two);
    if Decoder::default().passes_through(input) {
        assert_eq!(at_once, (input.to_vec(), Vec::new()));
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let metrics = BridgeMetrics::register(
            &mut prometheus_client::registry::Registry::default(),
            &["fuzz".to_owned()],
        )
        .device("fuzz");
        let (serial, mut stick) = tokio::io::duplex(64 * 1024);
        let (client, mut peer) = tokio::io::duplex(64 * 1024);
        let (mut serial_rx, mut serial_tx) = tokio::io::split(serial);
        let (client_rx, client_tx) = tokio::io::split(client);
        let mut line = AnyLine { refuse: selector & 1 == 1, levels: 0 };
        let settings = SerialSettings::default();
        let device = Device {
            rx: &mut serial_rx,
            tx: &mut serial_tx,
            control: &mut line,
            configured: &settings,
            name: "fuzz",
        };
        let stick_talks = async {
            let _ = stick.write_all(&input[..split]).await;
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(stick.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let client_talks = async {
            let _ = peer.write_all(input).await;
            let _ = peer.shutdown().await;
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(peer.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            _ = session::serve(device, client_rx, client_tx, &metrics) => {}
            _ = async { tokio::join!(stick_talks, client_talks) } => {}
        }
    });
});
