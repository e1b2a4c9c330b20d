//! Multi-node placement: which node owns a dataset, by rendezvous hashing.
//!
//! Every node can serve every ticket (it loads from storage), so placement only adds
//! locality: `GetFlightInfo` lists the owner first so its cache stays hot.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::name::DatasetId;

#[derive(Deserialize)]
struct PeersFile {
    #[serde(default)]
    peers: Vec<String>,
}

/// This node's advertised URI and the pool's nodes.
#[derive(Debug)]
pub struct Placement {
    advertise_uri: Option<String>,
    peers_file: Option<PathBuf>,
    state: RwLock<(Vec<String>, Option<SystemTime>)>,
}

impl Placement {
    pub fn new(advertise_uri: Option<String>, peers_file: Option<PathBuf>) -> Result<Self> {
        let p = Self {
            advertise_uri,
            peers_file,
            state: RwLock::new((Vec::new(), None)),
        };
        p.reload()?;
        Ok(p)
    }

    pub fn advertise_uri(&self) -> Option<&str> {
        self.advertise_uri.as_deref()
    }

    /// Re-reads the peers file if it changed. Called periodically; the operator rewrites
    /// the file (a ConfigMap) when the pool scales.
    pub fn reload(&self) -> Result<()> {
        let Some(path) = &self.peers_file else {
            return Ok(());
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_some() && self.read_state().1 == modified {
            return Ok(());
        }
        let peers = read_peers(path)?;
        tracing::info!(peers = peers.len(), "loaded peers file");
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = (peers, modified);
        Ok(())
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, (Vec<String>, Option<SystemTime>)> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// All known nodes: the peers plus this node.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes = self.read_state().0.clone();
        if let Some(me) = &self.advertise_uri {
            if !nodes.contains(me) {
                nodes.push(me.clone());
            }
        }
        nodes
    }

    /// The owner of a dataset, if any node is known.
    pub fn owner(&self, id: &DatasetId) -> Option<String> {
        rendezvous(&self.nodes(), id)
    }
}

fn read_peers(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("failed to read peers file {}: {e}", path.display())))?;
    let file: PeersFile = serde_yaml::from_str(&text).map_err(|e| {
        Error::Config(format!(
            "failed to parse peers file {}: {e}",
            path.display()
        ))
    })?;
    Ok(file.peers)
}

/// Highest-random-weight choice: stable, and moving one node only moves its datasets.
pub fn rendezvous(nodes: &[String], id: &DatasetId) -> Option<String> {
    nodes
        .iter()
        .max_by_key(|node| {
            let mut h = Sha256::new();
            h.update(node.as_bytes());
            h.update([0]);
            h.update(id.namespace().as_bytes());
            h.update([0]);
            h.update(id.name().as_bytes());
            let d = h.finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&d[..8]);
            u64::from_be_bytes(first)
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("grpc://pool-{i}.pool:8815"))
            .collect()
    }

    #[test]
    fn stable_and_spread() {
        let ids: Vec<_> = (0..300)
            .map(|i| DatasetId::new("ns", format!("d{i}")).unwrap())
            .collect();
        let three = nodes(3);
        let owners: Vec<_> = ids
            .iter()
            .map(|id| rendezvous(&three, id).unwrap())
            .collect();
        for n in &three {
            let count = owners.iter().filter(|o| *o == n).count();
            assert!(count > 50, "{n} owns only {count} of 300");
        }
        // Adding a node moves only datasets to the new node.
        let four = nodes(4);
        for (id, before) in ids.iter().zip(&owners) {
            let after = rendezvous(&four, id).unwrap();
            assert!(after == *before || after == four[3]);
        }
        assert_eq!(rendezvous(&[], &ids[0]), None);
    }

    #[test]
    fn peers_file_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.yaml");
        std::fs::write(&path, "peers: [grpc://a:8815, grpc://b:8815]\n").unwrap();
        let p = Placement::new(Some("grpc://a:8815".into()), Some(path)).unwrap();
        assert_eq!(p.nodes().len(), 2);
        assert!(p.owner(&DatasetId::new("ns", "x").unwrap()).is_some());
    }
}
