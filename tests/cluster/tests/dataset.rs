//! The ArrowDataset controller against the real API server, on a `file://` store seeded by
//! the flight node's own ingest path: status, printer columns through the real kubectl,
//! and TTL expiry through the finalizer.

use std::sync::Arc;
use std::time::Duration;

use cluster_tests::{
    admin_client, control_plane, controller_config, data_left, files_under, kubectl, seed_version,
    seed_version_with, unique_namespace, wait_deleted, wait_for, Operator, TIMEOUT,
};
use flight_operator::controller::node::FlightNodes;
use flight_operator::controller::{dataset, Context};
use flight_operator::crd::{ArrowDataset, DatasetPhase, FlightPool};
use flight_operator::metrics::Metrics;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::reflector;
use kube::{Client, ResourceExt};
use serde_json::json;

const FINALIZER: &str = "arrow.trinity.io/storage-cleanup";

async fn create_pool(client: &Client, ns: &str, name: &str, url: &str) {
    let pool: FlightPool = serde_json::from_value(json!({
        "apiVersion": "arrow.trinity.io/v1alpha1",
        "kind": "FlightPool",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "storage": {"url": url}, "defaultTtl": "6h"},
    }))
    .expect("pool");
    Api::<FlightPool>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool");
}

async fn create_dataset(client: &Client, ns: &str, name: &str, pool: &str, ttl: &str) {
    let ds: ArrowDataset = serde_json::from_value(json!({
        "apiVersion": "arrow.trinity.io/v1alpha1",
        "kind": "ArrowDataset",
        "metadata": {"name": name},
        "spec": {"pool": pool, "ttl": ttl},
    }))
    .expect("dataset");
    Api::<ArrowDataset>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &ds)
        .await
        .expect("create dataset");
}

/// Splits kubectl's table output into rows of (column, value), using the header's column
/// starts (values such as `1.2 KiB` contain spaces).
fn table(text: &str) -> Vec<Vec<(String, String)>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().expect("a header line");
    let mut starts = Vec::new();
    let mut prev_space = true;
    for (i, ch) in header.char_indices() {
        if ch != ' ' && prev_space {
            starts.push(i);
        }
        prev_space = ch == ' ';
    }
    let names: Vec<String> = header.split_whitespace().map(str::to_owned).collect();
    assert_eq!(names.len(), starts.len(), "header {header:?}");
    lines
        .map(|line| {
            starts
                .iter()
                .enumerate()
                .map(|(k, &start)| {
                    let end = starts
                        .get(k + 1)
                        .copied()
                        .unwrap_or(line.len())
                        .min(line.len());
                    let cell = line.get(start.min(line.len())..end).unwrap_or("").trim();
                    (names[k].clone(), cell.to_owned())
                })
                .collect()
        })
        .collect()
}

fn cell<'a>(row: &'a [(String, String)], column: &str) -> &'a str {
    row.iter()
        .find(|(c, _)| c == column)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no column {column} in {row:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_shows_printer_columns_with_values() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "columns").await;
    let store = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", store.path().display());
    let manifest = seed_version(
        &url,
        &ns,
        "sales",
        Some(Duration::from_secs(6 * 3600)),
        1000,
    )
    .await;
    assert_eq!(manifest.version, 1);
    assert_eq!(manifest.rows, 1000);

    create_pool(&client, &ns, "analytics", &url).await;
    create_dataset(&client, &ns, "sales", "analytics", "6h").await;
    let operator = Operator::start(client.clone(), controller_config(&ns));
    let api: Api<ArrowDataset> = Api::namespaced(client.clone(), &ns);
    let ds = wait_for(
        &api,
        "sales",
        "phase Ready",
        TIMEOUT,
        |d: Option<&ArrowDataset>| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.phase == DatasetPhase::Ready)
        },
    )
    .await;
    let status = ds.status.clone().expect("status");
    assert_eq!(status.rows, Some(1000));
    assert_eq!(status.version, Some(1));
    assert_eq!(
        status.ticket.as_deref(),
        Some(format!("ads1:{ns}/sales@1").as_str())
    );
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("grpc://analytics.{ns}.svc:8815").as_str())
    );
    assert!(ds.finalizers().iter().any(|f| f == FINALIZER), "{ds:#?}");
    // The pool counts its dataset.
    let pools: Api<FlightPool> = Api::namespaced(client.clone(), &ns);
    wait_for(
        &pools,
        "analytics",
        "datasets = 1",
        TIMEOUT,
        |p: Option<&FlightPool>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.datasets == 1)
        },
    )
    .await;

    let out = kubectl(&["get", "arrowdatasets", "-n", &ns]);
    cluster_tests::assert_success(&out, "kubectl get arrowdatasets");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows = table(&text);
    assert_eq!(rows.len(), 1, "{text}");
    let row = &rows[0];
    let columns: Vec<&str> = row.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        columns,
        ["NAME", "POOL", "PHASE", "ROWS", "SIZE", "TIER", "HOT", "EXPIRES", "AGE"],
        "{text}"
    );
    assert_eq!(cell(row, "NAME"), "sales");
    assert_eq!(cell(row, "POOL"), "analytics");
    assert_eq!(cell(row, "PHASE"), "Ready");
    assert_eq!(cell(row, "ROWS"), "1000");
    assert!(
        cell(row, "SIZE").ends_with("KiB") || cell(row, "SIZE").ends_with(" B"),
        "{text}"
    );
    assert!(["Memory", "Storage"].contains(&cell(row, "TIER")), "{text}");
    // HOT is filled in by a preload ("cached parts/parts"); nothing was preloaded here.
    assert_eq!(cell(row, "HOT"), "", "{text}");
    let expires = cell(row, "EXPIRES");
    chrono::DateTime::parse_from_rfc3339(expires)
        .unwrap_or_else(|e| panic!("EXPIRES {expires:?} is not RFC 3339 ({e}):\n{text}"));
    assert!(
        !cell(row, "AGE").is_empty() && cell(row, "AGE") != "<unknown>",
        "{text}"
    );

    // -o wide adds the version and the ticket; the short name works.
    let out = kubectl(&["get", "ads", "-o", "wide", "-n", &ns]);
    cluster_tests::assert_success(&out, "kubectl get ads -o wide");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows = table(&text);
    assert_eq!(cell(&rows[0], "VERSION"), "1", "{text}");
    assert_eq!(
        cell(&rows[0], "TICKET"),
        format!("ads1:{ns}/sales@1"),
        "{text}"
    );

    // Same for pools.
    let out = kubectl(&["get", "fpool", "-n", &ns]);
    cluster_tests::assert_success(&out, "kubectl get fpool");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows = table(&text);
    let row = &rows[0];
    assert_eq!(cell(row, "NAME"), "analytics", "{text}");
    assert_eq!(cell(row, "REPLICAS"), "1", "{text}");
    assert_eq!(cell(row, "READY"), "0", "{text}");
    assert_eq!(
        cell(row, "ENDPOINT"),
        format!("grpc://analytics.{ns}.svc:8815"),
        "{text}"
    );
    assert_eq!(cell(row, "DATASETS"), "1", "{text}");

    // The category lists both kinds.
    let out = kubectl(&["get", "arrow", "-n", &ns, "-o", "name"]);
    cluster_tests::assert_success(&out, "kubectl get arrow");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("arrowdataset.arrow.trinity.io/sales"),
        "{text}"
    );
    assert!(
        text.contains("flightpool.arrow.trinity.io/analytics"),
        "{text}"
    );

    // Reconciling a Ready dataset again changes nothing.
    operator.stop().await;
    let before = api.get("sales").await.expect("dataset");
    let (store, _writer) = reflector::store();
    let ctx = Arc::new(Context::new(
        client.clone(),
        controller_config(&ns),
        Arc::new(Metrics::new()),
        store,
        Arc::new(FlightNodes::default()),
    ));
    for round in 1..=2 {
        let current = api.get("sales").await.expect("dataset");
        dataset::reconcile(Arc::new(current), Arc::clone(&ctx))
            .await
            .unwrap_or_else(|e| panic!("reconcile {round} failed: {e}"));
        let after = api.get("sales").await.expect("dataset");
        assert_eq!(
            after.metadata.resource_version, before.metadata.resource_version,
            "reconcile {round} of an unchanged dataset wrote it:\nbefore {:#?}\nafter {:#?}",
            before.status, after.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_ttl_dataset_is_deleted_with_its_parquet_objects() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "ttl").await;
    let store = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", store.path().display());
    let ttl = Duration::from_secs(8);
    seed_version(&url, &ns, "short", Some(ttl), 50).await;
    seed_version(&url, &ns, "short", Some(ttl), 60).await;
    // A neighbour with a long TTL must survive.
    seed_version(&url, &ns, "long", Some(Duration::from_secs(3600)), 10).await;
    let dataset_dir = store.path().join(&ns).join("short");
    let files = files_under(&dataset_dir);
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "parquet"))
            && files
                .iter()
                .any(|f| f.to_string_lossy().ends_with(".manifest.json")),
        "seeded store: {files:?}"
    );

    create_pool(&client, &ns, "analytics", &url).await;
    create_dataset(&client, &ns, "short", "analytics", "8s").await;
    create_dataset(&client, &ns, "long", "analytics", "1h").await;
    let operator = Operator::start(client.clone(), controller_config(&ns));
    let api: Api<ArrowDataset> = Api::namespaced(client.clone(), &ns);
    let ds = wait_for(
        &api,
        "short",
        "phase Ready",
        TIMEOUT,
        |d: Option<&ArrowDataset>| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.phase == DatasetPhase::Ready)
        },
    )
    .await;
    assert!(ds.finalizers().iter().any(|f| f == FINALIZER), "{ds:#?}");
    let status = ds.status.clone().expect("status");
    assert_eq!(status.version, Some(2));
    assert_eq!(status.rows, Some(60));
    assert_eq!(status.versions, Some(2));

    // Expiry deletes the resource; the finalizer removes the objects first.
    wait_deleted(&api, "short", TIMEOUT).await;
    let left = data_left(&dataset_dir);
    assert!(
        left.is_empty(),
        "objects of the expired dataset are left: {left:?}"
    );
    // The neighbour is untouched.
    let long = api.get("long").await.expect("the long-lived dataset stays");
    assert_eq!(
        long.status.as_ref().map(|s| s.phase),
        Some(DatasetPhase::Ready)
    );
    assert!(
        !files_under(&store.path().join(&ns).join("long")).is_empty(),
        "the long-lived dataset's objects were removed"
    );
    // Events tell what happened.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("short"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "Expired"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "Deleted"), "{reasons:?}");
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_discovered_and_deleting_it_removes_its_objects() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "discover").await;
    let store = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", store.path().display());
    create_pool(&client, &ns, "analytics", &url).await;
    // An atom's upload (no ArrowDataset yet) with a 1h TTL.
    seed_version(&url, &ns, "orders", Some(Duration::from_secs(3600)), 5).await;
    let operator = Operator::start(client.clone(), controller_config(&ns));
    let api: Api<ArrowDataset> = Api::namespaced(client.clone(), &ns);
    let ds = wait_for(
        &api,
        "orders",
        "a discovered, Ready dataset",
        TIMEOUT,
        |d: Option<&ArrowDataset>| {
            d.is_some_and(|d| {
                d.finalizers().iter().any(|f| f == FINALIZER)
                    && d.status
                        .as_ref()
                        .is_some_and(|s| s.phase == DatasetPhase::Ready)
            })
        },
    )
    .await;
    assert_eq!(
        ds.labels()
            .get("arrow.trinity.io/discovered")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(ds.spec.pool, "analytics");
    assert_eq!(ds.spec.ttl.as_deref(), Some("1h"));
    assert_eq!(ds.status.as_ref().and_then(|s| s.rows), Some(5));
    let out = kubectl(&[
        "delete",
        "arrowdataset",
        "orders",
        "-n",
        &ns,
        "--wait=true",
        "--timeout=60s",
    ]);
    cluster_tests::assert_success(&out, "kubectl delete arrowdataset");
    wait_deleted(&api, "orders", TIMEOUT).await;
    let left = data_left(&store.path().join(&ns).join("orders"));
    assert!(left.is_empty(), "objects left after delete: {left:?}");
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_without_versions_expires_at_creation_plus_ttl() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "empty").await;
    let store = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", store.path().display());
    create_pool(&client, &ns, "analytics", &url).await;
    create_dataset(&client, &ns, "nothing", "analytics", "6s").await;
    let operator = Operator::start(client.clone(), controller_config(&ns));
    let api: Api<ArrowDataset> = Api::namespaced(client.clone(), &ns);
    let ds = wait_for(
        &api,
        "nothing",
        "phase Pending",
        TIMEOUT,
        |d: Option<&ArrowDataset>| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.phase == DatasetPhase::Pending && s.expires_at.is_some())
        },
    )
    .await;
    let status = ds.status.clone().expect("status");
    assert_eq!(status.ticket, None);
    let created = ds.metadata.creation_timestamp.clone().expect("created").0;
    let expires = chrono::DateTime::parse_from_rfc3339(status.expires_at.as_deref().unwrap_or(""))
        .expect("expiresAt is RFC 3339");
    assert_eq!(expires.timestamp() - created.as_second(), 6, "{status:#?}");
    wait_deleted(&api, "nothing", TIMEOUT).await;
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_blocked_without_a_pool_until_the_skip_annotation() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "blocked").await;
    // The pool does not exist: the dataset waits for it, and its finalizer cannot clean up.
    create_dataset(&client, &ns, "orphan", "missing", "1h").await;
    let operator = Operator::start(client.clone(), controller_config(&ns));
    let api: Api<ArrowDataset> = Api::namespaced(client.clone(), &ns);
    let ds = wait_for(
        &api,
        "orphan",
        "PoolNotFound",
        TIMEOUT,
        |d: Option<&ArrowDataset>| {
            d.is_some_and(|d| {
                d.finalizers().iter().any(|f| f == FINALIZER)
                    && d.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.reason == "PoolNotFound")
                    })
            })
        },
    )
    .await;
    assert_eq!(
        ds.status.as_ref().map(|s| s.phase),
        Some(DatasetPhase::Pending)
    );

    let out = kubectl(&[
        "delete",
        "arrowdataset",
        "orphan",
        "-n",
        &ns,
        "--wait=false",
    ]);
    cluster_tests::assert_success(&out, "kubectl delete arrowdataset --wait=false");
    let ds = wait_for(
        &api,
        "orphan",
        "CleanupBlocked",
        TIMEOUT,
        |d: Option<&ArrowDataset>| {
            d.and_then(|d| d.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "CleanupBlocked" && c.status == "True")
            })
        },
    )
    .await;
    assert!(ds.metadata.deletion_timestamp.is_some());
    let blocked = ds
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "CleanupBlocked"))
        .cloned()
        .expect("condition");
    assert!(
        blocked
            .message
            .contains("arrow.trinity.io/skip-storage-cleanup"),
        "{blocked:?}"
    );

    // The documented way out.
    let out = kubectl(&[
        "annotate",
        "arrowdataset",
        "orphan",
        "-n",
        &ns,
        "arrow.trinity.io/skip-storage-cleanup=true",
    ]);
    cluster_tests::assert_success(&out, "kubectl annotate skip-storage-cleanup");
    wait_deleted(&api, "orphan", TIMEOUT).await;
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_show_in_status_and_wide_output_and_the_last_release_is_an_event() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "consumers").await;
    let store = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", store.path().display());
    create_pool(&client, &ns, "analytics", &url).await;
    let consumers = flight_node::consumers::Consumers::parse("scorer,reporter").expect("consumers");
    seed_version_with(
        &url,
        &ns,
        "features",
        Some(Duration::from_secs(3600)),
        10,
        Some(consumers),
    )
    .await;
    let operator = Operator::start(client.clone(), controller_config(&ns));
    let api: Api<ArrowDataset> = Api::namespaced(client.clone(), &ns);
    // The upload is discovered with its consumers.
    let ds = wait_for(
        &api,
        "features",
        "consumers in status",
        TIMEOUT,
        |d: Option<&ArrowDataset>| {
            d.and_then(|d| d.status.as_ref())
                .and_then(|s| s.consumers.as_ref())
                .is_some()
        },
    )
    .await;
    let c = ds.status.and_then(|s| s.consumers).expect("consumers");
    assert_eq!(c.pending, ["scorer", "reporter"]);
    assert_eq!((c.count, c.releases), (2, 0));
    let out = kubectl(&["get", "ads", "-o", "wide", "-n", &ns]);
    cluster_tests::assert_success(&out, "kubectl get ads -o wide");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        cell(&table(&text)[0], "CONSUMERS"),
        "0/2 released (pending: scorer, reporter)",
        "{text}"
    );

    // Releases happen in storage (through any node); the operator follows them.
    let storage = flight_node::storage::Storage::open(&flight_node::storage::StorageConfig {
        url: url.clone(),
        ..Default::default()
    })
    .expect("storage");
    let versions = flight_node::versions::Versions::new(storage);
    let id = flight_node::name::DatasetId::new(ns.as_str(), "features").expect("id");
    let grace = Duration::from_secs(1800);
    versions
        .release(&id, 1, Some("scorer"), grace, chrono::Utc::now())
        .await
        .expect("release scorer");
    wait_for(
        &api,
        "features",
        "one release",
        TIMEOUT,
        |d: Option<&ArrowDataset>| {
            d.and_then(|d| d.status.as_ref())
                .and_then(|s| s.consumers.as_ref())
                .is_some_and(|c| c.releases == 1 && c.pending == ["reporter"])
        },
    )
    .await;
    versions
        .release(&id, 1, Some("reporter"), grace, chrono::Utc::now())
        .await
        .expect("release reporter");
    let ds = wait_for(
        &api,
        "features",
        "all released",
        TIMEOUT,
        |d: Option<&ArrowDataset>| {
            d.and_then(|d| d.status.as_ref())
                .and_then(|s| s.consumers.as_ref())
                .is_some_and(|c| c.summary == "all released")
        },
    )
    .await;
    // The expiry moved to the end of the grace period.
    let expires = ds.status.and_then(|s| s.expires_at).expect("expiresAt");
    let expires = chrono::DateTime::parse_from_rfc3339(&expires).expect("rfc3339");
    assert!(
        expires < chrono::Utc::now() + chrono::Duration::seconds(1900),
        "{expires}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let mut released = Vec::new();
    for _ in 0..50 {
        released = events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Released"))
            .filter_map(|e| e.note)
            .collect();
        if !released.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(released.len(), 1, "{released:?}");
    assert!(released[0].contains("scorer, reporter"), "{released:?}");
    operator.stop().await;
}
