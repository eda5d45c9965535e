//! Opening a serial device with the configured line settings and pin levels.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use crate::config::{FlowControl, Parity, PinStep, SerialSettings};

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
        None
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

/// Opens `path` exclusively (TIOCEXCL + flock), applies the line settings,
/// then the DTR/RTS levels and pin sequence.
pub async fn open(path: &Path, settings: &SerialSettings) -> Result<SerialStream, OpenError> {
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
    let mut port = tokio_serial::new(path.to_string_lossy(), settings.baud)
        .data_bits(data_bits(settings.data_bits))
        .parity(match settings.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        })
        .stop_bits(if settings.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(match settings.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::RtsCts => tokio_serial::FlowControl::Hardware,
            FlowControl::XonXoff => tokio_serial::FlowControl::Software,
        })
        .open_native_async()
        .map_err(|e| failed(e.to_string()))?;
    let first = PinStep {
        dtr: settings.dtr,
        rts: settings.rts,
        wait: std::time::Duration::ZERO,
    };
    for step in std::iter::once(&first).chain(&settings.pin_sequence) {
        // Strict on purpose: a stick left in its bootloader looks alive but
        // never answers, which is worse than a clear "not ready".
        if let Some(level) = step.dtr {
            port.write_data_terminal_ready(level)
                .map_err(|e| failed(format!("cannot set DTR {}: {e}", on_off(level))))?;
        }
        if let Some(level) = step.rts {
            port.write_request_to_send(level)
                .map_err(|e| failed(format!("cannot set RTS {}: {e}", on_off(level))))?;
        }
        if !step.wait.is_zero() {
            tokio::time::sleep(step.wait).await;
        }
    }
    Ok(port)
}

fn data_bits(bits: u8) -> tokio_serial::DataBits {
    match bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        // Validation allows only 5..=8.
        _ => tokio_serial::DataBits::Eight,
    }
}

fn on_off(level: bool) -> &'static str {
    if level { "on" } else { "off" }
}
