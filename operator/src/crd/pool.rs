//! `FlightPool`: a pool of flight nodes sharing one object storage.
// Every `printcolumn(...)` repeats `type_ = ...`, which clippy takes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::TTL_PATTERN;

/// Desired state of a pool of flight nodes: a StatefulSet plus its Services, ConfigMap and
/// PodDisruptionBudget.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "arrow.trinity.io",
    version = "v1alpha1",
    kind = "FlightPool",
    plural = "flightpools",
    shortname = "fpool",
    category = "arrow",
    namespaced,
    status = "FlightPoolStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    derive = "PartialEq",
    doc = "A pool of Arrow Flight nodes that cache datasets in memory and keep them durable in object storage.",
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Datasets", type_ = "integer", json_path = ".status.datasets"),
    printcolumn(name = "Cached", type_ = "string", json_path = ".status.cache.cached"),
    printcolumn(
        name = "Capacity",
        type_ = "string",
        json_path = ".status.cache.capacity"
    ),
    printcolumn(
        name = "Fill",
        type_ = "string",
        json_path = ".status.cache.percentage"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FlightPoolSpec {
    /// Number of flight nodes (pods) in the pool.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Container image of the flight node; the operator's `--node-image` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the flight node container (`Always`, `IfNotPresent`, `Never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// CPU and memory requests and limits of the flight node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Memory each node holds data in, e.g. `2GiB` (passed as `--memory-limit`): its cache
    /// plus a quarter for requests in flight. Keep it below the container memory limit to
    /// leave room for the process itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?\s*([KMGT]i?B|[kMGT]B?|B)?$"))]
    pub memory_limit: Option<String>,
    /// Arrow bytes per Parquet part, e.g. `64MiB` (passed as `--part-size`; the node's
    /// default when omitted). A part is the unit of parallel reads and of placement: each
    /// part of a version is cached by its own owner node, so smaller parts spread a version
    /// over more of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?\s*([KMGT]i?B|[kMGT]B?|B)?$"))]
    pub part_size: Option<String>,
    /// Object storage holding the Parquet parts and manifests of every dataset of the pool.
    pub storage: StorageSpec,
    /// TTL given to datasets that name none, e.g. `6h` or `7d` (passed as `--default-ttl`).
    #[serde(default = "default_ttl")]
    #[schemars(regex(pattern = TTL_PATTERN), length(max = 32))]
    pub default_ttl: String,
    /// How long a version released by every consumer stays readable before it is deleted,
    /// e.g. `30s` (passed as `--release-grace`; the node's default when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TTL_PATTERN), length(max = 32))]
    pub release_grace: Option<String>,
    /// Bearer-token authentication of the nodes; open access when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// TLS for the Flight port; plain gRPC when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Named data contracts (schemas) that uploads and dataset sources may be checked against.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contracts: BTreeMap<String, ContractSpec>,
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity rules of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Topology spread constraints of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

fn default_replicas() -> i32 {
    1
}

fn default_ttl() -> String {
    "24h".to_owned()
}

/// Where a pool keeps its data.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Storage URL: `s3://bucket/prefix` for S3 or MinIO, `file:///path` for a single node
    /// with local disk (development only).
    #[schemars(regex(pattern = r"^(s3|file|memory)://.*$"))]
    pub url: String,
    /// S3 endpoint URL, e.g. `http://minio.minio.svc:9000`; AWS when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret holding the access key pair; the pod's ambient credentials when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<StorageCredentials>,
    /// Allow plain HTTP to the endpoint (MinIO without TLS).
    #[serde(default)]
    pub allow_http: bool,
    /// Storage prefixes outside every namespace that datasets of any namespace in this pool
    /// may load sources from, such as a shared landing area (`raw/`). Each namespace's own
    /// prefix (`<namespace>/`) is always allowed; nothing else is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_source_prefixes: Vec<String>,
}

/// A Secret in the pool's namespace with the storage access key pair.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageCredentials {
    /// Name of the Secret.
    pub name: String,
    /// Key of the access key id in the Secret.
    #[serde(default = "default_access_key_id_key")]
    pub access_key_id_key: String,
    /// Key of the secret access key in the Secret.
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,
}

fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".to_owned()
}

fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".to_owned()
}

/// Bearer-token authentication of the nodes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Name of a Secret in the pool's namespace.
    pub secret_name: String,
    /// Key of the node's token file (tokens bound to namespaces) in the Secret.
    #[serde(default = "default_tokens_key")]
    pub tokens_key: String,
    /// Key of a token in the Secret that the operator presents to the nodes (for `load` and
    /// `evict`); the operator calls the nodes without a token when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_token_key: Option<String>,
    /// Key of the ticket signing key in the Secret; tickets are unsigned when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_key_key: Option<String>,
}

fn default_tokens_key() -> String {
    "tokens.yaml".to_owned()
}

/// TLS for the Flight port.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Name of a `kubernetes.io/tls` Secret (keys `tls.crt` and `tls.key`) in the pool's namespace.
    pub secret_name: String,
}

/// A named schema that datasets can be checked against.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContractSpec {
    /// Columns in order.
    #[schemars(length(min = 1))]
    pub fields: Vec<ContractField>,
}

/// One column of a contract.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContractField {
    /// Column name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Arrow type, e.g. `int64`, `utf8`, `timestamp[ms, UTC]`, `decimal128(12,2)`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1))]
    pub type_: String,
    /// Whether the column may hold nulls.
    #[serde(default = "default_nullable")]
    pub nullable: bool,
}

fn default_nullable() -> bool {
    true
}

/// Observed state of a pool.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlightPoolStatus {
    /// Pods created by the StatefulSet.
    #[serde(default)]
    pub replicas: i32,
    /// Pods passing their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
    /// URI atoms connect to, e.g. `grpc://<pool>.<namespace>.svc:8815`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Number of ArrowDatasets that belong to this pool.
    #[serde(default)]
    pub datasets: i32,
    /// What the pool's nodes hold in memory, from their `stats` (absent while no node answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<PoolCache>,
    /// Label selector of the pool's pods (the `/scale` subresource's, for autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (all replicas ready) and `Valid` (the spec was accepted) conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Cache fill of a pool, summed over the nodes that answered.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolCache {
    /// Bytes of tables held in memory.
    pub cached_bytes: i64,
    /// Bytes the caches may hold.
    pub capacity_bytes: i64,
    /// `cachedBytes` for humans, e.g. `1.2 GiB`.
    pub cached: String,
    /// `capacityBytes` for humans.
    pub capacity: String,
    /// Fill, e.g. `37%`.
    pub percentage: String,
    /// Nodes that answered.
    pub nodes: i32,
}
