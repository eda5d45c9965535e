//! Opening a serial device with the configured line settings and pin levels.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use crate::config::{FlowControl, Parity, PinStep, SerialSettings};
use crate::line_control::{LineControl, TtyControl};
use crate::serial_stream::SerialStream;

/// Why a device could not be opened; the text goes to logs and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: not present")]
    Absent { path: String },
    #[error("{path}: {kind}, not a serial device")]
    NotATty { path: String, kind: &'static str },
    #[error("{path}: cannot open: {reason}")]
    Failed { path: String, reason: String },
}

/// What a path is, when it is not a character device (a tty).
pub fn not_a_tty_kind(path: &Path) -> Option<&'static str> {
    let meta = std::fs::metadata(path).ok()?;
    let kind = meta.file_type();
    if kind.is_char_device() {
        char_device_not_a_tty(meta.rdev())
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_file() {
        Some("a regular file")
    } else if kind.is_fifo() {
        Some("a fifo")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("a block device")
    }
}

/// A character device sysfs files under another class than `tty` (such as
/// `/dev/null` under `mem`). Asked of sysfs, not by opening the device:
/// opening and closing a real stick toggles DTR, which resets some of them.
/// Devices sysfs does not list (ptys among them) pass.
fn char_device_not_a_tty(rdev: u64) -> Option<&'static str> {
    // glibc's gnu_dev_major and gnu_dev_minor.
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    let class = std::fs::read_link(format!("/sys/dev/char/{major}:{minor}/subsystem")).ok()?;
    (class.file_name()? != "tty").then_some("a character device that is not a tty")
}

/// An open device, and whether the configured pin levels reached it.
#[derive(Debug)]
pub struct OpenedPort {
    pub stream: SerialStream,
    /// Line settings and modem lines, for RFC 2217 clients.
    pub control: TtyControl,
    pub pins: PinOutcome,
}

/// Opens `path` exclusively (TIOCEXCL + flock), applies the line settings,
/// then the DTR/RTS levels and pin sequence.
pub async fn open(path: &Path, settings: &SerialSettings) -> Result<OpenedPort, OpenError> {
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(OpenError::Absent { path: shown });
    }
    if let Some(kind) = not_a_tty_kind(path) {
        return Err(OpenError::NotATty { path: shown, kind });
    }
    let failed = |reason: String| OpenError::Failed {
        path: shown.clone(),
        reason,
    };
    let builder = mio_serial::new(path.to_string_lossy(), settings.baud)
        .data_bits(data_bits(settings.data_bits))
        .parity(parity(settings.parity))
        .stop_bits(stop_bits(settings.stop_bits))
        .flow_control(flow_control(settings.flow_control));
    let (stream, mut control) = SerialStream::open(builder).map_err(failed)?;
    let pins = apply_pins(&mut control, settings).await.map_err(failed)?;
    Ok(OpenedPort {
        stream,
        control,
        pins,
    })
}

/// A modem-control output line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    Dtr,
    Rts,
}

impl Pin {
    fn name(self) -> &'static str {
        match self {
            Self::Dtr => "DTR",
            Self::Rts => "RTS",
        }
    }
}

/// Why a pin could not be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinError {
    /// The device has no modem-control lines: a pty or a network-backed tty.
    NoModemLines,
    /// The device has the lines, but setting one failed.
    Failed(String),
}

/// The lines a pin sequence drives, and the clock it waits on.
pub trait ModemLines {
    fn set(&mut self, pin: Pin, level: bool) -> Result<(), PinError>;
    fn wait(&mut self, time: Duration) -> impl Future<Output = ()> + Send;
}

/// How the configured DTR/RTS levels and pin sequence went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    /// Every configured level was set and every wait waited (or none were
    /// configured).
    Applied,
    /// The device has no modem-control lines, so the levels were not set:
    /// serving it anyway beats refusing a pty or network tty forever.
    NoModemLines,
}

/// Sets `dtr` and `rts`, then runs `pin_sequence` in order; within a step
/// DTR is set before RTS, then the step's wait runs.
pub async fn apply_pins(
    lines: &mut impl ModemLines,
    settings: &SerialSettings,
) -> Result<PinOutcome, String> {
    let first = PinStep {
        dtr: settings.dtr,
        rts: settings.rts,
        wait: Duration::ZERO,
    };
    for (i, step) in std::iter::once(&first)
        .chain(&settings.pin_sequence)
        .enumerate()
    {
        let levels = [(Pin::Dtr, step.dtr), (Pin::Rts, step.rts)];
        for (pin, level) in levels {
            let Some(level) = level else { continue };
            match lines.set(pin, level) {
                Ok(()) => {}
                Err(PinError::NoModemLines) => return Ok(PinOutcome::NoModemLines),
                // Strict on purpose: a stick left in its bootloader looks
                // alive but never answers, which is worse than "not ready".
                Err(PinError::Failed(reason)) => {
                    // The config key that asked for this level.
                    let key = match i {
                        0 => pin.name().to_ascii_lowercase(),
                        n => format!("pin_sequence[{}]", n - 1),
                    };
                    return Err(format!(
                        "cannot set {} {} ({key}): {reason}",
                        pin.name(),
                        on_off(level)
                    ));
                }
            }
        }
        if !step.wait.is_zero() {
            lines.wait(step.wait).await;
        }
    }
    Ok(PinOutcome::Applied)
}

/// The real lines of an open port.
impl ModemLines for TtyControl {
    fn set(&mut self, pin: Pin, level: bool) -> Result<(), PinError> {
        self.set_pin(pin, level)
    }

    fn wait(&mut self, time: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(time)
    }
}

pub(crate) fn data_bits(bits: u8) -> mio_serial::DataBits {
    match bits {
        5 => mio_serial::DataBits::Five,
        6 => mio_serial::DataBits::Six,
        7 => mio_serial::DataBits::Seven,
        // Validation allows only 5..=8.
        _ => mio_serial::DataBits::Eight,
    }
}

pub(crate) fn parity(parity: Parity) -> mio_serial::Parity {
    match parity {
        Parity::None => mio_serial::Parity::None,
        Parity::Odd => mio_serial::Parity::Odd,
        Parity::Even => mio_serial::Parity::Even,
    }
}

pub(crate) fn stop_bits(bits: u8) -> mio_serial::StopBits {
    if bits == 2 {
        mio_serial::StopBits::Two
    } else {
        mio_serial::StopBits::One
    }
}

pub(crate) fn flow_control(flow: FlowControl) -> mio_serial::FlowControl {
    match flow {
        FlowControl::None => mio_serial::FlowControl::None,
        FlowControl::RtsCts => mio_serial::FlowControl::Hardware,
        FlowControl::XonXoff => mio_serial::FlowControl::Software,
    }
}

fn on_off(level: bool) -> &'static str {
    if level { "on" } else { "off" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Set(Pin, bool),
        Wait(Duration),
    }

    /// Records what the sequence does; fails the `fail_at`-th set (from 0).
    #[derive(Debug, Default)]
    struct RecordedLines {
        events: Vec<Event>,
        fail_at: Option<(usize, PinError)>,
    }

    impl ModemLines for RecordedLines {
        fn set(&mut self, pin: Pin, level: bool) -> Result<(), PinError> {
            let sets = self
                .events
                .iter()
                .filter(|e| matches!(e, Event::Set(..)))
                .count();
            if let Some((at, error)) = &self.fail_at
                && *at == sets
            {
                return Err(error.clone());
            }
            self.events.push(Event::Set(pin, level));
            Ok(())
        }

        fn wait(&mut self, time: Duration) -> impl Future<Output = ()> + Send {
            self.events.push(Event::Wait(time));
            std::future::ready(())
        }
    }

    fn settings(dtr: Option<bool>, rts: Option<bool>, steps: Vec<PinStep>) -> SerialSettings {
        SerialSettings {
            dtr,
            rts,
            pin_sequence: steps,
            ..SerialSettings::default()
        }
    }

    fn step(dtr: Option<bool>, rts: Option<bool>, wait_ms: u64) -> PinStep {
        PinStep {
            dtr,
            rts,
            wait: Duration::from_millis(wait_ms),
        }
    }

    fn run(lines: &mut RecordedLines, settings: &SerialSettings) -> Result<PinOutcome, String> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(apply_pins(lines, settings))
    }

    #[test]
    fn levels_then_steps_in_order_dtr_before_rts_then_the_wait() {
        let mut lines = RecordedLines::default();
        let settings = settings(
            Some(false),
            Some(true),
            vec![
                step(Some(true), Some(false), 100),
                step(None, Some(true), 0),
                step(None, None, 50),
                step(Some(false), None, 0),
            ],
        );
        assert_eq!(run(&mut lines, &settings), Ok(PinOutcome::Applied));
        use Event::{Set, Wait};
        assert_eq!(
            lines.events,
            vec![
                Set(Pin::Dtr, false),
                Set(Pin::Rts, true),
                Set(Pin::Dtr, true),
                Set(Pin::Rts, false),
                Wait(Duration::from_millis(100)),
                Set(Pin::Rts, true),
                Wait(Duration::from_millis(50)),
                Set(Pin::Dtr, false),
            ]
        );
    }

    #[test]
    fn nothing_configured_touches_no_line() {
        let mut lines = RecordedLines::default();
        assert_eq!(
            run(&mut lines, &SerialSettings::default()),
            Ok(PinOutcome::Applied)
        );
        assert_eq!(lines.events, vec![]);
    }

    #[test]
    fn a_device_without_modem_lines_skips_the_rest_and_its_waits() {
        let mut lines = RecordedLines {
            fail_at: Some((0, PinError::NoModemLines)),
            ..RecordedLines::default()
        };
        let settings = settings(Some(true), None, vec![step(None, Some(false), 500)]);
        assert_eq!(run(&mut lines, &settings), Ok(PinOutcome::NoModemLines));
        assert_eq!(lines.events, vec![], "no wait for lines that do not exist");
    }

    #[test]
    fn a_failing_level_names_its_key() {
        let mut lines = RecordedLines {
            fail_at: Some((1, PinError::Failed("Input/output error".to_owned()))),
            ..RecordedLines::default()
        };
        let settings = settings(Some(true), Some(false), vec![step(None, None, 20)]);
        assert_eq!(
            run(&mut lines, &settings),
            Err("cannot set RTS off (rts): Input/output error".to_owned())
        );
        assert_eq!(lines.events, vec![Event::Set(Pin::Dtr, true)]);
    }

    #[test]
    fn a_failing_pin_stops_the_sequence_naming_step_pin_and_level() {
        let mut lines = RecordedLines {
            fail_at: Some((2, PinError::Failed("Input/output error".to_owned()))),
            ..RecordedLines::default()
        };
        let settings = settings(
            Some(true),
            None,
            vec![step(None, Some(true), 20), step(Some(false), None, 30)],
        );
        assert_eq!(
            run(&mut lines, &settings),
            Err("cannot set DTR off (pin_sequence[1]): Input/output error".to_owned())
        );
        assert_eq!(
            lines.events,
            vec![
                Event::Set(Pin::Dtr, true),
                Event::Set(Pin::Rts, true),
                Event::Wait(Duration::from_millis(20)),
            ],
            "nothing after the failed pin runs"
        );
    }
}
