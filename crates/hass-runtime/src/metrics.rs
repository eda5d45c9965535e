//! The component's metric registry and its OpenMetrics text encoding.

use std::sync::{Arc, RwLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::ComponentInfo;

/// The content type Prometheus negotiates for OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A shared registry; every metric name gets the `hass_<component>_` prefix.
/// Components may register at any time, so late-starting parts need no
/// special wiring.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<RwLock<Registry>>,
}

impl Metrics {
    /// A registry with `hass_<component>_build_info{version}` already in it.
    pub fn new(info: &ComponentInfo) -> Self {
        let mut registry = Registry::with_prefix(info.metric_prefix());
        registry.register(
            "build",
            "Build of this binary; the value is always 1",
            Info::new(vec![
                ("version", info.version.to_owned()),
                ("component", info.name.to_owned()),
            ]),
        );
        Self {
            registry: Arc::new(RwLock::new(registry)),
        }
    }

    /// Registers metrics; the closure gets the registry with the component prefix.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
        f(&mut registry);
    }

    /// The OpenMetrics exposition, ending in `# EOF`.
    pub fn encode(&self) -> String {
        let registry = self.registry.read().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
