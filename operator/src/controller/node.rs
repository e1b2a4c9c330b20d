//! How the operator talks to flight nodes: `load` a declarative source on the owner node and
//! `evict` deleted datasets from every node's memory. Behind a trait so reconcile tests run
//! without a node.

use std::time::Duration;

use flight_core::client::NodeClient;
use flight_core::manifest::PutResult;
use flight_core::name::DatasetId;
use flight_core::protocol::{LoadRequest, PreloadResult};
use flight_core::storage::Storage;
use futures::future::BoxFuture;
use futures::FutureExt;

/// Where to reach a node, and the token to present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTarget {
    /// `grpc://host:port`.
    pub uri: String,
    /// Bearer token, when the pool has authentication.
    pub token: Option<String>,
}

/// A failed node call.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("failed to {action} on node {uri}: {message}")]
pub struct NodeError {
    /// `load`, `evict` or `preload`.
    pub action: &'static str,
    /// The node.
    pub uri: String,
    /// What the node (or the connection) said.
    pub message: String,
    /// Retrying the same request cannot succeed (bad source, unknown contract): wait for a
    /// spec change instead.
    pub permanent: bool,
}

/// The node operations the controllers use.
pub trait NodeApi: Send + Sync {
    /// Ingests `req.source` as a new version on `target` and returns its `PutResult`.
    fn load(
        &self,
        target: NodeTarget,
        req: LoadRequest,
    ) -> BoxFuture<'static, Result<PutResult, NodeError>>;
    /// Drops every cached version of `id` from `target`'s memory.
    fn evict(&self, target: NodeTarget, id: DatasetId)
        -> BoxFuture<'static, Result<(), NodeError>>;
    /// Loads `version` of `id` into the pool's memory, each part on its owner (`target`
    /// asks the others); says how many parts are held.
    fn preload(
        &self,
        target: NodeTarget,
        id: DatasetId,
        version: u64,
    ) -> BoxFuture<'static, Result<PreloadResult, NodeError>>;
    /// The node's cache: `(bytes held, capacity)` from its `stats` action.
    fn cache(&self, target: NodeTarget) -> BoxFuture<'static, Result<(u64, u64), NodeError>>;
    /// Checks that a pool's storage answers (the bucket exists, the credentials work);
    /// the error is a sentence naming what to fix.
    fn check_storage(&self, storage: Storage) -> BoxFuture<'static, Result<(), String>>;
}

/// Calls real nodes over Arrow Flight with [`NodeClient`].
#[derive(Debug, Clone)]
pub struct FlightNodes {
    /// Upper bound of one call (a large `load` can take minutes).
    pub timeout: Duration,
}

impl Default for FlightNodes {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(600),
        }
    }
}

fn node_error(action: &'static str, uri: &str, e: &flight_core::Error) -> NodeError {
    use flight_core::Error as E;
    let permanent = matches!(
        e,
        E::InvalidArgument(_) | E::NotFound(_) | E::ContractViolation(_) | E::Unimplemented(_)
    );
    NodeError {
        action,
        uri: uri.to_owned(),
        message: e.to_string(),
        permanent,
    }
}

fn timed_out(action: &'static str, uri: &str, after: Duration) -> NodeError {
    NodeError {
        action,
        uri: uri.to_owned(),
        message: format!("no answer within {after:?}"),
        permanent: false,
    }
}

/// Connects to `target` and runs one call on it within `timeout`, naming `action` in errors.
fn call<T, F, Fut>(
    action: &'static str,
    target: NodeTarget,
    timeout: Duration,
    f: F,
) -> BoxFuture<'static, Result<T, NodeError>>
where
    T: Send + 'static,
    F: FnOnce(NodeClient) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = flight_core::Result<T>> + Send,
{
    async move {
        let run = async {
            let client = NodeClient::connect(&target.uri, target.token.as_deref())
                .await
                .map_err(|e| node_error(action, &target.uri, &e))?;
            f(client)
                .await
                .map_err(|e| node_error(action, &target.uri, &e))
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| timed_out(action, &target.uri, timeout))?
    }
    .boxed()
}

/// How long the operator waits for a pool's storage to answer its check.
const STORAGE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the pool controller waits for one node's `stats`.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

impl NodeApi for FlightNodes {
    fn cache(&self, target: NodeTarget) -> BoxFuture<'static, Result<(u64, u64), NodeError>> {
        call("stats", target, STATS_TIMEOUT, |mut c| async move {
            let v = c.stats().await?;
            match (v["memoryUsed"].as_u64(), v["memoryLimit"].as_u64()) {
                (Some(used), Some(limit)) => Ok((used, limit)),
                _ => Err(flight_core::Error::Internal(
                    "the node's stats carry no cache figures (the operator's token needs every namespace)".into(),
                )),
            }
        })
    }

    fn check_storage(&self, storage: Storage) -> BoxFuture<'static, Result<(), String>> {
        async move {
            match tokio::time::timeout(STORAGE_CHECK_TIMEOUT, storage.check(false)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "storage {} did not answer within {}s",
                    storage.url(),
                    STORAGE_CHECK_TIMEOUT.as_secs()
                )),
            }
        }
        .boxed()
    }

    fn load(
        &self,
        target: NodeTarget,
        req: LoadRequest,
    ) -> BoxFuture<'static, Result<PutResult, NodeError>> {
        call("load", target, self.timeout, move |mut c| async move {
            c.load(&req).await
        })
    }

    fn evict(
        &self,
        target: NodeTarget,
        id: DatasetId,
    ) -> BoxFuture<'static, Result<(), NodeError>> {
        // Eviction is best effort and must not hold up a deletion.
        let timeout = self.timeout.min(Duration::from_secs(10));
        call("evict", target, timeout, move |mut c| async move {
            c.evict(&id, None).await.map(|_| ())
        })
    }

    fn preload(
        &self,
        target: NodeTarget,
        id: DatasetId,
        version: u64,
    ) -> BoxFuture<'static, Result<PreloadResult, NodeError>> {
        call("preload", target, self.timeout, move |mut c| async move {
            c.preload(&id, Some(version)).await
        })
    }
}
