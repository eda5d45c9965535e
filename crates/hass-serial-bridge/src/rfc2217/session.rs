//! One RFC 2217 client's session: data both ways with IAC escaped, the
//! client's line settings and control lines applied to the tty, and the
//! modem state reported back.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::com_port::{self, Request, control, parity, purge};
use super::telnet::{self, Decoder, Event, Verb};
use crate::config::{FlowControl, Parity, SerialSettings};
use crate::device_bridge::SessionEnd;
use crate::line_control::{LineControl, LineSettings, ModemState};
use crate::metrics::DeviceMetrics;
use crate::serial_port::{Pin, PinError};

/// Sized like the raw bridge's buffer.
const BUFFER: usize = 16 * 1024;
/// Answers waiting for the client; when full, the client's commands wait.
const OUTBOUND_QUEUE: usize = 16;
/// How often the modem inputs are read while a client wants them.
const MODEM_POLL: Duration = Duration::from_millis(100);
/// RFC 2217 asks the server to report every modem input change by default.
const DEFAULT_MODEM_MASK: u8 = 0xff;

/// What the client-facing half is told by the half that reads the client.
enum Outbound {
    Bytes(Vec<u8>),
    /// FLOWCONTROL-SUSPEND (true) and -RESUME (false): stop or resume
    /// sending device data to the client.
    Suspend(bool),
}

/// The device side of a session.
#[derive(Debug)]
pub struct Device<'a, R, W, C> {
    pub rx: &'a mut R,
    pub tx: &'a mut W,
    pub control: &'a mut C,
    /// The configured settings: in effect when the session starts, and put
    /// back when it ends.
    pub configured: &'a SerialSettings,
    pub name: &'a str,
}

/// Serves one RFC 2217 client until it or the device goes.
pub async fn serve<R, W, C, CR, CW>(
    device: Device<'_, R, W, C>,
    client_rx: CR,
    mut client_tx: CW,
    metrics: &DeviceMetrics,
) -> SessionEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    C: LineControl,
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
{
    let Device {
        rx: serial_rx,
        tx: serial_tx,
        control,
        configured,
        name,
    } = device;
    let line = LineSettings::from(configured);
    let (outbound, to_send) = mpsc::channel(OUTBOUND_QUEUE);
    let mut hello = Vec::new();
    let mut options = Options::default();
    options.offer(&mut hello);
    if let Err(e) = client_tx.write_all(&hello).await {
        return SessionEnd::ClientGone(e.to_string());
    }
    let port = Port {
        control: &mut *control,
        line,
        dtr: None,
        rts: None,
        break_on: false,
        modem_mask: DEFAULT_MODEM_MASK,
        last_modem: None,
        has_modem_lines: true,
        name,
        metrics,
    };
    let end = tokio::select! {
        end = to_client(serial_rx, client_tx, to_send, metrics) => end,
        end = to_device(client_rx, serial_tx, port, options, outbound) => end,
    };
    // The next client gets the configured line, whatever this one set.
    if let Err(e) = control.apply(&line) {
        warn!(device = %name, "cannot restore the configured line settings: {e}");
    }
    for (pin, level) in [(Pin::Dtr, configured.dtr), (Pin::Rts, configured.rts)] {
        if let Some(level) = level
            && let Err(PinError::Failed(e)) = control.set_pin(pin, level)
        {
            warn!(device = %name, "cannot restore {pin:?}: {e}");
        }
    }
    end
}

/// Device data and answers to the client, IAC escaped; device data waits
/// while the client has asked for a pause (FLOWCONTROL-SUSPEND).
async fn to_client(
    serial_rx: &mut (impl AsyncRead + Unpin),
    mut client_tx: impl AsyncWrite + Unpin,
    mut to_send: mpsc::Receiver<Outbound>,
    metrics: &DeviceMetrics,
) -> SessionEnd {
    let mut buf = vec![0u8; BUFFER];
    let mut escaped = Vec::with_capacity(BUFFER + BUFFER / 8);
    let mut suspended = false;
    loop {
        tokio::select! {
            // Answers first: a client waits on them.
            biased;
            next = to_send.recv() => match next {
                Some(Outbound::Bytes(bytes)) => {
                    if let Err(e) = client_tx.write_all(&bytes).await {
                        return SessionEnd::ClientGone(e.to_string());
                    }
                }
                Some(Outbound::Suspend(on)) => suspended = on,
                // The other half ended; its end is the session's.
                None => std::future::pending::<()>().await,
            },
            read = serial_rx.read(&mut buf), if !suspended => {
                let n = match read {
                    Ok(0) => return SessionEnd::DeviceGone("end of file".to_owned()),
                    Ok(n) => n,
                    Err(e) => return SessionEnd::DeviceGone(e.to_string()),
                };
                metrics.read_bytes.inc_by(n as u64);
                metrics.touch();
                // Most reads hold no IAC: send them as they are.
                let wire = if buf[..n].contains(&telnet::IAC) {
                    escaped.clear();
                    telnet::escape(&buf[..n], &mut escaped);
                    &escaped[..]
                } else {
                    &buf[..n]
                };
                if let Err(e) = client_tx.write_all(wire).await {
                    return SessionEnd::ClientGone(e.to_string());
                }
            }
        }
    }
}

/// The client's bytes: data to the device, Telnet and COM-PORT-OPTION
/// handled, answers to the other half; and modem-state changes while the
/// client has the com port.
async fn to_device<C: LineControl>(
    mut client_rx: impl AsyncRead + Unpin,
    serial_tx: &mut (impl AsyncWrite + Unpin),
    mut port: Port<'_, C>,
    mut options: Options,
    outbound: mpsc::Sender<Outbound>,
) -> SessionEnd {
    let metrics = port.metrics;
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; BUFFER];
    let (mut data, mut events) = (Vec::with_capacity(BUFFER), Vec::new());
    let mut poll = tokio::time::interval(MODEM_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut reply = Vec::new();
        tokio::select! {
            read = client_rx.read(&mut buf) => {
                let n = match read {
                    Ok(0) => return SessionEnd::ClientGone("closed by the client".to_owned()),
                    Ok(n) => n,
                    Err(e) => return SessionEnd::ClientGone(e.to_string()),
                };
                let input = &buf[..n];
                let plain = if decoder.passes_through(input) {
                    input
                } else {
                    data.clear();
                    decoder.decode(input, &mut data, &mut events);
                    &data[..]
                };
                if !plain.is_empty() {
                    if let Err(e) = serial_tx.write_all(plain).await {
                        return SessionEnd::DeviceGone(e.to_string());
                    }
                    metrics.written_bytes.inc_by(plain.len() as u64);
                    metrics.touch();
                }
                for event in events.drain(..) {
                    on_event(event, &mut port, &mut options, &outbound, &mut reply).await;
                }
            }
            _ = poll.tick(), if port.has_modem_lines && options.com_port() => {
                port.report_modem_state(false, &mut reply);
            }
        }
        flush(&outbound, &mut reply).await;
    }
}

/// One Telnet event from the client; answers go to `reply`.
async fn on_event<C: LineControl>(
    event: Event,
    port: &mut Port<'_, C>,
    options: &mut Options,
    outbound: &mpsc::Sender<Outbound>,
    reply: &mut Vec<u8>,
) {
    let (metrics, name) = (port.metrics, port.name);
    match event {
        Event::Negotiate(verb, option) => {
            let agreed = options.answer(verb, option, reply);
            if agreed && option == telnet::COM_PORT_OPTION {
                // A first report, so the client knows the inputs before any
                // change.
                port.report_modem_state(true, reply);
            }
        }
        Event::Subnegotiation(telnet::COM_PORT_OPTION, request) => match Request::parse(&request) {
            Some(Request::FlowControlSuspend) => {
                flush(outbound, reply).await;
                let _ = outbound.send(Outbound::Suspend(true)).await;
            }
            Some(Request::FlowControlResume) => {
                flush(outbound, reply).await;
                let _ = outbound.send(Outbound::Suspend(false)).await;
            }
            Some(request) => port.handle(request, reply),
            None => {
                metrics.protocol_errors.inc();
                debug!(device = %name, "unknown or malformed COM-PORT-OPTION command dropped");
            }
        },
        // NOP, go ahead, and the like mean nothing here.
        Event::Command(_) => {}
        Event::Subnegotiation(..) | Event::Oversized(_) | Event::Malformed => {
            metrics.protocol_errors.inc();
            debug!(device = %name, "telnet input dropped: {event:?}");
        }
    }
}

/// Hands queued answers to the client-facing half.
async fn flush(outbound: &mpsc::Sender<Outbound>, reply: &mut Vec<u8>) {
    if !reply.is_empty() {
        // A send fails only once the other half has ended, and with it the
        // session.
        let _ = outbound.send(Outbound::Bytes(std::mem::take(reply))).await;
    }
}

/// The tty as one client sees it: what it set, and what it was told.
struct Port<'a, C> {
    control: &'a mut C,
    line: LineSettings,
    /// Levels this client set; `None` until it sets one.
    dtr: Option<bool>,
    rts: Option<bool>,
    break_on: bool,
    modem_mask: u8,
    last_modem: Option<ModemState>,
    has_modem_lines: bool,
    name: &'a str,
    metrics: &'a DeviceMetrics,
}

impl<C: LineControl> Port<'_, C> {
    fn handle(&mut self, request: Request, reply: &mut Vec<u8>) {
        match request {
            Request::Signature(theirs) => {
                if theirs.is_empty() {
                    let ours = concat!("hass-serial-bridge ", env!("CARGO_PKG_VERSION"));
                    answer(com_port::SIGNATURE, ours.as_bytes(), reply);
                }
            }
            Request::SetBaudRate(baud) => {
                if baud != 0 {
                    self.change(LineSettings { baud, ..self.line }, "baud rate");
                }
                answer(com_port::SET_BAUDRATE, &self.line.baud.to_be_bytes(), reply);
            }
            Request::SetDataSize(bits) => {
                if (5..=8).contains(&bits) {
                    self.change(
                        LineSettings {
                            data_bits: bits,
                            ..self.line
                        },
                        "data size",
                    );
                }
                answer(com_port::SET_DATASIZE, &[self.line.data_bits], reply);
            }
            Request::SetParity(code) => {
                let wanted = match code {
                    parity::NONE => Some(Parity::None),
                    parity::ODD => Some(Parity::Odd),
                    parity::EVEN => Some(Parity::Even),
                    // Mark and space: the tty driver has no such setting.
                    _ => None,
                };
                if let Some(parity) = wanted {
                    self.change(
                        LineSettings {
                            parity,
                            ..self.line
                        },
                        "parity",
                    );
                }
                let current = match self.line.parity {
                    Parity::None => parity::NONE,
                    Parity::Odd => parity::ODD,
                    Parity::Even => parity::EVEN,
                };
                answer(com_port::SET_PARITY, &[current], reply);
            }
            Request::SetStopSize(size) => {
                // 3 is 1.5 stop bits, which the tty driver lacks.
                if size == 1 || size == 2 {
                    self.change(
                        LineSettings {
                            stop_bits: size,
                            ..self.line
                        },
                        "stop size",
                    );
                }
                answer(com_port::SET_STOPSIZE, &[self.line.stop_bits], reply);
            }
            Request::SetControl(value) => {
                let state = self.set_control(value);
                answer(com_port::SET_CONTROL, &[state], reply);
            }
            Request::PollLineState => {
                // No line errors are tracked: report none.
                answer(com_port::NOTIFY_LINESTATE, &[0], reply);
            }
            Request::PollModemState => self.report_modem_state(true, reply),
            // Handled by the session, which owns the data flow.
            Request::FlowControlSuspend | Request::FlowControlResume => {}
            Request::SetLineStateMask(mask) => {
                answer(com_port::SET_LINESTATE_MASK, &[mask], reply);
            }
            Request::SetModemStateMask(mask) => {
                self.modem_mask = mask;
                answer(com_port::SET_MODEMSTATE_MASK, &[mask], reply);
            }
            Request::PurgeData(which) => {
                let (input, output) = match which {
                    purge::RECEIVE => (true, false),
                    purge::TRANSMIT => (false, true),
                    purge::BOTH => (true, true),
                    _ => {
                        self.metrics.protocol_errors.inc();
                        return;
                    }
                };
                match self.control.purge(input, output) {
                    Ok(()) => {
                        self.metrics.line_changes.inc();
                    }
                    Err(e) => warn!(device = %self.name, "purge failed: {e}"),
                }
                answer(com_port::PURGE_DATA, &[which], reply);
            }
        }
    }

    /// Applies a SET-CONTROL value; returns the state to answer with, which
    /// is the one in effect (a refused change answers the old state).
    fn set_control(&mut self, value: u8) -> u8 {
        match value {
            control::FLOW_NONE | control::FLOW_XON_XOFF | control::FLOW_HARDWARE => {
                let flow_control = match value {
                    control::FLOW_NONE => FlowControl::None,
                    control::FLOW_XON_XOFF => FlowControl::XonXoff,
                    _ => FlowControl::RtsCts,
                };
                self.change(
                    LineSettings {
                        flow_control,
                        ..self.line
                    },
                    "flow control",
                );
                self.flow_code(false)
            }
            control::BREAK_ON | control::BREAK_OFF => {
                let on = value == control::BREAK_ON;
                match self.control.set_break(on) {
                    Ok(()) => {
                        self.break_on = on;
                        self.metrics.line_changes.inc();
                    }
                    Err(e) => warn!(device = %self.name, "cannot set break: {e}"),
                }
                self.break_code()
            }
            control::REQUEST_BREAK => self.break_code(),
            control::DTR_ON | control::DTR_OFF => {
                self.set_pin(Pin::Dtr, value == control::DTR_ON);
                self.pin_code(Pin::Dtr)
            }
            control::REQUEST_DTR => self.pin_code(Pin::Dtr),
            control::RTS_ON | control::RTS_OFF => {
                self.set_pin(Pin::Rts, value == control::RTS_ON);
                self.pin_code(Pin::Rts)
            }
            control::REQUEST_RTS => self.pin_code(Pin::Rts),
            // The tty has one flow setting for both ways: report it, change
            // nothing.
            control::REQUEST_INBOUND_FLOW
            | control::INBOUND_FLOW_NONE
            | control::INBOUND_FLOW_XON_XOFF
            | control::INBOUND_FLOW_HARDWARE => self.flow_code(true),
            control::FLOW_DCD..=control::FLOW_DSR => self.flow_code(false),
            // REQUEST_FLOW, and codes RFC 2217 does not define.
            _ => {
                if value != control::REQUEST_FLOW {
                    self.metrics.protocol_errors.inc();
                }
                self.flow_code(false)
            }
        }
    }

    fn break_code(&self) -> u8 {
        if self.break_on {
            control::BREAK_ON
        } else {
            control::BREAK_OFF
        }
    }

    fn flow_code(&self, inbound: bool) -> u8 {
        let code = match self.line.flow_control {
            FlowControl::None => control::FLOW_NONE,
            FlowControl::XonXoff => control::FLOW_XON_XOFF,
            FlowControl::RtsCts => control::FLOW_HARDWARE,
        };
        if inbound {
            code + (control::INBOUND_FLOW_NONE - control::FLOW_NONE)
        } else {
            code
        }
    }

    fn set_pin(&mut self, pin: Pin, level: bool) {
        match self.control.set_pin(pin, level) {
            Ok(()) => {
                match pin {
                    Pin::Dtr => self.dtr = Some(level),
                    Pin::Rts => self.rts = Some(level),
                }
                self.metrics.line_changes.inc();
            }
            Err(PinError::NoModemLines) => {
                debug!(device = %self.name, "{pin:?} not set: the device has no modem-control lines");
            }
            Err(PinError::Failed(e)) => warn!(device = %self.name, "cannot set {pin:?}: {e}"),
        }
    }

    /// The state of a pin as RFC 2217 codes it. Linux raises DTR and RTS
    /// when a tty is opened, so a level nobody set is on.
    fn pin_code(&self, pin: Pin) -> u8 {
        let (level, on, off) = match pin {
            Pin::Dtr => (self.dtr, control::DTR_ON, control::DTR_OFF),
            Pin::Rts => (self.rts, control::RTS_ON, control::RTS_OFF),
        };
        if level.unwrap_or(true) { on } else { off }
    }

    /// Applies new settings; on failure the old ones stay, and the answer
    /// says so.
    fn change(&mut self, wanted: LineSettings, what: &str) {
        if wanted == self.line {
            return;
        }
        match self.control.apply(&wanted) {
            Ok(now) => {
                if now != wanted {
                    // A pty, for one, keeps 8 data bits and no parity.
                    warn!(device = %self.name, "the tty did not take the {what} asked for");
                }
                if now != self.line {
                    self.metrics.line_changes.inc();
                    info!(
                        device = %self.name,
                        "{what} set by the client: {} baud, {} data bits, {:?} parity, {} stop bits, {:?} flow control",
                        now.baud, now.data_bits, now.parity, now.stop_bits, now.flow_control
                    );
                }
                self.line = now;
            }
            Err(e) => {
                warn!(device = %self.name, "cannot set the {what}: {e}");
                // Put back what was in effect, in case the change was partial.
                if let Ok(now) = self.control.apply(&self.line) {
                    self.line = now;
                }
            }
        }
    }

    /// Sends NOTIFY-MODEMSTATE when an input the client watches changed, or
    /// always when `force`.
    fn report_modem_state(&mut self, force: bool, reply: &mut Vec<u8>) {
        let Some(state) = self.control.modem_state() else {
            self.has_modem_lines = false;
            return;
        };
        let deltas = (state ^ self.last_modem.unwrap_or(0)) >> 4;
        let report = (state | deltas) & self.modem_mask;
        if force || (self.last_modem != Some(state) && report & 0x0f != 0) {
            answer(com_port::NOTIFY_MODEMSTATE, &[report], reply);
        }
        self.last_modem = Some(state);
    }
}

/// Appends the server's answer to command `code`.
fn answer(code: u8, value: &[u8], reply: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(1 + value.len());
    payload.push(code + com_port::SERVER_OFFSET);
    payload.extend_from_slice(value);
    telnet::subnegotiate(telnet::COM_PORT_OPTION, &payload, reply);
}

/// Which Telnet options are on, each way (RFC 1143's states, less the
/// queue: this server never changes its mind).
#[derive(Debug, Default)]
struct Options {
    ours: [Side; 3],
    theirs: [Side; 3],
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Side {
    #[default]
    Off,
    Asked,
    On,
}

/// The options this server agrees to, either way.
const AGREED: [u8; 3] = [
    telnet::BINARY,
    telnet::SUPPRESS_GO_AHEAD,
    telnet::COM_PORT_OPTION,
];

impl Options {
    /// The opening: binary both ways, no go-aheads, and the com port.
    fn offer(&mut self, out: &mut Vec<u8>) {
        for (verb, option) in [
            (Verb::Will, telnet::BINARY),
            (Verb::Do, telnet::BINARY),
            (Verb::Will, telnet::SUPPRESS_GO_AHEAD),
            (Verb::Do, telnet::COM_PORT_OPTION),
        ] {
            let i = index(option).unwrap_or_default();
            match verb {
                Verb::Will => self.ours[i] = Side::Asked,
                _ => self.theirs[i] = Side::Asked,
            }
            telnet::negotiate(verb, option, out);
        }
    }

    /// Answers the client's DO/DONT/WILL/WONT; true when it turned an option
    /// on.
    fn answer(&mut self, verb: Verb, option: u8, out: &mut Vec<u8>) -> bool {
        let Some(i) = index(option) else {
            // Refuse what this server does not do; ignore refusals of it.
            match verb {
                Verb::Do => telnet::negotiate(Verb::Wont, option, out),
                Verb::Will => telnet::negotiate(Verb::Dont, option, out),
                Verb::Dont | Verb::Wont => {}
            }
            return false;
        };
        let (side, yes, no) = match verb {
            Verb::Do | Verb::Dont => (&mut self.ours[i], Verb::Will, Verb::Wont),
            Verb::Will | Verb::Wont => (&mut self.theirs[i], Verb::Do, Verb::Dont),
        };
        let wants = matches!(verb, Verb::Do | Verb::Will);
        let before = *side;
        match (wants, before) {
            (true, Side::Off) => telnet::negotiate(yes, option, out),
            (false, Side::On) => telnet::negotiate(no, option, out),
            // An answer to our own offer, or a repeat: no reply, so no loop.
            _ => {}
        }
        *side = if wants { Side::On } else { Side::Off };
        wants && before != Side::On
    }

    /// True once either side agreed to RFC 2217.
    fn com_port(&self) -> bool {
        let i = index(telnet::COM_PORT_OPTION).unwrap_or_default();
        self.ours[i] == Side::On || self.theirs[i] == Side::On
    }
}

fn index(option: u8) -> Option<usize> {
    AGREED.iter().position(|&o| o == option)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_answers_once_and_never_loops() {
        let mut options = Options::default();
        let mut out = Vec::new();
        options.offer(&mut out);
        out.clear();
        // pyserial's opening: WILL COM-PORT, DO ECHO, WILL SGA, DO SGA.
        assert!(options.answer(Verb::Will, telnet::COM_PORT_OPTION, &mut out));
        assert_eq!(out, [] as [u8; 0], "an answer to our DO needs no reply");
        options.answer(Verb::Do, telnet::ECHO, &mut out);
        assert_eq!(out, [telnet::IAC, telnet::WONT, telnet::ECHO]);
        out.clear();
        options.answer(Verb::Will, telnet::SUPPRESS_GO_AHEAD, &mut out);
        assert_eq!(out, [telnet::IAC, telnet::DO, telnet::SUPPRESS_GO_AHEAD]);
        out.clear();
        options.answer(Verb::Do, telnet::SUPPRESS_GO_AHEAD, &mut out);
        assert_eq!(out, [] as [u8; 0]);
        // Repeats get nothing; a refusal of an unknown option gets nothing.
        options.answer(Verb::Will, telnet::SUPPRESS_GO_AHEAD, &mut out);
        options.answer(Verb::Wont, 99, &mut out);
        assert_eq!(out, [] as [u8; 0]);
        assert!(options.com_port());
        options.answer(Verb::Wont, telnet::COM_PORT_OPTION, &mut out);
        assert_eq!(out, [telnet::IAC, telnet::DONT, telnet::COM_PORT_OPTION]);
        assert!(!options.com_port());
    }
}
