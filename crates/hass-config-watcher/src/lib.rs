//! Validates a Home Assistant config folder exactly the way Home Assistant's YAML
//! loader reads it (`!include*`, `!secret`, `!env_var`, packages), reporting every
//! problem with its file, line and column, and yields the resolved config so a
//! watcher can tell which top-level domains changed.

mod config;
mod diagnostic;
mod loader;
mod packages;
mod scalar;
mod secrets;
mod value;
mod yaml;

pub use config::{CONFIG_FILE, Checked, load};
pub use diagnostic::{Diagnostic, Severity};
pub use value::{Mapping, Node, Origin, Secret, SecretSource, Value};
