//! The serial line's settings and control lines, changed while the device is
//! open: what an RFC 2217 client asks for (baud rate, framing, flow control,
//! DTR/RTS, break, purge) and the modem state it is told about.

use mio_serial::SerialPort;

use crate::config::{FlowControl, Parity, SerialSettings};
use crate::serial_port::{Pin, PinError};

/// The framing and speed of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub flow_control: FlowControl,
}

impl From<&SerialSettings> for LineSettings {
    fn from(s: &SerialSettings) -> Self {
        Self {
            baud: s.baud,
            data_bits: s.data_bits,
            parity: s.parity,
            stop_bits: s.stop_bits,
            flow_control: s.flow_control,
        }
    }
}

/// The inputs a modem-state notification reports, RFC 2217's bit layout
/// (CD 0x80, RI 0x40, DSR 0x20, CTS 0x10).
pub type ModemState = u8;

/// What an open device lets a client change. Implemented by [`TtyControl`]
/// on the real tty; tests wrap it to stand in for modem-control lines a pty
/// does not have.
pub trait LineControl: Send {
    /// Applies `line` and returns what the tty now reports.
    fn apply(&mut self, line: &LineSettings) -> Result<LineSettings, String>;
    fn set_pin(&mut self, pin: Pin, level: bool) -> Result<(), PinError>;
    fn set_break(&mut self, on: bool) -> Result<(), String>;
    /// Discards bytes waiting in the tty: received from the device
    /// (`input`), queued for it (`output`).
    fn purge(&mut self, input: bool, output: bool) -> Result<(), String>;
    /// CTS, DSR, RI and CD; `None` when the tty has no modem lines.
    fn modem_state(&mut self) -> Option<ModemState>;
}

/// A handle on the open tty for ioctls, beside the reading and writing ones.
#[derive(Debug)]
pub struct TtyControl(pub(crate) mio_serial::SerialStream);

impl TtyControl {
    fn line(&self) -> Result<LineSettings, String> {
        let port = &self.0;
        let e = |e: mio_serial::Error| e.to_string();
        Ok(LineSettings {
            baud: port.baud_rate().map_err(e)?,
            data_bits: match port.data_bits().map_err(e)? {
                mio_serial::DataBits::Five => 5,
                mio_serial::DataBits::Six => 6,
                mio_serial::DataBits::Seven => 7,
                mio_serial::DataBits::Eight => 8,
            },
            parity: match port.parity().map_err(e)? {
                mio_serial::Parity::None => Parity::None,
                mio_serial::Parity::Odd => Parity::Odd,
                mio_serial::Parity::Even => Parity::Even,
            },
            stop_bits: match port.stop_bits().map_err(e)? {
                mio_serial::StopBits::One => 1,
                mio_serial::StopBits::Two => 2,
            },
            flow_control: match port.flow_control().map_err(e)? {
                mio_serial::FlowControl::None => FlowControl::None,
                mio_serial::FlowControl::Software => FlowControl::XonXoff,
                mio_serial::FlowControl::Hardware => FlowControl::RtsCts,
            },
        })
    }
}

impl LineControl for TtyControl {
    fn apply(&mut self, line: &LineSettings) -> Result<LineSettings, String> {
        let port = &mut self.0;
        let e = |e: mio_serial::Error| e.to_string();
        port.set_baud_rate(line.baud).map_err(e)?;
        port.set_data_bits(crate::serial_port::data_bits(line.data_bits))
            .map_err(e)?;
        port.set_parity(crate::serial_port::parity(line.parity))
            .map_err(e)?;
        port.set_stop_bits(crate::serial_port::stop_bits(line.stop_bits))
            .map_err(e)?;
        port.set_flow_control(crate::serial_port::flow_control(line.flow_control))
            .map_err(e)?;
        self.line()
    }

    fn set_pin(&mut self, pin: Pin, level: bool) -> Result<(), PinError> {
        let set = match pin {
            Pin::Dtr => self.0.write_data_terminal_ready(level),
            Pin::Rts => self.0.write_request_to_send(level),
        };
        set.map_err(|e| {
            // The tty layer answers ENOTTY when the driver has no
            // modem-control ioctls; serialport passes errno on only as
            // nix's description of it (tests/pins.rs fails if they differ).
            if e.kind == mio_serial::ErrorKind::Unknown
                && e.description == nix::errno::Errno::ENOTTY.desc()
            {
                PinError::NoModemLines
            } else {
                PinError::Failed(e.to_string())
            }
        })
    }

    fn set_break(&mut self, on: bool) -> Result<(), String> {
        let set = if on {
            self.0.set_break()
        } else {
            self.0.clear_break()
        };
        set.map_err(|e| e.to_string())
    }

    fn purge(&mut self, input: bool, output: bool) -> Result<(), String> {
        let which = match (input, output) {
            (true, true) => mio_serial::ClearBuffer::All,
            (true, false) => mio_serial::ClearBuffer::Input,
            (false, true) => mio_serial::ClearBuffer::Output,
            (false, false) => return Ok(()),
        };
        self.0.clear(which).map_err(|e| e.to_string())
    }

    fn modem_state(&mut self) -> Option<ModemState> {
        let port = &mut self.0;
        let bit = |on: bool, mask: u8| if on { mask } else { 0 };
        Some(
            bit(port.read_carrier_detect().ok()?, 0x80)
                | bit(port.read_ring_indicator().ok()?, 0x40)
                | bit(port.read_data_set_ready().ok()?, 0x20)
                | bit(port.read_clear_to_send().ok()?, 0x10),
        )
    }
}
