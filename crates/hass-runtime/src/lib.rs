//! What every hass-sidecars binary shares, so each one behaves the same to an
//! operator: the admin HTTP server (`/healthz`, `/readyz`, `/metrics`), shutdown
//! on SIGTERM with a drain deadline, logging, config loading with precise
//! errors, and secrets that never print.
//!
//! A binary implements [`Component`] and calls [`run`] from `main`; the pieces
//! are public on their own for binaries with subcommands.

pub mod admin;
pub mod admission;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod component;
pub mod config;
pub mod exit;
pub mod file_watch;
pub mod http_client;
pub mod http_server;
pub mod ip_network;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod parent;
pub mod ports;
pub mod positions;
pub mod process;
pub mod readiness;
pub mod secret;
pub mod shutdown;

pub use component::{Component, ComponentInfo, Context, Scheduling};
pub use exit::Fatal;
pub use process::run;
