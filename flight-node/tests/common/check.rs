//! Several nodes on one storage, and the invariant checker every version-lifecycle test ends
//! with: a fresh node (nothing in memory) reads every acknowledged ticket back identical,
//! deleted tickets are NOT_FOUND, and every live record in storage is one uploaded table,
//! each upload committed at most once.

use std::collections::HashMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{Action, FlightClient};
use flight_node::server::{start, RunningNode};
use flight_node::storage::Storage;
use flight_node::versions::Versions;
use flight_node::Config;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use super::{concat, descriptor, get, schema, status};

/// Nodes sharing one storage, all started from one base configuration.
pub struct Pool {
    pub base: Config,
    nodes: Vec<RunningNode>,
    _dir: Option<tempfile::TempDir>,
}

impl Pool {
    /// `nodes` nodes on a fresh `file://` directory.
    pub async fn file(nodes: usize, tweak: impl Fn(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut base = Config::for_tests(&format!("file://{}", dir.path().display()));
        tweak(&mut base);
        Self::start(base, nodes, Some(dir)).await
    }

    /// `nodes` nodes on the storage `base` names.
    pub async fn start(base: Config, nodes: usize, dir: Option<tempfile::TempDir>) -> Self {
        let mut pool = Self {
            base,
            nodes: Vec::new(),
            _dir: dir,
        };
        for _ in 0..nodes {
            pool.add(|_| {}).await;
        }
        pool
    }

    /// One more node: the base configuration, adjusted.
    pub async fn add(&mut self, tweak: impl FnOnce(&mut Config)) -> usize {
        let mut config = self.base.clone();
        tweak(&mut config);
        self.nodes.push(start(config).await.unwrap());
        self.nodes.len() - 1
    }

    pub async fn client(&self, node: usize) -> FlightClient {
        let uri = format!("http://{}", self.nodes[node].grpc_addr);
        FlightClient::new(Channel::from_shared(uri).unwrap().connect().await.unwrap())
    }

    /// The version lifecycle over the pool's storage, as the operator or a test reaches it.
    pub fn versions(&self) -> Versions {
        Versions::new(Storage::open(&self.base.storage()).unwrap())
    }

    /// Checks the invariants from a fresh node on the pool's storage (see [`check`]).
    pub async fn check(
        &self,
        acked: &HashMap<String, RecordBatch>,
        deleted: &[String],
        unacked: &[RecordBatch],
    ) {
        check(&self.base, acked, deleted, unacked).await
    }

    pub async fn stop(self) {
        for n in self.nodes {
            n.shutdown().await.unwrap();
        }
    }
}

pub async fn action(
    c: &mut FlightClient,
    kind: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, tonic::Status> {
    let mut s = c
        .do_action(Action::new(kind, serde_json::to_vec(&body).unwrap()))
        .await
        .map_err(status)?;
    let first = s.next().await.unwrap().map_err(status)?;
    Ok(serde_json::from_slice(&first).unwrap())
}

/// An upload whose batches arrive one every `pause`.
pub async fn slow_put(
    c: &mut FlightClient,
    ns: &str,
    name: &str,
    batches: Vec<RecordBatch>,
    pause: Duration,
) -> Result<serde_json::Value, tonic::Status> {
    let slow = futures::stream::iter(batches).then(move |b| async move {
        tokio::time::sleep(pause).await;
        Ok(b)
    });
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema())
        .with_flight_descriptor(Some(descriptor(ns, name)))
        .build(slow);
    let mut results = c.do_put(stream).await.map_err(status)?;
    let first = results.next().await.expect("a PutResult").map_err(status)?;
    Ok(serde_json::from_slice(&first.app_metadata).unwrap())
}

pub fn ticket(put: &serde_json::Value) -> String {
    put["ticket"].as_str().unwrap().to_string()
}

/// The invariant checker. `acked` maps each acknowledged ticket to the table it was
/// uploaded with; `deleted` lists tickets that were explicitly deleted; `unacked` holds the
/// tables of uploads whose outcome the client never learnt (they may or may not exist).
/// A fresh node on the storage `base` names (nothing in memory) must read every
/// acknowledged, undeleted ticket back identical (I1) and answer NOT_FOUND for deleted
/// ones (I4); every live record must hold the table acknowledged for it, or one of the
/// unacknowledged tables, and no upload may be committed twice (I2, I3).
pub async fn check(
    base: &Config,
    acked: &HashMap<String, RecordBatch>,
    deleted: &[String],
    unacked: &[RecordBatch],
) {
    let fresh = start(base.clone()).await.unwrap();
    let uri = format!("http://{}", fresh.grpc_addr);
    let mut c = FlightClient::new(Channel::from_shared(uri).unwrap().connect().await.unwrap());
    for (t, table) in acked {
        if deleted.contains(t) {
            continue;
        }
        let got = get(&mut c, t)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {t} is unreadable: {e}"));
        assert_eq!(&concat(&got), table, "{t} reads back a different table");
    }
    for t in deleted {
        let err = get(&mut c, t).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "deleted {t}: {err}");
    }
    let versions = Versions::new(Storage::open(&base.storage()).unwrap());
    let mut uploads = HashMap::new();
    for id in versions.datasets(None).await.unwrap() {
        for m in versions.live(&id).await.unwrap() {
            let t = format!("ads1:{}/{}@{}", m.namespace, m.name, m.version);
            if let Some(other) = uploads.insert(m.upload_id.clone(), t.clone()) {
                panic!("upload {} committed twice: {other} and {t}", m.upload_id);
            }
            let got = concat(
                &get(&mut c, &t)
                    .await
                    .unwrap_or_else(|e| panic!("live record {t} is unreadable: {e}")),
            );
            let known = acked.get(&t).map(|sent| *sent == got);
            assert!(
                known.unwrap_or_else(|| unacked.contains(&got)),
                "{t} holds a table other than the one acknowledged for it, or one nobody uploaded"
            );
        }
    }
    fresh.shutdown().await.unwrap();
}
