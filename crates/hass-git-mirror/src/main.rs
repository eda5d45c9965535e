//! `hass-git-mirror`: the Git mirror; the logic lives in the library ([`hass_git_mirror::GitMirror`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    hass_git_mirror::install_crypto();
    hass_runtime::run::<hass_git_mirror::GitMirror>()
}
