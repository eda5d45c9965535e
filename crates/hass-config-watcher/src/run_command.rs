//! `hass-config-watcher run`: the watcher driven by the shared runtime's
//! lifecycle (flags with env fallbacks, YAML config, `--check-config`, admin
//! server, SIGTERM drain, exit codes), with the words after `run` as its
//! command line.

use std::ffi::OsString;
use std::process::ExitCode;

use hass_runtime::Component;

use crate::watcher::ConfigWatcher;

/// Runs the watcher with `args` (what followed `run` on the command line).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let argv0 = OsString::from(ConfigWatcher::INFO.binary());
    hass_runtime::process::run_from::<ConfigWatcher, _, _>(std::iter::once(argv0).chain(args))
}
