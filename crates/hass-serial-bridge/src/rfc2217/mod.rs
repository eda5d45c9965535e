//! RFC 2217 (Telnet COM-PORT-OPTION) on a device's second port: the client
//! sets the baud rate, framing, flow control, DTR/RTS and break, purges the
//! tty's buffers and is told of modem input changes, as pyserial's
//! `rfc2217://`, universal-silabs-flasher and ser2net's `telnet(rfc2217)`
//! clients expect. Data crosses as on the raw port, with IAC doubled.

pub mod com_port;
pub mod session;
pub mod telnet;
