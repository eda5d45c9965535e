//! Reads a Home Assistant config folder exactly the way Home Assistant's YAML
//! loader does (`!include*`, `!secret`, `!env_var`, packages), reports every
//! problem with its file, line and column, and yields the resolved config so a
//! watcher can tell which top-level domains changed.
//!
//! Synchronous and self-contained: files in, [`Checked`] out. Nothing here
//! talks to Home Assistant, watches files or writes anything.

mod changes;
mod diagnostic;
mod folder;
mod loader;
mod packages;
mod parse_ahead;
mod scalar;
mod secrets;
mod value;
mod yaml;

pub use changes::{CORE, changed_domains, graph_fingerprint};
pub use diagnostic::{Diagnostic, Severity};
pub use folder::{CONFIG_FILE, Checked, load};
pub use value::{Mapping, Node, Origin, Secret, SecretSource, Value};
