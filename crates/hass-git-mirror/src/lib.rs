//! Keeps a local bare mirror of one branch of a remote Git repository, for
//! hass-config-watcher's Git source to read: fetch every `interval`, with a
//! token from a file, bounded in time and in bytes.
//!
//! It never checks anything out and never touches `/config`: what a
//! revision holds is the watcher's business (it validates before it
//! writes). The branch in the mirror follows the remote's, force-pushes
//! included; the watcher decides whether to follow those.

mod config;
mod fetch;
mod metrics;
mod mirror;

pub use config::{MirrorArgs, MirrorConfig};
pub use mirror::GitMirror;

/// rustls with ring as the process's crypto provider, before any TLS
/// connection: reqwest is built without one.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
