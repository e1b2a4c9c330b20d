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
use common::check::{action, slow_put, ticket, Pool};
use common::*;
use flight_node::Config;
use tonic::Code;

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
    pool.check(&HashMap::new(), &[t], &[]).await;
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
    pool.check(&HashMap::new(), &[t], &[]).await;
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
    pool.check(&acked, &deleted, &[]).await;
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
    pool.check(&acked, &[], &[]).await;
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
    pool.check(&acked, &[ticket(&first)], &[]).await;
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
    pool.check(&acked, &[], &unacked).await;
    pool.stop().await;
}
