//! How the operator talks to flight nodes: `load` a declarative source on the owner node and
//! `evict` deleted datasets from every node's memory. Behind a trait so reconcile tests run
//! without a node.

use std::time::Duration;

use flight_node::client::NodeClient;
use flight_node::manifest::PutResult;
use flight_node::name::DatasetId;
use flight_node::node::LoadRequest;
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
    /// Loads `version` of `id` into `target`'s memory; returns whether it is cached (false
    /// when it cannot fit).
    fn preload(
        &self,
        target: NodeTarget,
        id: DatasetId,
        version: u64,
    ) -> BoxFuture<'static, Result<bool, NodeError>>;
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

fn node_error(action: &'static str, uri: &str, e: &flight_node::Error) -> NodeError {
    use flight_node::Error as E;
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
    Fut: std::future::Future<Output = flight_node::Result<T>> + Send,
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

impl NodeApi for FlightNodes {
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
    ) -> BoxFuture<'static, Result<bool, NodeError>> {
        call("preload", target, self.timeout, move |mut c| async move {
            c.preload(&id, Some(version)).await
        })
    }
}
