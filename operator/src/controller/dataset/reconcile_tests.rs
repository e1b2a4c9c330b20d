//! Reconcile tests of the ArrowDataset controller against a mocked API server and a real
//! `file://` store in a temporary directory.

use std::sync::Arc;
use std::time::Duration;

use flight_core::name::DatasetId;
use flight_core::storage::{Storage, StorageConfig};
use http::Method;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use serde_json::{json, Value};

use super::{reconcile, FINALIZER, SKIP_CLEANUP_ANNOTATION};
use crate::controller::Error;
use crate::crd::{ArrowDataset, ArrowDatasetStatus, FlightPool};
use crate::fixtures::{
    commit, context, events_path, not_found, path, t, ApiServerVerifier, FakeNodes,
};
use crate::ttl::format_instant;

const GV: &str = "arrow.trinity.io/v1alpha1";
const HOUR: Duration = Duration::from_secs(3600);

struct Env {
    _dir: tempfile::TempDir,
    url: String,
    storage: Storage,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", dir.path().display());
    let storage = Storage::open(&StorageConfig {
        url: url.clone(),
        ..StorageConfig::default()
    })
    .expect("file store");
    Env {
        _dir: dir,
        url,
        storage,
    }
}

fn pool(url: &str) -> FlightPool {
    serde_json::from_value(json!({
        "apiVersion": GV, "kind": "FlightPool",
        "metadata": { "name": "analytics", "namespace": "data", "uid": "pool-uid", "generation": 1 },
        "spec": {
            "storage": { "url": url },
            "defaultTtl": "24h",
            "contracts": { "sales": { "fields": [ { "name": "id", "type": "int64" } ] } }
        }
    }))
    .expect("pool json")
}

fn dataset(spec: Value, created: i64, finalizer: bool) -> ArrowDataset {
    let mut ds: ArrowDataset = serde_json::from_value(json!({
        "apiVersion": GV, "kind": "ArrowDataset",
        "metadata": {
            "name": "sales", "namespace": "data", "uid": "ds-uid", "generation": 2,
            "creationTimestamp": format_instant(t(created)),
        },
        "spec": spec,
    }))
    .expect("dataset json");
    if finalizer {
        ds.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    }
    ds
}

fn id() -> DatasetId {
    DatasetId::new("data", "sales").expect("valid id")
}

fn condition(status: &Value, type_: &str) -> Value {
    status["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

async fn expect_pool_get(api: &mut ApiServerVerifier, pool: Option<&FlightPool>) {
    let call = api
        .expect(Method::GET, &path(GV, "data", "flightpools", "analytics"))
        .await;
    match pool {
        Some(p) => call.respond(200, &serde_json::to_value(p).expect("json")),
        None => call.respond(404, &not_found("flightpools analytics")),
    }
}

async fn expect_status(api: &mut ApiServerVerifier, ds: &ArrowDataset) -> Value {
    api.expect(
        Method::PATCH,
        &path(GV, "data", "arrowdatasets", "sales/status"),
    )
    .await
    .status_of(ds)
}

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_only() {
    let (ctx, mut api, _w) = context(t(10), Arc::new(FakeNodes::default()));
    let ds = dataset(json!({ "pool": "analytics" }), 0, false);
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    let call = api
        .expect(Method::PATCH, &path(GV, "data", "arrowdatasets", "sales"))
        .await;
    assert!(call.body.to_string().contains(FINALIZER), "{}", call.body);
    call.respond(200, &serde_json::to_value(&ds).expect("json"));
    assert_eq!(
        run.await.expect("task").expect("reconcile"),
        Action::await_change()
    );
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn uploaded_dataset_becomes_ready_with_ticket_and_expiry() {
    let env = env();
    commit(&env.storage, "data", "sales", t(1_000), Some(6 * HOUR), 42).await;
    let (ctx, mut api, _w) = context(t(2_000), Arc::new(FakeNodes::default()));
    let ds = dataset(json!({ "pool": "analytics" }), 500, true);
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    let s = expect_status(&mut api, &ds).await;
    assert_eq!(s["apiVersion"], GV);
    assert_eq!(s["status"]["phase"], "Ready");
    assert_eq!(s["status"]["version"], 1);
    assert_eq!(s["status"]["ticket"], "ads1:data/sales@1");
    assert_eq!(s["status"]["rows"], 42);
    assert_eq!(s["status"]["bytes"], 4200);
    assert_eq!(s["status"]["storedBytes"], 420);
    assert_eq!(s["status"]["size"], "4.1 KiB");
    assert_eq!(s["status"]["tier"], "Storage");
    assert_eq!(s["status"]["endpoint"], "grpc://analytics.data.svc:8815");
    assert_eq!(
        s["status"]["expiresAt"],
        format_instant(t(1_000 + 6 * 3600))
    );
    assert_eq!(s["status"]["observedGeneration"], 2);
    assert_eq!(condition(&s, "Ready")["status"], "True");
    assert_eq!(condition(&s, "Ready")["observedGeneration"], 2);
    // Expiry is hours away: sleep the longest allowed interval.
    assert_eq!(
        run.await.expect("task").expect("reconcile"),
        Action::requeue(crate::ttl::MAX_REQUEUE)
    );
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn requeue_targets_the_next_expiry_instant() {
    let env = env();
    commit(&env.storage, "data", "sales", t(1_000), Some(HOUR), 1).await;
    let (ctx, mut api, _w) = context(t(4_000), Arc::new(FakeNodes::default()));
    let ds = dataset(json!({ "pool": "analytics" }), 500, true);
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    expect_status(&mut api, &ds).await;
    // Expires at 4600: wake 600 s + 1 s slack later.
    assert_eq!(
        run.await.expect("task").expect("reconcile"),
        Action::requeue(Duration::from_secs(601))
    );
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn unknown_contract_is_a_condition_and_an_event() {
    let env = env();
    let (ctx, mut api, _w) = context(t(10), Arc::new(FakeNodes::default()));
    let ds = dataset(
        json!({ "pool": "analytics", "contract": "orders" }),
        0,
        true,
    );
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    let event = api.expect(Method::POST, &events_path("data")).await.echo();
    assert_eq!(event["reason"], "ContractNotFound");
    assert_eq!(event["type"], "Warning");
    let s = expect_status(&mut api, &ds).await;
    assert_eq!(s["status"]["phase"], "Failed");
    let valid = condition(&s, "Valid");
    assert_eq!(valid["status"], "False");
    assert_eq!(valid["reason"], "ContractNotFound");
    assert!(s["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("orders"));
    assert_eq!(
        run.await.expect("task").expect("reconcile"),
        Action::requeue(ctx.config.retry_after)
    );
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn source_of_unknown_format_is_refused_without_touching_storage() {
    let (ctx, mut api, _w) = context(t(10), Arc::new(FakeNodes::default()));
    let ds = dataset(
        json!({ "pool": "analytics", "source": { "url": "raw/sales.bin" } }),
        0,
        true,
    );
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    let event = api.expect(Method::POST, &events_path("data")).await.echo();
    assert_eq!(event["reason"], "InvalidSource");
    let s = expect_status(&mut api, &ds).await;
    assert_eq!(s["status"]["phase"], "Failed");
    assert_eq!(condition(&s, "Valid")["reason"], "InvalidSource");
    assert_eq!(
        run.await.expect("task").expect("reconcile"),
        Action::await_change()
    );
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn missing_pool_leaves_the_dataset_pending() {
    let (ctx, mut api, _w) = context(t(10), Arc::new(FakeNodes::default()));
    let ds = dataset(json!({ "pool": "analytics" }), 0, true);
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, None).await;
    api.expect(Method::POST, &events_path("data")).await.echo();
    let s = expect_status(&mut api, &ds).await;
    assert_eq!(s["status"]["phase"], "Pending");
    assert_eq!(condition(&s, "Valid")["reason"], "PoolNotFound");
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn expired_newest_version_deletes_the_resource_at_the_boundary() {
    let env = env();
    commit(&env.storage, "data", "sales", t(0), Some(HOUR), 1).await;
    let (ctx, mut api, _w) = context(t(3_600), Arc::new(FakeNodes::default()));
    let ds = dataset(json!({ "pool": "analytics" }), 0, true);
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    let s = expect_status(&mut api, &ds).await;
    assert_eq!(s["status"]["phase"], "Expired");
    assert_eq!(s["status"]["expiresAt"], format_instant(t(3_600)));
    let event = api.expect(Method::POST, &events_path("data")).await.echo();
    assert_eq!(event["reason"], "Expired");
    api.expect(Method::DELETE, &path(GV, "data", "arrowdatasets", "sales"))
        .await
        .respond(200, &serde_json::to_value(&ds).expect("json"));
    assert_eq!(
        run.await.expect("task").expect("reconcile"),
        Action::await_change()
    );
    // The objects stay until the finalizer runs.
    assert_eq!(live_versions(&env.storage).await, vec![1]);
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn one_second_before_expiry_nothing_is_deleted() {
    let env = env();
    commit(&env.storage, "data", "sales", t(0), Some(HOUR), 1).await;
    let (ctx, mut api, _w) = context(t(3_599), Arc::new(FakeNodes::default()));
    let ds = dataset(json!({ "pool": "analytics" }), 0, true);
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    let s = expect_status(&mut api, &ds).await;
    assert_eq!(s["status"]["phase"], "Ready");
    assert_eq!(
        run.await.expect("task").expect("reconcile"),
        Action::requeue(Duration::from_secs(2))
    );
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn empty_resource_expires_at_creation_plus_ttl() {
    let env = env();
    let (ctx, mut api, _w) = context(t(1_800), Arc::new(FakeNodes::default()));
    let ds = dataset(json!({ "pool": "analytics", "ttl": "30m" }), 0, true);
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    let s = expect_status(&mut api, &ds).await;
    assert_eq!(s["status"]["phase"], "Expired");
    api.expect(Method::POST, &events_path("data")).await.echo();
    api.expect(Method::DELETE, &path(GV, "data", "arrowdatasets", "sales"))
        .await
        .respond(200, &serde_json::to_value(&ds).expect("json"));
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn expired_older_versions_are_removed_from_storage() {
    let env = env();
    commit(&env.storage, "data", "sales", t(0), Some(HOUR), 1).await;
    commit(&env.storage, "data", "sales", t(3_000), Some(6 * HOUR), 2).await;
    let (ctx, mut api, _w) = context(t(4_000), Arc::new(FakeNodes::default()));
    let ds = dataset(json!({ "pool": "analytics" }), 0, true);
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    let s = expect_status(&mut api, &ds).await;
    assert_eq!(s["status"]["version"], 2);
    assert_eq!(s["status"]["versions"], 1);
    run.await.expect("task").expect("reconcile");
    assert_eq!(live_versions(&env.storage).await, vec![2]);
    assert!(ctx
        .metrics
        .encode()
        .expect("metrics")
        .contains("flight_operator_gc_deletions_total{what=\"version\"} 1"));
    drop(ctx);
    api.done().await;
}

fn deleting(mut ds: ArrowDataset) -> ArrowDataset {
    ds.metadata.deletion_timestamp = Some(crate::controller::k8s_time(t(5)));
    ds
}

fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                files_under(&p)
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test]
async fn finalizer_removes_the_objects_from_a_file_store() {
    let env = env();
    commit(&env.storage, "data", "sales", t(0), Some(HOUR), 1).await;
    commit(&env.storage, "data", "sales", t(10), Some(HOUR), 2).await;
    commit(&env.storage, "data", "other", t(10), Some(HOUR), 2).await;
    let root = env._dir.path().to_path_buf();
    assert_eq!(files_under(&root.join("data/sales")), 4);
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut api, _w) = context(t(20), Arc::clone(&nodes));
    let ds = deleting(dataset(json!({ "pool": "analytics" }), 0, true));
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    let event = api.expect(Method::POST, &events_path("data")).await.echo();
    assert_eq!(event["reason"], "Deleted");
    let call = api
        .expect(Method::PATCH, &path(GV, "data", "arrowdatasets", "sales"))
        .await;
    assert!(call.body.to_string().contains("remove"), "{}", call.body);
    call.respond(200, &serde_json::to_value(&ds).expect("json"));
    run.await.expect("task").expect("reconcile");
    // Only the two tombstones are left: they keep the numbers from being reused.
    assert_eq!(files_under(&root.join("data/sales")), 2);
    assert!(live_versions(&env.storage).await.is_empty());
    assert_eq!(
        files_under(&root.join("data/other")),
        2,
        "other datasets stay"
    );
    // Caches are evicted best effort even though the node is down.
    assert_eq!(
        nodes.calls(),
        vec![(
            "evict".to_owned(),
            "grpc://analytics-0.analytics-headless.data.svc:8815".to_owned()
        )]
    );
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn cleanup_without_a_pool_is_blocked_with_a_way_out() {
    let (ctx, mut api, _w) = context(t(20), Arc::new(FakeNodes::default()));
    let ds = deleting(dataset(json!({ "pool": "analytics" }), 0, true));
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, None).await;
    let event = api.expect(Method::POST, &events_path("data")).await.echo();
    assert_eq!(event["reason"], "CleanupBlocked");
    let s = expect_status(&mut api, &ds).await;
    let blocked = condition(&s, "CleanupBlocked");
    assert_eq!(blocked["status"], "True");
    assert!(blocked["message"]
        .as_str()
        .unwrap_or_default()
        .contains(SKIP_CLEANUP_ANNOTATION));
    let err = run.await.expect("task").expect_err("blocked");
    assert!(
        matches!(&err, Error::Finalizer(inner) if inner.to_string().contains("does not exist")),
        "{err}"
    );
    drop(ctx);
    api.done().await;

    // The way out: the annotation lets the resource go without touching storage.
    let mut ds = ds;
    ds.metadata.annotations =
        Some([(SKIP_CLEANUP_ANNOTATION.to_owned(), "true".to_owned())].into());
    let (ctx, mut api, _w) = context(t(30), Arc::new(FakeNodes::default()));
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    let event = api.expect(Method::POST, &events_path("data")).await.echo();
    assert_eq!(event["reason"], "CleanupSkipped");
    api.expect(Method::PATCH, &path(GV, "data", "arrowdatasets", "sales"))
        .await
        .respond(200, &serde_json::to_value(&ds).expect("json"));
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn declarative_source_is_loaded_once_on_the_owner_node() {
    let env = env();
    let nodes = Arc::new(FakeNodes::default());
    *nodes.storage.lock().expect("lock") = Some((env.storage.clone(), t(1_000)));
    let (ctx, mut api, _w) = context(t(1_000), Arc::clone(&nodes));
    let ds = dataset(
        json!({ "pool": "analytics", "source": { "url": "raw/sales.csv" }, "ttl": "6h" }),
        900,
        true,
    );
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    let loading = expect_status(&mut api, &ds).await;
    assert_eq!(loading["status"]["phase"], "Loading");
    let event = api.expect(Method::POST, &events_path("data")).await.echo();
    assert_eq!(event["reason"], "Loaded");
    let s = expect_status(&mut api, &ds).await;
    assert_eq!(s["status"]["phase"], "Ready");
    assert_eq!(s["status"]["version"], 1);
    assert_eq!(s["status"]["rows"], 42);
    assert_eq!(
        s["status"]["expiresAt"],
        format_instant(t(1_000 + 6 * 3600))
    );
    assert!(s["status"]["loadedSource"]
        .as_str()
        .unwrap_or_default()
        .starts_with("raw/sales.csv format=csv"));
    assert_eq!(condition(&s, "Loaded")["status"], "True");
    run.await.expect("task").expect("reconcile");
    assert_eq!(
        nodes.calls(),
        vec![(
            "load".to_owned(),
            "grpc://analytics-0.analytics-headless.data.svc:8815".to_owned()
        )]
    );
    drop(ctx);
    api.done().await;

    // Reconciling again (same spec, the status just written) loads nothing and writes nothing.
    let mut ds = ds;
    ds.status =
        Some(serde_json::from_value::<ArrowDatasetStatus>(s["status"].clone()).expect("status"));
    let (ctx, mut api, _w) = context(t(1_500), Arc::clone(&nodes));
    let run = tokio::spawn(reconcile(Arc::new(ds), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    run.await.expect("task").expect("reconcile");
    assert_eq!(nodes.calls().len(), 1, "no second load");
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn failed_load_is_a_condition_and_still_expires_on_time() {
    let env = env();
    let nodes = Arc::new(FakeNodes::default());
    *nodes.load_error.lock().expect("lock") = Some(crate::controller::node::NodeError {
        action: "load",
        uri: "grpc://x".into(),
        message: "source raw/sales.csv not found".into(),
        permanent: true,
    });
    let (ctx, mut api, _w) = context(t(1_000), Arc::clone(&nodes));
    let ds = dataset(
        json!({ "pool": "analytics", "source": { "url": "raw/sales.csv" }, "ttl": "1h" }),
        0,
        true,
    );
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    expect_status(&mut api, &ds).await; // Loading
    let event = api.expect(Method::POST, &events_path("data")).await.echo();
    assert_eq!(event["reason"], "LoadFailed");
    let s = expect_status(&mut api, &ds).await;
    assert_eq!(s["status"]["phase"], "Failed");
    assert_eq!(condition(&s, "Loaded")["reason"], "LoadFailed");
    // Permanent failure: no retry loop, but wake at the resource's expiry (3600 + 1 s slack).
    assert_eq!(
        run.await.expect("task").expect("reconcile"),
        Action::requeue(Duration::from_secs(2_601))
    );
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn discovery_creates_resources_for_uploads_once() {
    let env = env();
    commit(&env.storage, "data", "orders", t(0), Some(6 * HOUR), 5).await;
    let (ctx, mut api, mut writer) = context(t(10), Arc::new(FakeNodes::default()));
    let p = pool(&env.url);
    let found = {
        let ctx = Arc::clone(&ctx);
        let p = p.clone();
        tokio::spawn(async move { crate::discovery::discover_pool(&ctx, &p).await })
    };
    let created = api
        .expect(
            Method::POST,
            "/apis/arrow.trinity.io/v1alpha1/namespaces/data/arrowdatasets",
        )
        .await
        .echo();
    assert_eq!(created["metadata"]["name"], "orders");
    assert_eq!(created["spec"]["pool"], "analytics");
    assert_eq!(created["spec"]["ttl"], "6h");
    assert_eq!(
        created["metadata"]["labels"][super::DISCOVERED_LABEL],
        "true"
    );
    assert_eq!(found.await.expect("task").expect("discovery"), 1);

    // Once the resource is in the cache, discovery leaves it alone.
    let ds: ArrowDataset = serde_json::from_value(created).expect("dataset");
    writer.apply_watcher_event(&watcher::Event::Apply(ds));
    assert_eq!(
        crate::discovery::discover_pool(&ctx, &p)
            .await
            .expect("discovery"),
        0
    );
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn preload_asks_the_owner_node_and_reports_the_memory_tier() {
    let env = env();
    commit(&env.storage, "data", "sales", t(1_000), Some(6 * HOUR), 42).await;
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut api, _w) = context(t(2_000), Arc::clone(&nodes));
    let ds = dataset(json!({ "pool": "analytics", "preload": true }), 500, true);
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    let s = expect_status(&mut api, &ds).await;
    assert_eq!(s["status"]["phase"], "Ready");
    assert_eq!(s["status"]["tier"], "Memory");
    assert_eq!(s["status"]["hot"], "3/3");
    assert_eq!(condition(&s, "Preloaded")["status"], "True");
    run.await.expect("task").expect("reconcile");
    let calls = nodes.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].0, "preload");
    assert!(calls[0].1.starts_with("grpc://analytics-"), "{calls:?}");
    drop(ctx);
    api.done().await;
}

/// A version only partly in memory (a part's owner is down) is tier `Storage`, says how
/// much is hot, and names the node that could not load its parts.
#[tokio::test]
async fn preload_of_part_of_a_version_reports_how_much_is_hot() {
    let env = env();
    commit(&env.storage, "data", "sales", t(1_000), Some(6 * HOUR), 42).await;
    let nodes = Arc::new(FakeNodes::default());
    *nodes.preloaded.lock().expect("lock") = Some((8, 5));
    let (ctx, mut api, _w) = context(t(2_000), Arc::clone(&nodes));
    let ds = dataset(json!({ "pool": "analytics", "preload": true }), 500, true);
    let run = tokio::spawn(reconcile(Arc::new(ds.clone()), Arc::clone(&ctx)));
    expect_pool_get(&mut api, Some(&pool(&env.url))).await;
    let s = expect_status(&mut api, &ds).await;
    assert_eq!(s["status"]["phase"], "Ready");
    assert_eq!(s["status"]["tier"], "Storage");
    assert_eq!(s["status"]["hot"], "5/8");
    let c = condition(&s, "Preloaded");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "PartlyPreloaded");
    let message = c["message"].as_str().expect("message");
    assert!(
        message.contains("5 of 8 parts")
            && message.contains("grpc://other:8815: connection refused"),
        "{message}"
    );
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    api.done().await;
}

/// The versions of the test dataset that are live in storage.
async fn live_versions(storage: &Storage) -> Vec<u64> {
    flight_core::versions::Versions::new(storage.clone())
        .live(&id())
        .await
        .expect("versions")
        .iter()
        .map(|m| m.version)
        .collect()
}

#[tokio::test]
async fn a_pool_object_store_is_opened_once_and_reopened_when_its_settings_change() {
    let (ctx, api, _w) = context(t(10), Arc::new(FakeNodes::default()));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let first = ctx.storage_for(&pool(&url)).await.expect("opens");
    let again = ctx.storage_for(&pool(&url)).await.expect("opens");
    assert!(Arc::ptr_eq(&first.object_store(), &again.object_store()));
    // Another URL (any change of settings or credentials) opens a new store.
    let other = tempfile::tempdir().expect("tempdir");
    let moved = pool(&format!("file://{}", other.path().display()));
    let reopened = ctx.storage_for(&moved).await.expect("opens");
    assert!(!Arc::ptr_eq(
        &first.object_store(),
        &reopened.object_store()
    ));
    assert_eq!(reopened.url(), moved.spec.storage.url);
    // No Secret was read: the pool has no credentials.
    drop(ctx);
    api.done().await;
}
