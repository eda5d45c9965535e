//! `hass-serial-bridge`: serves Zigbee/Z-Wave USB sticks over raw TCP, so
//! Zigbee2MQTT (`tcp://`), ZHA (`socket://`) and Z-Wave JS can run on any node
//! while the stick stays on one.
//!
//! Each configured device gets its own TCP port and exactly one client at a
//! time (`second_client: reject | replace`); bytes cross at once in both
//! directions; an unplugged stick is reopened as soon as it returns. `list`
//! shows the serial devices sysfs knows, with a guess at each coordinator.
//!
//! With `zeroconf:` a device is announced on mDNS while it is open, so ZHA
//! discovers it: `_zigbee-coordinator._tcp` with TXT `radio_type` (from
//! `zeroconf.radio_type`, or guessed from the USB identity) and
//! `serial_number`; `_serial-bridge._tcp` when no radio type is known. It is
//! withdrawn (goodbye packets) on unplug and at stop, announced again on
//! replug.
//!
//! With `rfc2217_port:` the device has a second port speaking RFC 2217
//! (Telnet COM-PORT-OPTION): pyserial's `rfc2217://`, firmware flashers and
//! ser2net-style clients set the baud rate, framing, flow control, DTR/RTS
//! and break themselves and hear modem-input changes. What the tty refuses
//! (a pty keeps 8 data bits and no parity) is answered with what it kept.
//! When that client goes, the configured line is put back.
//!
//! `dtr`, `rts` and `pin_sequence` are set on every open; a failure fails the
//! open (a stick left in its bootloader never answers). A device with no
//! modem-control lines at all (a pty, a network-backed tty) is served without
//! them, with a warning per open and `hass_serial_bridge_pins_skipped_total`.
//!
//! ```yaml
//! devices:
//!   - name: zigbee
//!     path: /dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0_USB_Dongle_Plus_8e6f-if00-port0
//!     listen: 0.0.0.0:6638
//!     baud: 115200            # data_bits 8, parity none, stop_bits 1 by default
//!     flow_control: none      # none | rts_cts | xon_xoff
//!     second_client: replace  # or reject
//!     zeroconf: {}            # announce on mDNS while open (host networking)
//!     rfc2217_port: 7638      # RFC 2217 on a second port (off by default)
//!   - name: zwave
//!     match: { usb: "0658:0200", serial: "optional" }
//!     listen: 0.0.0.0:6639
//!     dtr: true
//!     pin_sequence: [{ rts: false, wait: 100ms }]
//! keepalive: { idle: 10s, interval: 5s, count: 3, user_timeout: 25s }
//! ```

pub mod client_socket;
pub mod component;
pub mod config;
pub mod coordinators;
pub mod device_bridge;
pub mod device_watcher;
pub mod line_control;
pub mod list;
pub mod listeners;
pub mod metrics;
pub mod rfc2217;
pub mod serial_port;
pub mod serial_stream;
pub mod sysfs;
pub mod usb;
pub mod zeroconf;

pub use component::SerialBridge;
