//! The version invariants on a real MinIO server, with faults injected between the node and
//! storage by a TCP proxy: answers delayed past the client's deadline, answers lost after
//! the write took effect, requests refused before they reach the server, and two nodes
//! racing uploads to one dataset. Each test ends with the checker of `common::check`, run
//! from a fresh node that reaches MinIO directly.
//!
//! Faults are chosen from a seed printed at the start (`FAULT_SEED=N` replays a run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use common::check::{action, ticket, Pool};
use common::proxy::{Fault, FaultProxy, RequestHead, Seed};
use common::*;
use flight_node::Config;
use tonic::Code;

/// A node configuration for `target`, reaching it through `endpoint`.
fn config(target: &MinioTarget, endpoint: &str) -> Config {
    let s = target.storage_config_via(endpoint);
    let mut c = Config::for_tests(&s.url);
    c.storage_endpoint = s.endpoint;
    c.storage_region = s.region;
    c.storage_access_key_id = s.access_key_id;
    c.storage_secret_access_key = s.secret_access_key;
    c.allow_http = true;
    c.part_size = 16 * 1024;
    c
}

fn manifest_put(r: &RequestHead) -> bool {
    r.method == "PUT" && r.path.ends_with(".manifest.json")
}

/// (I2) The manifest write lands but its answer is lost (the connection resets after
/// MinIO answered). The node must recognise its own record when it tries again, not commit
/// the same upload a second time as the next version.
#[tokio::test]
async fn a_lost_commit_answer_commits_the_upload_once() {
    let target = minio();
    let proxy = FaultProxy::start(target.host_port()).await;
    let pool = Pool::start(config(&target, &proxy.endpoint()), 1, None).await;
    let mut c = pool.client(0).await;
    proxy.arm(manifest_put, 0, Fault::ResetAfterResponse);
    let table = batch(0, 2000);
    let p = put(&mut c, descriptor("ns", "lost"), vec![table.clone()])
        .await
        .unwrap();
    assert_eq!(proxy.fired(), 1);
    assert_eq!(p["version"], 1);
    let next = batch(10_000, 10);
    let p2 = put(&mut c, descriptor("ns", "lost"), vec![next.clone()])
        .await
        .unwrap();
    assert_eq!(p2["version"], 2, "the upload was committed twice");
    let id = flight_node::name::DatasetId::new("ns", "lost").unwrap();
    assert_eq!(pool.versions().numbers(&id).await.unwrap(), vec![1, 2]);
    let acked = HashMap::from([(ticket(&p), table), (ticket(&p2), next)]);
    let direct = config(&target, &target.endpoint);
    common::check::check(&direct, &acked, &[], &[]).await;
    pool.stop().await;
}

/// (I1) The client's deadline expires while the manifest write is in flight (slow
/// storage). The commit goes on without the caller; the version it leaves is whole.
#[tokio::test]
async fn a_deadline_during_the_commit_leaves_a_whole_version() {
    let target = minio();
    let proxy = FaultProxy::start(target.host_port()).await;
    let pool = Pool::start(config(&target, &proxy.endpoint()), 1, None).await;
    let mut c = pool.client(0).await;
    proxy.arm(
        manifest_put,
        0,
        Fault::DelayResponse(Duration::from_millis(1500)),
    );
    let table = batch(0, 4000);
    let call = put(&mut c, descriptor("ns", "deadline"), vec![table.clone()]);
    let gave_up = tokio::time::timeout(Duration::from_millis(700), call).await;
    assert!(gave_up.is_err(), "the upload answered before its deadline");
    // The manifest write was reached before the deadline, and lands after it.
    assert_eq!(proxy.fired(), 1);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let direct = config(&target, &target.endpoint);
    // The client never learnt the outcome: the version may exist, and then it is whole.
    common::check::check(&direct, &HashMap::new(), &[], std::slice::from_ref(&table)).await;
    let id = flight_node::name::DatasetId::new("ns", "deadline").unwrap();
    let live = pool.versions().live(&id).await.unwrap();
    assert_eq!(
        live.len(),
        1,
        "the commit did not finish without its caller"
    );
    pool.stop().await;
}

/// (I2) Two nodes race uploads to one dataset on MinIO: every acknowledged upload gets
/// its own version and reads back its own table.
#[tokio::test]
async fn two_nodes_racing_uploads_get_distinct_versions() {
    let target = minio();
    let pool = Pool::start(config(&target, &target.endpoint), 2, None).await;
    let mut handles = Vec::new();
    for k in 0..16i64 {
        let mut c = pool.client((k % 2) as usize).await;
        handles.push(tokio::spawn(async move {
            let table = batch(k * 1000, 300);
            let p = put(&mut c, descriptor("ns", "race"), vec![table.clone()])
                .await
                .unwrap();
            (ticket(&p), p["version"].as_u64().unwrap(), table)
        }));
    }
    let mut acked = HashMap::new();
    let mut numbers = Vec::new();
    for h in handles {
        let (t, v, table) = h.await.unwrap();
        numbers.push(v);
        acked.insert(t, table);
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=16).collect::<Vec<_>>());
    pool.check(&acked, &[], &[]).await;
    pool.stop().await;
}

/// (I4) On MinIO: a renew through a node that read the version before another node deleted
/// it fails (If-Match on the record) and does not bring the version back.
#[tokio::test]
async fn renew_after_a_delete_through_another_node_fails_on_minio() {
    let target = minio();
    let pool = Pool::start(config(&target, &target.endpoint), 2, None).await;
    let (mut a, mut b) = (pool.client(0).await, pool.client(1).await);
    let table = batch(0, 100);
    let p = put(&mut a, descriptor("ns", "ds"), vec![table.clone()])
        .await
        .unwrap();
    let t = ticket(&p);
    get(&mut b, &t).await.unwrap();
    action(
        &mut b,
        "renew",
        serde_json::json!({"ticket": t, "ttl": "2h"}),
    )
    .await
    .unwrap();
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
    assert_eq!(get(&mut b, &t).await.unwrap_err().code(), Code::NotFound);
    let p2 = put(&mut b, descriptor("ns", "ds"), vec![batch(7, 7)])
        .await
        .unwrap();
    assert_eq!(p2["version"], 2, "a deleted number was reused");
    let acked = HashMap::from([(ticket(&p2), batch(7, 7))]);
    pool.check(&acked, &[t], &[]).await;
    pool.stop().await;
}

/// A seeded run of uploads, each with one fault on one of its storage requests (a part or
/// manifest write, a listing or a read; delayed, answered-then-reset, or reset before it
/// reaches MinIO). Whatever each client was told, every acknowledged ticket reads back, and
/// every version in storage is whole and one of the tables sent.
#[tokio::test]
async fn seeded_storage_faults_never_break_an_acknowledged_ticket() {
    let mut seed = Seed::from_env_or_random("FAULT_SEED");
    let target = minio();
    let proxy = FaultProxy::start(target.host_port()).await;
    let pool = Pool::start(config(&target, &proxy.endpoint()), 1, None).await;
    type Matcher = fn(&RequestHead) -> bool;
    let kinds: [(&str, Matcher); 4] = [
        ("manifest write", manifest_put),
        ("part write", |r| {
            r.method == "PUT" && r.path.ends_with(".parquet")
        }),
        ("listing", |r| {
            r.method == "GET" && r.query.contains("list-type")
        }),
        ("record read", |r| {
            (r.method == "GET" || r.method == "HEAD") && r.path.ends_with(".manifest.json")
        }),
    ];
    let faults = [
        Fault::ResetAfterResponse,
        Fault::ResetBeforeRequest,
        Fault::DelayResponse(Duration::from_millis(300)),
    ];
    let mut acked = HashMap::new();
    let mut unacked: Vec<RecordBatch> = Vec::new();
    let mut outcomes = Vec::new();
    for k in 0..24i64 {
        let (kind, matcher) = *seed.choose(&kinds);
        let fault = seed.choose(&faults).clone();
        let nth = seed.pick(0..2);
        proxy.arm(matcher, nth, fault.clone());
        let mut c = pool.client(0).await;
        let table = batch(k * 100_000, 6000);
        let deadline = Duration::from_millis(200 + seed.pick(0..1500) as u64);
        let call = put(&mut c, descriptor("ns", "faults"), vec![table.clone()]);
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(p)) => {
                outcomes.push(format!("{k}: {kind} {fault:?} #{nth}: v{}", p["version"]));
                acked.insert(ticket(&p), table);
            }
            Ok(Err(e)) => {
                outcomes.push(format!("{k}: {kind} {fault:?} #{nth}: {:?}", e.code()));
                unacked.push(table);
            }
            Err(_) => {
                outcomes.push(format!("{k}: {kind} {fault:?} #{nth}: deadline"));
                unacked.push(table);
            }
        }
        // Disarm a fault that did not fire, so it cannot hit the next upload's first request.
        proxy.disarm_all();
    }
    // Commits that outlived their callers settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("seed {}: {outcomes:#?}", seed.value());
    assert!(!acked.is_empty(), "no upload was acknowledged");
    let direct = config(&target, &target.endpoint);
    common::check::check(&direct, &acked, &[], &unacked).await;
    pool.stop().await;
}
