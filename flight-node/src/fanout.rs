//! Work one node spreads over its pool: `preload` asks each part's owner to load its parts.
//!
//! The node that receives a `preload` loads the parts it owns and, at the same time, asks
//! every other owner (as listed by [`crate::placement`]) for theirs, with the caller's own
//! bearer token, so a peer checks the same namespace rights. A peer that cannot be reached
//! is reported in the answer and leaves its parts cold: nothing is lost, they are read from
//! storage by whichever node serves them.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;

use crate::client::NodeClient;
use crate::error::Result;
use crate::name::DatasetId;
use crate::node::{Node, NodePreload, PreloadResult};

/// How a node reaches its peers.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// Certificates (PEM) trusted for `grpc+tls://` peers; the system's roots otherwise.
    pub ca_pem: Option<Vec<u8>>,
}

/// The `preload` action without `parts`: every owner of the version loads its parts.
pub async fn preload(
    node: &Arc<Node>,
    peers: &Peers,
    token: Option<&str>,
    id: &DatasetId,
    version: Option<u64>,
) -> Result<PreloadResult> {
    let manifest = node.version(id, version).await?;
    let count = u32::try_from(manifest.parts.len()).unwrap_or(u32::MAX);
    let me = node
        .placement()
        .advertise_uri()
        .unwrap_or_default()
        .to_string();
    // Parts by owner; parts without a known owner (a standalone node) are this node's.
    let mut owners: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for p in 0..count {
        let owner = node
            .placement()
            .part_owner(id, manifest.version, p)
            .unwrap_or_else(|| me.clone());
        owners.entry(owner).or_default().push(p);
    }
    let version = manifest.version;
    let asks = owners.into_iter().map(|(owner, parts)| {
        let me = me.clone();
        async move {
            let asked = u32::try_from(parts.len()).unwrap_or(u32::MAX);
            let outcome = if owner == me {
                node.preload(id, Some(version), Some(&parts))
                    .await
                    .map(|(_, p)| p.cached)
            } else {
                ask_peer(&owner, peers, token, id, version, parts).await
            };
            match outcome {
                Ok(cached) => NodePreload {
                    node: owner,
                    parts: asked,
                    cached,
                    error: None,
                },
                Err(e) => {
                    tracing::warn!(peer = %owner, dataset = %id, error = %e, "a peer could not preload its parts");
                    NodePreload {
                        node: owner,
                        parts: asked,
                        cached: 0,
                        error: Some(e.to_string()),
                    }
                }
            }
        }
    });
    let nodes = join_all(asks).await;
    let parts_cached = nodes.iter().map(|n| n.cached).sum();
    Ok(PreloadResult {
        version,
        cached: parts_cached == count,
        parts: count,
        parts_cached,
        nodes,
    })
}

async fn ask_peer(
    uri: &str,
    peers: &Peers,
    token: Option<&str>,
    id: &DatasetId,
    version: u64,
    parts: Vec<u32>,
) -> Result<u32> {
    let mut client = NodeClient::connect_with(uri, token, peers.ca_pem.as_deref()).await?;
    let answer = client.preload_parts(id, version, parts).await?;
    Ok(answer.parts_cached)
}
