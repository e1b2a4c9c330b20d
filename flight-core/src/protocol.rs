//! The node's wire protocol beyond Arrow Flight itself: the headers an upload carries and
//! the JSON bodies and answers of its actions. Shared by the node, its client and the
//! operator.

use serde::{Deserialize, Serialize};

use crate::consumers::ConsumersSpec;

/// Header naming the TTL of an upload.
pub const TTL_HEADER: &str = "x-flight-ttl";
/// Header naming the data contract of an upload.
pub const CONTRACT_HEADER: &str = "x-flight-contract";
/// Header naming (`scorer,reporter`) or counting (`2`) the consumers of an upload.
pub const CONSUMERS_HEADER: &str = "x-flight-consumers";

/// Body of the `load` action: ingest an object from the node's storage as a new version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadRequest {
    pub namespace: String,
    pub name: String,
    /// Object path relative to the storage root, or a URL under the storage URL.
    pub source: String,
    /// `csv` or `parquet`; guessed from the extension when absent.
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub contract: Option<String>,
    /// CSV field delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<char>,
    /// Who will read the version: a count, names, or `"a,b"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<ConsumersSpec>,
}

/// Body of the `preload` action. Without `parts`, the node loads the parts it owns and
/// asks each other owner in the pool for theirs; with `parts` (and `version`), it loads
/// just those (what the first node asks of the others).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreloadRequest {
    #[serde(default = "default_ns")]
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<u32>>,
}

/// The `preload` action's answer: how much of the version is in memory across the pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PreloadResult {
    pub version: u64,
    /// Every part asked for is held in memory by its owner.
    pub cached: bool,
    /// Parts asked for (every part of the version, unless the request named some).
    pub parts: u32,
    /// Of those, the parts now in memory.
    pub parts_cached: u32,
    /// What each node did.
    #[serde(default)]
    pub nodes: Vec<NodePreload>,
}

/// One node's share of a `preload`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodePreload {
    /// The node's advertised URI (empty for a standalone node).
    pub node: String,
    pub parts: u32,
    pub cached: u32,
    /// Why the node could not be asked, or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Body of the `delete` and `evict` actions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasetRef {
    #[serde(default = "default_ns")]
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub version: Option<u64>,
}

fn default_ns() -> String {
    crate::name::DEFAULT_NAMESPACE.to_string()
}

/// The parts of one version held in this node's memory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CachedTableInfo {
    pub namespace: String,
    pub name: String,
    pub version: u64,
    /// Bytes of the parts held.
    pub bytes: u64,
    /// The parts held (indices into the version's parts), in order.
    pub parts: Vec<u32>,
}
