//! The two controllers, their shared [`Context`] and error type, and the helpers every
//! reconcile uses: server-side apply with one field manager, conditions, Events, storage.

pub mod dataset;
pub mod node;
pub mod pool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flight_core::storage::{Storage, StorageConfig};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crd::{ArrowDataset, FlightPool};
use crate::metrics::Metrics;
use node::NodeApi;
use pool::build::BuildConfig;

/// The single field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "flight-operator";

/// Wall clock, injected so TTL behaviour is testable at exact instants (the node's own).
pub use flight_core::clock::{Clock, SystemClock};

/// Errors of a reconcile. Invalid specs are not errors (they become conditions); these are
/// the transient failures that `error_policy` retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A read from the API server failed.
    #[error("failed to read {what}: {source}")]
    Read {
        /// What was read.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A server-side apply failed.
    #[error("failed to apply {what}: {source}")]
    Apply {
        /// What was applied.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting an expired resource failed.
    #[error("failed to delete {what}: {source}")]
    Delete {
        /// What was deleted.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The object store could not be opened or used.
    #[error("failed to {action} in storage {url}: {source}")]
    Storage {
        /// What was attempted.
        action: String,
        /// Storage URL of the pool.
        url: String,
        /// The storage error.
        #[source]
        source: flight_core::Error,
    },
    /// A storage credential could not be read from its Secret.
    #[error("failed to read key {key:?} of Secret {namespace}/{secret}: {reason}")]
    Credentials {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        secret: String,
        /// Key in the Secret.
        key: String,
        /// Why it could not be used.
        reason: String,
    },
    /// Storage clean-up cannot proceed (pool or its storage gone); see the `CleanupBlocked`
    /// condition for the way out.
    #[error("failed to clean up dataset {dataset}: {reason}")]
    CleanupBlocked {
        /// `<namespace>/<name>`.
        dataset: String,
        /// Why.
        reason: String,
    },
    /// The object lacks a name or namespace (never the case for objects from the API).
    #[error("failed to reconcile: object has no {0}")]
    MissingMetadata(&'static str),
    /// An expiry instant is out of range.
    #[error("failed to compute expiry: {0}")]
    Expiry(#[from] crate::ttl::TtlError),
    /// Adding or removing the finalizer failed.
    #[error("failed to run the finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Short label for the `error` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Apply { .. } => "apply",
            Self::Delete { .. } => "delete",
            Self::Storage { .. } => "storage",
            Self::Credentials { .. } => "credentials",
            Self::CleanupBlocked { .. } => "cleanup_blocked",
            Self::MissingMetadata(_) => "metadata",
            Self::Expiry(_) => "expiry",
            Self::Finalizer(_) => "finalizer",
        }
    }
}

/// Operator-wide settings of the controllers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Inputs of the pool build step.
    pub build: BuildConfig,
    /// Namespace to watch; all namespaces when `None`.
    pub namespace: Option<String>,
    /// How often storage is scanned for datasets uploaded by atoms.
    pub discovery_interval: Duration,
    /// Delay before retrying a transient failure.
    pub retry_after: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            build: BuildConfig {
                default_image: pool::build::DEFAULT_NODE_IMAGE.to_owned(),
            },
            namespace: None,
            discovery_interval: Duration::from_secs(30),
            retry_after: Duration::from_secs(30),
        }
    }
}

/// Everything a reconcile needs, shared by both controllers.
#[derive(Clone)]
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Controller settings.
    pub config: ControllerConfig,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Cache of every watched ArrowDataset (pool status counts them).
    pub datasets: Store<ArrowDataset>,
    /// Flight node client (real or fake).
    pub nodes: Arc<dyn NodeApi>,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// Object stores opened per pool (`<namespace>/<name>`), with the settings they were
    /// opened with: reused while the pool's storage settings and credentials stay the
    /// same, so reconciles keep their connections; reopened when either changes. One entry per
    /// pool the operator has seen.
    pub stores: Arc<Mutex<HashMap<String, (StorageConfig, Storage)>>>,
}

impl Context {
    /// A context with the real node client and system clock.
    pub fn new(
        client: Client,
        config: ControllerConfig,
        metrics: Arc<Metrics>,
        datasets: Store<ArrowDataset>,
        nodes: Arc<dyn NodeApi>,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), reporter());
        Self {
            client,
            config,
            metrics,
            recorder,
            datasets,
            nodes,
            clock: Arc::new(SystemClock),
            stores: Arc::default(),
        }
    }

    /// Publishes an Event about `obj`; failures are logged, never fatal.
    pub async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "failed to publish event");
        }
    }

    /// Reads a key of a Secret as UTF-8 text (trimmed).
    pub async fn secret_value(
        &self,
        namespace: &str,
        secret: &str,
        key: &str,
    ) -> Result<String, Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let err = |reason: String| Error::Credentials {
            namespace: namespace.into(),
            secret: secret.into(),
            key: key.into(),
            reason,
        };
        let found = api.get_opt(secret).await.map_err(|e| err(e.to_string()))?;
        let found = found.ok_or_else(|| err("the Secret does not exist".into()))?;
        let bytes = found
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                found
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| err("the key is missing".into()))?;
        String::from_utf8(bytes)
            .map(|s| s.trim().to_owned())
            .map_err(|_| err("the value is not UTF-8".into()))
    }

    /// Opens the object store of a pool with the credentials from its Secret, so the
    /// operator reaches the data even when no node runs.
    pub async fn storage_for(&self, pool: &FlightPool) -> Result<Storage, Error> {
        let namespace = pool
            .namespace()
            .ok_or(Error::MissingMetadata("namespace"))?;
        let spec = &pool.spec.storage;
        let (access_key_id, secret_access_key) = match &spec.credentials_secret {
            Some(c) => (
                Some(
                    self.secret_value(&namespace, &c.name, &c.access_key_id_key)
                        .await?,
                ),
                Some(
                    self.secret_value(&namespace, &c.name, &c.secret_access_key_key)
                        .await?,
                ),
            ),
            None => (None, None),
        };
        let config = StorageConfig {
            url: spec.url.clone(),
            endpoint: spec.endpoint.clone(),
            region: spec.region.clone(),
            access_key_id,
            secret_access_key,
            allow_http: spec.allow_http,
        };
        let key = format!("{namespace}/{}", pool.name_any());
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((opened_with, storage)) = stores.get(&key) {
            if *opened_with == config {
                return Ok(storage.clone());
            }
        }
        let storage = Storage::open(&config).map_err(|source| Error::Storage {
            action: "open the store".into(),
            url: spec.url.clone(),
            source,
        })?;
        stores.insert(key, (config, storage.clone()));
        Ok(storage)
    }
}

/// Reporter of the operator's Events.
pub fn reporter() -> Reporter {
    Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// Server-side applies a namespaced object with the operator's field manager.
pub async fn apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Apply {
        what: format!("{} {namespace}/{name}", K::kind(&())),
        source,
    })
}

/// Server-side applies the status of a custom resource.
pub async fn apply_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Apply {
        what: format!("status of {} {name}", K::kind(&())),
        source,
    })
}

/// Converts a chrono instant to the Kubernetes `Time` type (second precision).
pub fn k8s_time(at: DateTime<Utc>) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(at.timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Converts a Kubernetes `Time` to a chrono instant.
pub fn chrono_time(t: &Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(
        t.0.as_second(),
        t.0.subsec_nanosecond().max(0).unsigned_abs(),
    )
}

/// A condition to merge into a status with [`set_condition`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCondition<'a> {
    /// Condition type, e.g. `Ready`.
    pub type_: &'a str,
    /// Whether it holds.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'a str,
    /// Human-readable message.
    pub message: String,
}

/// Sets a condition, keeping `lastTransitionTime` when the status did not flip, so an
/// unchanged world produces an identical status (and no write).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    new: NewCondition<'_>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let status = if new.status { "True" } else { "False" };
    let previous = conditions.iter().position(|c| c.type_ == new.type_);
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => k8s_time(now),
    };
    let condition = Condition {
        type_: new.type_.into(),
        status: status.into(),
        reason: new.reason.into(),
        message: new.message,
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// Removes a condition type.
pub fn clear_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::t;

    fn cond(status: bool, reason: &str) -> NewCondition<'_> {
        NewCondition {
            type_: "Ready",
            status,
            reason,
            message: "m".into(),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut c = Vec::new();
        set_condition(&mut c, cond(false, "Waiting"), Some(1), t(100));
        set_condition(&mut c, cond(false, "StillWaiting"), Some(2), t(200));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, k8s_time(t(100)));
        assert_eq!(c[0].reason, "StillWaiting");
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(&mut c, cond(true, "Ready"), Some(2), t(300));
        assert_eq!(c[0].last_transition_time, k8s_time(t(300)));
        assert_eq!(c[0].status, "True");
        clear_condition(&mut c, "Ready");
        assert!(c.is_empty());
    }

    #[test]
    fn time_conversion_round_trips() {
        assert_eq!(
            chrono_time(&k8s_time(t(1_700_000_000))),
            Some(t(1_700_000_000))
        );
    }
}
