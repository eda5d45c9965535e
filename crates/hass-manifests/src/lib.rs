//! `hass-manifests`: one values file in, every Kubernetes object for Home
//! Assistant and the hass-sidecars out.
//!
//! - [`values`]: the values file (serde + JSON Schema), parsed with
//!   hass-runtime's `parse_yaml` so errors carry file, line, column and key;
//!   checks after parsing point at the offending key too (`positions`).
//! - [`mod@render`]: values → typed `k8s-openapi` objects and [`crd`] custom
//!   resources → YAML documents, plus the `kustomization.yaml`.
//! - [`yaml`]: the YAML writer and the commented defaults file.
//! - [`output`]: writing a rendered tree to a folder.
//! - [`artifact`]: the tree as the OCI artifact Flux reads, and its push.
//! - [`images`]: image references, the kustomization's `images:` list and
//!   the lock file that pins the sidecars' images by digest.

pub mod artifact;
pub mod crd;
pub mod images;
pub mod meta;
pub mod output;
pub mod render;
pub mod values;
pub mod yaml;

pub use render::{Manifest, render};
pub use values::Values;

/// TLS for `render --push` through rustls with ring, as the other
/// binaries' (reqwest is built without a default provider).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The JSON Schema of the values file.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Values)).unwrap_or_default()
}

/// The block a user adds once to `configuration.yaml` so Home Assistant
/// loads the generated package (mounted under `/config/packages/`).
pub const PACKAGE_INCLUDE: &str = "homeassistant:\n  packages: !include_dir_named packages\n";

/// `hass-manifests defaults`: the default values with comments, headed by
/// the one addition to `configuration.yaml` the install needs.
pub fn defaults_file() -> Result<String, yaml::YamlError> {
    let defaults = serde_json::to_value(Values::default()).unwrap_or_default();
    let mut preamble = String::from(
        "# Home Assistant loads the package these manifests generate once\n\
         # configuration.yaml has (add it once, beside any `homeassistant:` keys\n\
         # you already have):\n",
    );
    for line in PACKAGE_INCLUDE.lines() {
        preamble.push_str(&format!("#   {line}\n"));
    }
    yaml::commented(&defaults, &schema(), &preamble)
}
