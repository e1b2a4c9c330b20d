//! Multi-node placement: which node owns each part of a version, by rendezvous hashing.
//!
//! A pool is one memory: every part of a version has its own owner, chosen by hashing
//! `(namespace, name, version, part)` with each node's URI and taking the highest weight.
//! The owner caches the part on its first read (or on `preload`); `GetFlightInfo` lists each
//! endpoint's owner first, so a version larger than any one node is held across the pool
//! and a reader fetches its parts from every owner at once. Parts spread evenly over the
//! nodes, and when a node joins or leaves only the parts it gains or had move (about 1/N).
//!
//! Every node can still serve every ticket (it loads from storage), so placement only adds
//! locality: a plain Service in front of the pool is always correct, only slower.

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

    /// The owner of one part of a version, if any node is known.
    pub fn part_owner(&self, id: &DatasetId, version: u64, part: u32) -> Option<String> {
        part_owner(&self.nodes(), id, version, part)
    }

    /// Whether this node owns the part: it does when it is the owner, and when no node is
    /// known (a standalone node holds everything it reads).
    pub fn owns(&self, id: &DatasetId, version: u64, part: u32) -> bool {
        match (self.part_owner(id, version, part), &self.advertise_uri) {
            (Some(owner), Some(me)) => owner == *me,
            _ => true,
        }
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

/// A node chosen by the dataset alone, the same on every node and every reconcile: where
/// the operator sends work on a dataset as a whole (`load`, `preload`), which any node can
/// do and which fans out to the parts' owners.
pub fn dataset_node(nodes: &[String], id: &DatasetId) -> Option<String> {
    part_owner(nodes, id, 0, 0)
}

/// The owner of one part of a version among `nodes`: highest random weight of
/// `(node, namespace, name, version, part)`. Stable, and a node joining or leaving moves
/// only the parts it gains or held.
pub fn part_owner(nodes: &[String], id: &DatasetId, version: u64, part: u32) -> Option<String> {
    nodes
        .iter()
        .max_by_key(|node| {
            let mut h = Sha256::new();
            h.update(node.as_bytes());
            h.update([0]);
            h.update(id.namespace().as_bytes());
            h.update([0]);
            h.update(id.name().as_bytes());
            h.update([0]);
            h.update(version.to_be_bytes());
            h.update(part.to_be_bytes());
            let d = h.finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&d[..8]);
            // Ties (practically impossible) go to the lexically first URI, the same on
            // every node.
            (u64::from_be_bytes(first), std::cmp::Reverse(node.as_str()))
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

    /// The parts of 40 versions of 30 parts each (1,200 parts).
    fn parts() -> Vec<(DatasetId, u64, u32)> {
        let mut out = Vec::new();
        for d in 0..8 {
            let id = DatasetId::new("ns", format!("d{d}")).unwrap();
            for v in 1..=5 {
                for p in 0..30 {
                    out.push((id.clone(), v, p));
                }
            }
        }
        out
    }

    #[test]
    fn parts_spread_evenly_and_few_move_when_a_node_joins() {
        let parts = parts();
        let three = nodes(3);
        let owners: Vec<String> = parts
            .iter()
            .map(|(id, v, p)| part_owner(&three, id, *v, *p).unwrap())
            .collect();
        // Even within a small factor: each node holds 1/3 ± 20% of the parts.
        let even = parts.len() / 3;
        for n in &three {
            let count = owners.iter().filter(|o| *o == n).count();
            assert!(
                count * 10 > even * 8 && count * 10 < even * 12,
                "{n} owns {count} of {} parts",
                parts.len()
            );
        }
        // The parts of one version do not all land on one node.
        let first: Vec<&String> = owners[..30].iter().collect();
        assert!(three.iter().all(|n| first.contains(&n)), "{first:?}");

        // A fourth node takes about a quarter; nothing moves between the first three.
        let four = nodes(4);
        let mut moved = 0;
        for ((id, v, p), before) in parts.iter().zip(&owners) {
            let after = part_owner(&four, id, *v, *p).unwrap();
            if after != *before {
                assert_eq!(after, four[3], "a part moved between two old nodes");
                moved += 1;
            }
        }
        let quarter = parts.len() / 4;
        assert!(
            moved * 10 > quarter * 8 && moved * 10 < quarter * 12,
            "{moved} of {} parts moved on 3 -> 4 nodes",
            parts.len()
        );
        // A node leaving moves only its own parts, to the others.
        let two = nodes(2);
        for ((id, v, p), before) in parts.iter().zip(&owners) {
            let after = part_owner(&two, id, *v, *p).unwrap();
            if *before != three[2] {
                assert_eq!(after, *before, "a part of a staying node moved");
            }
        }
        assert_eq!(part_owner(&[], &parts[0].0, 1, 0), None);
    }

    #[test]
    fn a_standalone_node_owns_everything() {
        let id = DatasetId::new("ns", "x").unwrap();
        let alone = Placement::new(None, None).unwrap();
        assert!(alone.owns(&id, 1, 0));
        assert_eq!(alone.part_owner(&id, 1, 0), None);
        let me = Placement::new(Some("grpc://a:8815".into()), None).unwrap();
        assert!(me.owns(&id, 1, 7));
        assert_eq!(me.part_owner(&id, 1, 7).as_deref(), Some("grpc://a:8815"));
    }

    #[test]
    fn peers_file_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.yaml");
        std::fs::write(&path, "peers: [grpc://a:8815, grpc://b:8815]\n").unwrap();
        let p = Placement::new(Some("grpc://a:8815".into()), Some(path.clone())).unwrap();
        assert_eq!(p.nodes().len(), 2);
        let id = DatasetId::new("ns", "x").unwrap();
        let owners: Vec<bool> = (0..20).map(|part| p.owns(&id, 1, part)).collect();
        assert!(
            owners.contains(&true) && owners.contains(&false),
            "{owners:?}"
        );
        std::fs::write(&path, "peers: [grpc://a:8815]\n").unwrap();
        // Modification times may not change within the file system's resolution.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        p.reload().unwrap();
        assert_eq!(p.nodes(), vec!["grpc://a:8815".to_string()]);
        assert!((0..20).all(|part| p.owns(&id, 1, part)));
    }
}
