//! Prometheus metrics of the operator: reconciles, errors, durations, datasets by phase,
//! garbage-collection deletions and discoveries.

use std::time::Instant;

use kube::runtime::reflector::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::crd::{ArrowDataset, DatasetPhase};

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `pool` or `dataset`.
    pub controller: &'static str,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `pool` or `dataset`.
    pub controller: &'static str,
    /// Kind of error (see `Error::metric_label`).
    pub error: &'static str,
}

/// Labels of the datasets-by-phase gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Dataset phase.
    pub phase: &'static str,
}

/// Labels of garbage-collection deletions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GcLabels {
    /// `version` (an expired older version) or `dataset` (all objects of a deleted resource).
    pub what: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Every metric, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    datasets: Family<PhaseLabels, Gauge>,
    gc_deletions: Family<GcLabels, Counter>,
    discovered: Counter,
    pending_consumers: Gauge,
    expiring_soon: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Observes a reconcile's duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .durations
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Registers every metric under the `flight_operator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flight_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations =
            Family::<ControllerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let datasets = Family::<PhaseLabels, Gauge>::default();
        let gc_deletions = Family::<GcLabels, Counter>::default();
        let discovered = Counter::default();
        let expiring_soon = Gauge::default();
        registry.register(
            "datasets_expiring_soon",
            "ArrowDatasets whose newest version expires within the hour",
            expiring_soon.clone(),
        );
        let pending_consumers = Gauge::default();
        registry.register(
            "pending_consumers",
            "Releases still expected for the newest versions of ArrowDatasets with consumers",
            pending_consumers.clone(),
        );
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that failed", errors.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            durations.clone(),
        );
        registry.register("datasets", "ArrowDatasets by phase", datasets.clone());
        registry.register(
            "gc_deletions",
            "Expired versions and deleted datasets removed from storage",
            gc_deletions.clone(),
        );
        registry.register(
            "datasets_discovered",
            "ArrowDatasets created for uploads found in storage",
            discovered.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            durations,
            datasets,
            gc_deletions,
            discovered,
            pending_consumers,
            expiring_soon,
        }
    }

    /// Counts a reconcile and returns a timer that records its duration when dropped.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn error(&self, controller: &'static str, error: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { controller, error })
            .inc();
    }

    /// Counts storage deletions.
    pub fn gc_deleted(&self, what: &'static str, n: u64) {
        self.gc_deletions
            .get_or_create(&GcLabels { what })
            .inc_by(n);
    }

    /// Counts one discovered dataset.
    pub fn discovered(&self) {
        self.discovered.inc();
    }

    /// Recomputes the datasets-by-phase gauge from the cache.
    pub fn update_phases(&self, datasets: &Store<ArrowDataset>) {
        let state = datasets.state();
        for phase in DatasetPhase::ALL {
            let n = state
                .iter()
                .filter(|d| d.status.as_ref().map(|s| s.phase).unwrap_or_default() == phase)
                .count();
            self.datasets
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let pending: i64 = state
            .iter()
            .filter_map(|d| d.status.as_ref()?.consumers.as_ref())
            .map(|c| (c.count - c.releases).max(0))
            .sum();
        self.pending_consumers.set(pending);
        let soon = chrono::Utc::now() + chrono::Duration::hours(1);
        let expiring = state
            .iter()
            .filter_map(|d| d.status.as_ref()?.expires_at.as_deref().map(str::to_owned))
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .filter(|t| *t <= soon)
            .count();
        self.expiring_soon
            .set(i64::try_from(expiring).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_exposition() {
        let m = Metrics::new();
        drop(m.reconcile("pool"));
        m.error("dataset", "storage");
        m.gc_deleted("version", 2);
        m.discovered();
        let text = m.encode().expect("encodes");
        assert!(
            text.contains("flight_operator_reconciles_total{controller=\"pool\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "flight_operator_reconcile_errors_total{controller=\"dataset\",error=\"storage\"} 1"
        ));
        assert!(text.contains("flight_operator_gc_deletions_total{what=\"version\"} 2"));
        assert!(text.contains("flight_operator_datasets_discovered_total 1"));
        assert!(text
            .contains("flight_operator_reconcile_duration_seconds_count{controller=\"pool\"} 1"));
    }
}
