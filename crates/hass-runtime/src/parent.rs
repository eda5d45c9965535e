//! Ending with the supervisor that started us. hass-suite runs the sidecars
//! as children in process groups of their own (so a terminal's Ctrl-C
//! reaches only the suite); if the suite is killed outright, nothing would
//! stop them and they would keep holding the ports. A supervisor that sets
//! [`PARENT_PID_ENV`] gets them a SIGTERM from the kernel when it dies.

use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::getppid;

use crate::Fatal;

/// The supervisor's pid, set in the child's environment by the supervisor.
pub const PARENT_PID_ENV: &str = "HASS_PARENT_PID";

/// Asks for SIGTERM when the supervisor named in [`PARENT_PID_ENV`] dies;
/// nothing when the variable is unset. The kernel's parent-death signal
/// follows the thread that forked us, so the supervisor must spawn from a
/// thread that lives as long as it does (a tokio worker does).
pub(crate) fn follow() -> Result<(), Fatal> {
    let Some(value) = std::env::var_os(PARENT_PID_ENV) else {
        return Ok(());
    };
    let pid: i32 = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Fatal::config(format!("{PARENT_PID_ENV}={value:?} is not a pid")))?;
    prctl::set_pdeathsig(Signal::SIGTERM)
        .map_err(|e| Fatal::runtime(format!("cannot ask for a parent-death signal: {e}")))?;
    // Died between our fork and the prctl: no signal will ever come.
    if getppid().as_raw() != pid {
        return Err(Fatal::runtime(format!(
            "the supervisor (pid {pid}) is gone; not starting"
        )));
    }
    Ok(())
}
