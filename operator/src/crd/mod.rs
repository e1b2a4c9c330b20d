//! Custom resource types of the `arrow.trinity.io/v1alpha1` API and their CRD rendering.
//!
//! The checked-in `crds/*.yaml` are produced by [`render_all`]; a test fails when they drift.

pub mod dataset;
pub mod pool;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use dataset::{
    ArrowDataset, ArrowDatasetSpec, ArrowDatasetStatus, ConsumersStatus, DatasetPhase,
    SourceFormat, SourceSpec, Tier,
};
pub use pool::{
    AuthSpec, ContractField, ContractSpec, FlightPool, FlightPoolSpec, FlightPoolStatus, PoolCache,
    StorageCredentials, StorageSpec, TlsSpec,
};

/// API group of every resource this operator owns.
pub const GROUP: &str = "arrow.trinity.io";

/// Schema pattern for TTL strings: one or more `<number><unit>` terms (`s`, `m`, `h`, `d`,
/// `w`), at least one of them non-zero, so `0s`, `-5m` and `soon` are refused by the API
/// server itself. The controller re-checks with the node's parser (which also bounds the
/// length) before doing any arithmetic.
pub const TTL_PATTERN: &str = "^([0-9]+[smhdw])*[0-9]*[1-9][0-9]*[smhdw]([0-9]+[smhdw])*$";

/// Error rendering the CRDs.
#[derive(Debug, thiserror::Error)]
#[error("failed to render CRD {name} as YAML: {source}")]
pub struct RenderError {
    name: String,
    #[source]
    source: serde_yaml::Error,
}

/// Every CRD of the operator, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![ArrowDataset::crd(), FlightPool::crd()]
}

/// `(file name, YAML)` for each CRD, exactly as checked in under `crds/`.
pub fn render_all() -> Result<Vec<(String, String)>, RenderError> {
    all()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = serde_yaml::to_string(&crd).map_err(|source| RenderError {
                name: name.clone(),
                source,
            })?;
            Ok((format!("{name}.yaml"), yaml))
        })
        .collect()
}

/// The condition types of both resources' `status.conditions`, as users and tools match
/// on them.
pub mod condition {
    /// The spec is valid (both resources).
    pub const VALID: &str = "Valid";
    /// FlightPool: its nodes serve; ArrowDataset: its newest version is readable.
    pub const READY: &str = "Ready";
    /// FlightPool: the pool's object storage answers with the pool's settings.
    pub const STORAGE_READY: &str = "StorageReady";
    /// ArrowDataset: the declared source was ingested as a version.
    pub const LOADED: &str = "Loaded";
    /// ArrowDataset: the pool holds the newest version in memory.
    pub const PRELOADED: &str = "Preloaded";
    /// ArrowDataset: deleting its data from storage failed; the finalizer waits.
    pub const CLEANUP_BLOCKED: &str = "CleanupBlocked";
}
