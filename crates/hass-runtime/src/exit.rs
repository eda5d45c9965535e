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

    /// A config error that starts with a key path (`devices[0].baud: …`,
    /// the convention of every component's checks) pointed at that key in
    /// `file` (or at its nearest written parent), as parse errors are:
    /// `file:line:col: devices[0].baud: …`. Other errors are left as they are.
    pub fn located_in(self, file: &std::path::Path) -> Self {
        // Some checks name the file already: `file: key: …`.
        let named = format!("{}: ", file.display());
        let rest = self.message.strip_prefix(&named).unwrap_or(&self.message);
        let Some((key, _)) = rest.split_once(": ") else {
            return self;
        };
        let is_key_path = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'[' | b']'));
        if self.kind != FatalKind::Config || !is_key_path {
            return self;
        }
        let Ok(text) = std::fs::read_to_string(file) else {
            return self;
        };
        let Some((line, column)) = crate::positions::KeyPositions::of(&text).find(key) else {
            return self;
        };
        Self {
            message: format!("{}:{line}:{column}: {rest}", file.display()),
            kind: self.kind,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_naming_a_key_point_at_it() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("bridge.yaml");
        std::fs::write(&file, "devices:\n  - name: a\n    baud: 0\n").expect("write");
        let shown = |e: Fatal| e.located_in(&file).to_string();
        let at = file.display();
        assert_eq!(
            shown(Fatal::config("devices[0].baud: must be more than 0")),
            format!("{at}:3:5: devices[0].baud: must be more than 0")
        );
        // Absent, left to its default: where its nearest parent is.
        assert_eq!(
            shown(Fatal::config("devices[0].listen: in use")),
            format!("{at}:2:5: devices[0].listen: in use")
        );
        assert_eq!(
            shown(Fatal::config(format!(
                "{at}: devices[0].baud: must be more than 0"
            ))),
            format!("{at}:3:5: devices[0].baud: must be more than 0")
        );
        for unchanged in [
            Fatal::config("no devices configured"),
            Fatal::config("tls: cannot read /x: gone"),
            Fatal::runtime("devices[0].baud: the stick went away"),
        ] {
            let before = unchanged.to_string();
            assert_eq!(shown(unchanged), before);
        }
    }
}
