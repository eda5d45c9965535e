//! The mirror's metrics, under `hass_git_mirror_`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// What one fetch came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FetchResult {
    /// The branch moved.
    Updated,
    Unchanged,
    Failed,
}

impl EncodeLabelValue for FetchResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
            Self::Failed => "failed",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct FetchLabels {
    pub(crate) result: FetchResult,
}

#[derive(Debug, Clone)]
pub(crate) struct MirrorMetrics {
    pub(crate) fetches: Family<FetchLabels, Counter>,
    pub(crate) last_success: Gauge<f64, AtomicU64>,
    pub(crate) duration: Histogram,
}

impl MirrorMetrics {
    pub(crate) fn register(metrics: &hass_runtime::metrics::Metrics) -> Self {
        let this = Self {
            fetches: Family::default(),
            last_success: Gauge::default(),
            // 10 ms to about 80 s.
            duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        };
        let m = this.clone();
        metrics.register(move |r| {
            r.register("fetches", "Fetches of the branch, by result", m.fetches);
            r.register(
                "last_success_timestamp_seconds",
                "Unix time of the last fetch that succeeded",
                m.last_success,
            );
            r.register("fetch_duration_seconds", "Time one fetch took", m.duration);
        });
        this
    }

    pub(crate) fn count(&self, result: FetchResult) {
        self.fetches.get_or_create(&FetchLabels { result }).inc();
    }
}
