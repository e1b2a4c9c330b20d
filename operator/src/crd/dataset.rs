//! `ArrowDataset`: the lifecycle record of one dataset (all its immutable versions).
// Every `printcolumn(...)` repeats `type_ = ...`, which clippy takes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::TTL_PATTERN;

/// Desired state of a dataset: which pool serves it, how long it lives, and optionally a
/// source object the pool should load it from.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "arrow.trinity.io",
    version = "v1alpha1",
    kind = "ArrowDataset",
    plural = "arrowdatasets",
    shortname = "ads",
    category = "arrow",
    namespaced,
    status = "ArrowDatasetStatus",
    derive = "PartialEq",
    doc = "An immutable, versioned Arrow dataset served by a FlightPool and durable as Parquet.",
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Rows", type_ = "integer", json_path = ".status.rows"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.size"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".status.tier"),
    printcolumn(name = "Hot", type_ = "string", json_path = ".status.hot"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Version",
        type_ = "integer",
        json_path = ".status.version",
        priority = 1
    ),
    printcolumn(
        name = "Ticket",
        type_ = "string",
        json_path = ".status.ticket",
        priority = 1
    ),
    printcolumn(
        name = "Consumers",
        type_ = "string",
        json_path = ".status.consumers.summary",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ArrowDatasetSpec {
    /// Name of the FlightPool (in the same namespace) that serves and stores the dataset.
    #[schemars(length(min = 1, max = 63))]
    pub pool: String,
    /// Object to load the dataset from (declarative datasets); omitted for datasets that
    /// atoms upload with `DoPut`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
    /// Name of a contract of the pool the data must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// How long each version lives after it was created, e.g. `30m`, `6h`, `7d`; the pool's
    /// `defaultTtl` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TTL_PATTERN), length(max = 32))]
    pub ttl: Option<String>,
    /// Load the newest version into node memory as soon as it exists, rather than on first read.
    #[serde(default)]
    pub preload: bool,
    /// Named consumers of each version loaded from `source`: once each has released a
    /// version (the `release` action), it is deleted. Versions uploaded with `DoPut` name
    /// theirs in the `x-flight-consumers` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub consumers: Option<Vec<String>>,
    /// Or: how many consumers will release each version loaded from `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consumer_count: Option<u32>,
}

/// An object in the pool's storage to load as a new version.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Object URL in the pool's storage, e.g. `s3://bucket/raw/sales.csv`.
    #[schemars(length(min = 1))]
    pub url: String,
    /// File format; guessed from the URL's extension (`.csv`, `.parquet`) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<SourceFormat>,
    /// CSV field delimiter (one character).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1))]
    pub delimiter: Option<String>,
    /// Whether the first CSV line is a header row.
    #[serde(default = "default_true")]
    pub has_header: bool,
}

fn default_true() -> bool {
    true
}

/// File format of a source object.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SourceFormat {
    /// Comma-separated values with a header row.
    #[serde(rename = "csv")]
    Csv,
    /// Apache Parquet.
    #[serde(rename = "parquet")]
    Parquet,
}

impl SourceFormat {
    /// Name used on the wire to the node.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }
}

impl SourceSpec {
    /// A stable description of what a load of this source reads and how.
    pub fn fingerprint(&self, contract: Option<&str>) -> String {
        format!(
            "{} format={} delimiter={} header={} contract={}",
            self.url,
            self.effective_format().map_or("?", SourceFormat::as_str),
            self.delimiter.as_deref().unwrap_or(","),
            self.has_header,
            contract.unwrap_or("-"),
        )
    }

    /// The declared format, or the one the URL's extension names.
    pub fn effective_format(&self) -> Option<SourceFormat> {
        if self.format.is_some() {
            return self.format;
        }
        let path = self
            .url
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if path.ends_with(".csv") || path.ends_with(".csv.gz") {
            Some(SourceFormat::Csv)
        } else if path.ends_with(".parquet") || path.ends_with(".pq") {
            Some(SourceFormat::Parquet)
        } else {
            None
        }
    }
}

/// Lifecycle phase of a dataset.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DatasetPhase {
    /// Waiting for a first version (an upload or a load).
    #[default]
    Pending,
    /// The pool is loading the source.
    Loading,
    /// The newest version is readable.
    Ready,
    /// The spec is invalid or loading failed; see the conditions and message.
    Failed,
    /// The newest version expired; the resource is being deleted.
    Expired,
}

impl DatasetPhase {
    /// Every phase, for metrics.
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Loading,
        Self::Ready,
        Self::Failed,
        Self::Expired,
    ];

    /// The phase as written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Loading => "Loading",
            Self::Ready => "Ready",
            Self::Failed => "Failed",
            Self::Expired => "Expired",
        }
    }
}

/// Where the newest version is held.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Tier {
    /// Hot in a node's memory.
    Memory,
    /// Only in object storage; the first read loads it.
    Storage,
}

/// Observed state of a dataset.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArrowDatasetStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: DatasetPhase,
    /// Ticket of the newest version (`ads1:<namespace>/<name>@<version>`), for `DoGet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Newest version number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Rows of the newest version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<i64>,
    /// Size of the newest version in memory (Arrow bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// Size of the newest version in storage (Parquet bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<i64>,
    /// `bytes` for humans, e.g. `12.5 MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Where the newest version is held: `Memory` once every part is in its owner's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    /// How much of the newest version the pool holds in memory, as parts held of parts
    /// (`5/8`), after a preload; each part is held by its owner node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot: Option<String>,
    /// URI of the pool that serves the dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// When the newest version expires (RFC 3339); the resource is deleted then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Versions currently stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<i64>,
    /// The source (URL and options) of the last successful load, so each source is loaded
    /// once and a change of anything else (the TTL, say) does not load it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded_source: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Human-readable reason for the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Consumers of the newest version and their releases (versions uploaded with
    /// consumers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<ConsumersStatus>,
    /// `Ready`, `Valid`, `Loaded` and `CleanupBlocked` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Who has released the newest version, and who has yet to.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumersStatus {
    /// Named consumers that have not released it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    /// Named consumers that have released it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<String>,
    /// Releases that complete the version.
    pub count: i64,
    /// Releases so far.
    pub releases: i64,
    /// For `kubectl get -o wide`: `1/2 released (pending: reporter)` or `all released`.
    pub summary: String,
}

impl ConsumersStatus {
    /// The status of a version's consumers as its record holds them.
    pub fn of(c: &flight_core::consumers::Consumers) -> Self {
        let pending = c.pending();
        let summary = if c.is_done() {
            "all released".to_string()
        } else if pending.is_empty() {
            format!("{}/{} released", c.releases, c.count)
        } else {
            format!(
                "{}/{} released (pending: {})",
                c.releases,
                c.count,
                pending.join(", ")
            )
        };
        Self {
            pending,
            released: c.released.clone(),
            count: i64::from(c.count),
            releases: i64::from(c.releases),
            summary,
        }
    }

    pub fn all_released(&self) -> bool {
        self.releases >= self.count
    }
}
