//! The version invariants (I1–I4 in `flight_node::versions`) under the races and faults that
//! broke them: several nodes on one storage, deletes and renews through another node, the
//! orphan sweep and dataset deletes racing uploads in flight, numbers freed by deletes.
//! Every test ends with [`check`]: a fresh node (nothing in memory) reads every
//! acknowledged ticket, and every live record in storage is exactly one uploaded table.
//! These tests use `file://` storage; `minio.rs` runs the S3 ones against MinIO.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{Action, FlightClient};
use common::*;
use flight_node::server::{start, RunningNode};
use flight_node::storage::Storage;
use flight_node::versions::Versions;
use flight_node::Config;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

/// Nodes sharing one storage URL.
pub struct Pool {
    pub url: String,
    nodes: Vec<RunningNode>,
    _dir: Option<tempfile::TempDir>,
}

impl Pool {
    pub async fn file(nodes: usize, tweak: impl Fn(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let mut pool = Self {
            url,
            nodes: Vec::new(),
            _dir: Some(dir),
        };
        for _ in 0..nodes {
            pool.add(&tweak).await;
        }
        pool
    }

    pub async fn add(&mut self, tweak: &impl Fn(&mut Config)) -> usize {
        let mut config = Config::for_tests(&self.url);
        tweak(&mut config);
        self.nodes.push(start(config).await.unwrap());
        self.nodes.len() - 1
    }

    pub async fn client(&self, node: usize) -> FlightClient {
        let uri = format!("http://{}", self.nodes[node].grpc_addr);
        FlightClient::new(Channel::from_shared(uri).unwrap().connect().await.unwrap())
    }

    pub fn versions(&self) -> Versions {
        let storage = Storage::open(&flight_node::storage::StorageConfig {
            url: self.url.clone(),
            ..Default::default()
        })
        .unwrap();
        Versions::new(storage)
    }

    pub async fn stop(self) {
        for n in self.nodes {
            n.shutdown().await.unwrap();
        }
    }
}

async fn action(
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
async fn slow_put(
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

fn ticket(put: &serde_json::Value) -> String {
    put["ticket"].as_str().unwrap().to_string()
}

/// The invariant checker. `acked` maps each acknowledged ticket to the table it was
/// uploaded with; `deleted` lists tickets that were explicitly deleted; `unacked` holds the
/// tables of uploads whose outcome the client never learnt (they may or may not exist). A fresh node on the
/// same storage (nothing in memory) must read every acknowledged, undeleted ticket back
/// identical (I1) and answer NOT_FOUND for deleted ones (I4); every live record must be one
/// of the uploaded tables, each upload committed at most once (I2, I3).
pub async fn check(
    pool_url: &str,
    tweak: impl Fn(&mut Config),
    acked: &HashMap<String, RecordBatch>,
    deleted: &[String],
    unacked: &[RecordBatch],
) {
    let mut config = Config::for_tests(pool_url);
    tweak(&mut config);
    let fresh = start(config).await.unwrap();
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
    // Every live record: readable, one of the tables sent, no upload committed twice.
    let storage = Storage::open(&fresh_storage(pool_url)).unwrap();
    let versions = Versions::new(storage);
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

fn fresh_storage(url: &str) -> flight_node::storage::StorageConfig {
    flight_node::storage::StorageConfig {
        url: url.to_string(),
        ..Default::default()
    }
}

/// (I4) Upload through A, read through B (B now holds the manifest and the table), delete
/// through A: B neither serves the version from memory nor brings it back with a renew.
#[tokio::test]
async fn a_version_deleted_through_one_node_is_gone_on_every_node() {
    let pool = Pool::file(2, |_| {}).await;
    let (mut a, mut b) = (pool.client(0).await, pool.client(1).await);
    let table = batch(0, 500);
    let put1 = put(&mut a, descriptor("ns", "ds"), vec![table.clone()])
        .await
        .unwrap();
    let t = ticket(&put1);
    assert_eq!(concat(&get(&mut b, &t).await.unwrap()), table);

    action(
        &mut a,
        "delete",
        serde_json::json!({"namespace": "ns", "name": "ds", "version": 1}),
    )
    .await
    .unwrap();
    let err = action(
        &mut b,
        "renew",
        serde_json::json!({"ticket": t, "ttl": "1h"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains("deleted"), "{err}");
    let err = get(&mut b, &t).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "B served a deleted version: {err}"
    );
    let err = b
        .get_flight_info(descriptor("ns", "ds"))
        .await
        .map_err(status)
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    check(&pool.url, |_| {}, &HashMap::new(), &[t], &[]).await;
    pool.stop().await;
}

/// A renew through another node is seen at once, and a renew never outlives a delete.
#[tokio::test]
async fn renew_through_another_node_is_seen_and_cannot_race_a_delete() {
    let pool = Pool::file(2, |_| {}).await;
    let (mut a, mut b) = (pool.client(0).await, pool.client(1).await);
    let table = batch(0, 100);
    let put1 = put(&mut a, descriptor("ns", "ds"), vec![table.clone()])
        .await
        .unwrap();
    let t = ticket(&put1);
    get(&mut a, &t).await.unwrap();
    let renewed = action(
        &mut b,
        "renew",
        serde_json::json!({"ticket": t, "ttl": "3h"}),
    )
    .await
    .unwrap();
    let info = a.get_flight_info(descriptor("ns", "ds")).await.unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&info.app_metadata).unwrap();
    assert_eq!(meta["expiresAt"], renewed["expiresAt"]);

    // Renews and a delete race; whatever the order, the version ends deleted.
    let mut renews = Vec::new();
    for _ in 0..8 {
        let mut b = pool.client(1).await;
        let t = t.clone();
        renews.push(tokio::spawn(async move {
            action(
                &mut b,
                "renew",
                serde_json::json!({"ticket": t, "ttl": "2h"}),
            )
            .await
        }));
    }
    action(
        &mut a,
        "delete",
        serde_json::json!({"namespace": "ns", "name": "ds"}),
    )
    .await
    .unwrap();
    for r in renews {
        if let Err(e) = r.await.unwrap() {
            assert!(
                matches!(e.code(), Code::NotFound | Code::Aborted),
                "renew racing a delete: {e}"
            );
        }
    }
    check(&pool.url, |_| {}, &HashMap::new(), &[t], &[]).await;
    pool.stop().await;
}

/// (I2) Deleting the newest version does not free its number: the next upload gets a new
/// one, and a node that still holds the deleted version answers NOT_FOUND, never the new
/// table under the old ticket.
#[tokio::test]
async fn numbers_are_never_reused_after_deletes() {
    let pool = Pool::file(2, |_| {}).await;
    let (mut a, mut b) = (pool.client(0).await, pool.client(1).await);
    let mut acked = HashMap::new();
    for k in 0..2 {
        let table = batch(k * 1000, 100);
        let p = put(&mut a, descriptor("ns", "ds"), vec![table.clone()])
            .await
            .unwrap();
        acked.insert(ticket(&p), table);
    }
    // B holds version 2 in memory.
    get(&mut b, "ads1:ns/ds@2").await.unwrap();
    action(
        &mut a,
        "delete",
        serde_json::json!({"namespace": "ns", "name": "ds", "version": 2}),
    )
    .await
    .unwrap();
    let table = batch(5000, 100);
    let p = put(&mut a, descriptor("ns", "ds"), vec![table.clone()])
        .await
        .unwrap();
    assert_eq!(p["version"], 3, "version 2's number was reused");
    acked.insert(ticket(&p), table.clone());
    assert_eq!(
        get(&mut b, "ads1:ns/ds@2").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(concat(&get(&mut b, "ads1:ns/ds@3").await.unwrap()), table);

    // The whole dataset deleted, then uploaded again: numbers go on.
    action(
        &mut b,
        "delete",
        serde_json::json!({"namespace": "ns", "name": "ds"}),
    )
    .await
    .unwrap();
    let table = batch(9000, 10);
    let p = put(&mut b, descriptor("ns", "ds"), vec![table.clone()])
        .await
        .unwrap();
    assert_eq!(p["version"], 4);
    acked.insert(ticket(&p), table);
    let deleted: Vec<String> = (1..=3).map(|v| format!("ads1:ns/ds@{v}")).collect();
    check(&pool.url, |_| {}, &acked, &deleted, &[]).await;
    pool.stop().await;
}

/// (I1, I3) The orphan sweep of another node runs, again and again, while a slow upload is
/// in flight for longer than the grace period: the upload's parts survive and it reads back.
#[tokio::test]
async fn the_sweep_spares_uploads_in_flight() {
    let grace = Duration::from_millis(400);
    let tweak = move |c: &mut Config| {
        c.orphan_grace = grace;
        c.part_size = 4 * 1024;
    };
    let pool = Pool::file(1, tweak).await;
    let mut a = pool.client(0).await;
    let batches: Vec<RecordBatch> = (0..12).map(|k| batch(k * 200, 200)).collect();
    let table = concat(&batches);
    let versions = pool.versions();
    let sweeping = tokio::spawn(async move {
        let mut removed = 0;
        for _ in 0..40 {
            removed += versions.sweep(grace, chrono::Utc::now()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        removed
    });
    // ~2.4 s of upload, six times the grace period; parts are written from the start.
    let p = slow_put(&mut a, "ns", "slow", batches, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(
        sweeping.await.unwrap(),
        0,
        "the sweep removed objects of a live upload"
    );
    let acked = HashMap::from([(ticket(&p), table)]);
    check(&pool.url, tweak, &acked, &[], &[]).await;
    pool.stop().await;
}

/// (I1, I3) A dataset deleted while an upload to it is in flight: the delete covers the
/// versions committed when it ran; the upload commits afterwards as a new version, intact.
#[tokio::test]
async fn a_dataset_delete_spares_an_upload_in_flight() {
    let tweak = |c: &mut Config| c.part_size = 4 * 1024;
    let pool = Pool::file(2, tweak).await;
    let (mut a, mut b) = (pool.client(0).await, pool.client(1).await);
    let first = put(&mut a, descriptor("ns", "ds"), vec![batch(0, 10)])
        .await
        .unwrap();
    let batches: Vec<RecordBatch> = (0..8).map(|k| batch(k * 200, 200)).collect();
    let table = concat(&batches);
    let upload = tokio::spawn(async move {
        slow_put(&mut a, "ns", "ds", batches, Duration::from_millis(100)).await
    });
    tokio::time::sleep(Duration::from_millis(450)).await;
    let d = action(
        &mut b,
        "delete",
        serde_json::json!({"namespace": "ns", "name": "ds"}),
    )
    .await
    .unwrap();
    assert_eq!(d["deleted"], serde_json::json!([1]));
    let p = upload.await.unwrap().unwrap();
    assert_eq!(p["version"], 2);
    let acked = HashMap::from([(ticket(&p), table)]);
    check(&pool.url, tweak, &acked, &[ticket(&first)], &[]).await;
    pool.stop().await;
}

/// (I1) A client that gives up while its upload is being committed: whatever it was told,
/// the version is either committed whole or not at all, never a record without parts.
#[tokio::test]
async fn a_client_that_gives_up_during_the_commit_leaves_storage_consistent() {
    let tweak = |c: &mut Config| c.part_size = 16 * 1024;
    let pool = Pool::file(1, tweak).await;
    let mut acked = HashMap::new();
    let mut sent = Vec::new();
    // Deadlines from very short to long enough: some expire during the parts, some during
    // the commit, some not at all.
    for k in 0..30u64 {
        let mut c = pool.client(0).await;
        let table = batch(k as i64 * 10_000, 3000);
        sent.push(table.clone());
        let deadline = Duration::from_micros(500 + k * 700);
        let call = put(&mut c, descriptor("ns", "deadline"), vec![table.clone()]);
        if let Ok(Ok(p)) = tokio::time::timeout(deadline, call).await {
            acked.insert(ticket(&p), table);
        }
    }
    // Let commits that outlived their callers finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unacked: Vec<RecordBatch> = sent
        .into_iter()
        .filter(|t| !acked.values().any(|a| a == t))
        .collect();
    assert!(
        !acked.is_empty() && !unacked.is_empty(),
        "no deadline hit the upload"
    );
    check(&pool.url, tweak, &acked, &[], &unacked).await;
    pool.stop().await;
}
