//! Readiness composed from named checks: the component is ready when every
//! registered check is, and never while draining.
//!
//! Each part of a component registers the checks it owns ("listener",
//! "store", "device:zigbee") and flips them as its state changes; `/readyz`
//! and the `readiness_check` metric report them by name.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    checks: Mutex<BTreeMap<String, CheckState>>,
    draining: AtomicBool,
    gauge: Family<CheckLabels, Gauge>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CheckLabels {
    check: String,
}

/// The state of one named check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckState {
    pub ready: bool,
    /// Why it is not ready, for the `/readyz` body and logs.
    pub reason: Option<String>,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessReport {
    pub ready: bool,
    pub draining: bool,
    pub checks: BTreeMap<String, CheckState>,
}

/// A handle to one check; cloning it shares the check.
#[derive(Debug, Clone)]
pub struct ReadinessCheck {
    name: String,
    readiness: Readiness,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a check that starts not ready: nothing is ready until it says so.
    /// Registering a name again returns a handle to the same check.
    pub fn register(&self, name: impl Into<String>) -> ReadinessCheck {
        let name = name.into();
        let mut checks = self.lock();
        if !checks.contains_key(&name) {
            checks.insert(
                name.clone(),
                CheckState {
                    ready: false,
                    reason: Some("starting".to_owned()),
                },
            );
            self.inner.gauge.get_or_create(&labels(&name)).set(0);
        }
        ReadinessCheck {
            name,
            readiness: self.clone(),
        }
    }

    /// Removes a check (and its gauge series).
    pub fn unregister(&self, name: &str) {
        self.lock().remove(name);
        self.inner.gauge.remove(&labels(name));
    }

    /// Marks the component as shutting down: not ready from now on, so the
    /// Service stops sending new traffic while in-flight work drains.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn report(&self) -> ReadinessReport {
        let checks = self.lock().clone();
        let draining = self.inner.draining.load(Ordering::SeqCst);
        ReadinessReport {
            ready: !draining && checks.values().all(|c| c.ready),
            draining,
            checks,
        }
    }

    pub(crate) fn gauge(&self) -> Family<CheckLabels, Gauge> {
        self.inner.gauge.clone()
    }

    fn set(&self, name: &str, state: CheckState) {
        self.inner
            .gauge
            .get_or_create(&labels(name))
            .set(i64::from(state.ready));
        self.lock().insert(name.to_owned(), state);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, CheckState>> {
        // A panic elsewhere must not take readiness down with it.
        self.inner.checks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ReadinessCheck {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn set_ready(&self) {
        self.readiness.set(
            &self.name,
            CheckState {
                ready: true,
                reason: None,
            },
        );
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.readiness.set(
            &self.name,
            CheckState {
                ready: false,
                reason: Some(reason.into()),
            },
        );
    }

    /// Sets the state from a result, keeping the error text as the reason.
    pub fn set_from<E: std::fmt::Display>(&self, result: &Result<(), E>) {
        match result {
            Ok(()) => self.set_ready(),
            Err(e) => self.set_not_ready(e.to_string()),
        }
    }
}

fn labels(name: &str) -> CheckLabels {
    CheckLabels {
        check: name.to_owned(),
    }
}

impl ReadinessReport {
    /// Plain-text body for `/readyz`: one line per check, readable with curl.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(if self.ready { "ready\n" } else { "not ready\n" });
        if self.draining {
            out.push_str("draining: shutting down\n");
        }
        for (name, state) in &self.checks {
            match (&state.ready, &state.reason) {
                (true, _) => out.push_str(&format!("ok {name}\n")),
                (false, Some(reason)) => out.push_str(&format!("FAIL {name}: {reason}\n")),
                (false, None) => out.push_str(&format!("FAIL {name}\n")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_is() {
        let readiness = Readiness::new();
        assert!(readiness.report().ready, "no checks: nothing to wait for");
        let store = readiness.register("store");
        let listener = readiness.register("listener");
        assert!(!readiness.report().ready);
        store.set_ready();
        assert!(!readiness.report().ready);
        listener.set_ready();
        assert!(readiness.report().ready);
        store.set_not_ready("disk full");
        let report = readiness.report();
        assert!(!report.ready);
        assert!(report.to_text().contains("FAIL store: disk full"));
    }

    #[test]
    fn unregistered_checks_no_longer_count() {
        let readiness = Readiness::new();
        let startup = readiness.register("startup");
        assert!(!readiness.report().ready);
        readiness.unregister(startup.name());
        assert!(readiness.report().ready);
        assert!(!readiness.report().to_text().contains("startup"));
    }

    #[test]
    fn draining_overrides_checks() {
        let readiness = Readiness::new();
        readiness.register("listener").set_ready();
        readiness.set_draining();
        let report = readiness.report();
        assert!(!report.ready);
        assert!(report.to_text().contains("draining"));
    }
}
