//! Errors that end the process, and the exit codes docs/design.md assigns them.

use std::fmt;
use std::process::ExitCode;

/// A reason to stop the process, with the exit code it maps to:
/// 2 for bad configuration, 1 for anything else.
#[derive(Debug)]
pub struct Fatal {
    kind: FatalKind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatalKind {
    /// The operator's input is wrong: flags, env, config file, secret files.
    Config,
    /// The environment or the work failed: a port in use, a disk error.
    Runtime,
}

impl Fatal {
    pub fn config(message: impl fmt::Display) -> Self {
        Self {
            kind: FatalKind::Config,
            message: message.to_string(),
        }
    }

    pub fn runtime(message: impl fmt::Display) -> Self {
        Self {
            kind: FatalKind::Runtime,
            message: message.to_string(),
        }
    }

    pub fn kind(&self) -> FatalKind {
        self.kind
    }

    pub fn exit_code(&self) -> ExitCode {
        match self.kind {
            FatalKind::Config => ExitCode::from(2),
            FatalKind::Runtime => ExitCode::from(1),
        }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fatal {}
