//! Storage against real S3-compatible server processes, as MinIO or S3 would be used in a
//! cluster: parts, manifests, eviction and reload, and deletion on `moto_server`; concurrent
//! uploads through several nodes, which depend on create-only manifest commits being atomic,
//! on MinIO (moto_server checks and then writes, without a lock, so two writers can both
//! "create" one manifest).
//!
//! `make test` installs moto into `.venv` and points `MOTO_SERVER` at it, and starts MinIO
//! (`tests/minio/minio up`) with its address in `MINIO_ENDPOINT` and friends. Without them
//! these tests fail with instructions rather than skipping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use flight_node::name::DatasetId;
use flight_node::storage::{Storage, StorageConfig};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("MOTO_SERVER") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    assert!(
        venv.exists(),
        "moto_server not found: run `make test` (it installs moto into .venv), or set MOTO_SERVER"
    );
    venv
}

fn http(endpoint_port: u16, request: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", endpoint_port))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Starts moto on a free port and creates `bucket`.
fn start_moto(bucket: &str) -> Moto {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(moto_binary())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("failed to start moto_server");
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    // The port opens before the server answers reliably: retry the bucket creation itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    loop {
        match http(port, &request) {
            Ok(reply) if reply.starts_with("HTTP/1.1 200") => return moto,
            Ok(reply) => panic!("bucket creation failed: {reply}"),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "moto_server did not answer within 30s: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn s3_config(moto: &Moto, bucket: &str) -> StorageConfig {
    StorageConfig {
        url: format!("s3://{bucket}/pipelines"),
        endpoint: Some(moto.endpoint.clone()),
        region: Some("us-east-1".into()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        allow_http: true,
    }
}

/// The manifests of a dataset as stored (`<ns>/<name>/v<n>.manifest.json`), by version.
async fn stored_manifests(storage: &Storage, ns: &str, name: &str) -> Vec<serde_json::Value> {
    let store = storage.object_store();
    let prefix = object_store::path::Path::from_iter([ns, name]);
    let mut paths: Vec<(u64, object_store::path::Path)> = store
        .list(Some(&prefix))
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| {
            let file = m.location.filename()?.to_string();
            let v = file.strip_prefix('v')?.strip_suffix(".manifest.json")?;
            Some((v.parse().ok()?, m.location))
        })
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for (_, path) in paths {
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        out.push(serde_json::from_slice(&bytes).unwrap());
    }
    out
}

#[tokio::test]
async fn node_on_s3_round_trips_evicts_reloads_and_deletes() {
    let moto = start_moto("flight-data");
    let cfg = s3_config(&moto, "flight-data");
    let node = TestNode::start(|c| {
        c.storage_url = cfg.url.clone();
        c.storage_endpoint = cfg.endpoint.clone();
        c.storage_region = cfg.region.clone();
        c.storage_access_key_id = cfg.access_key_id.clone();
        c.storage_secret_access_key = cfg.secret_access_key.clone();
        c.allow_http = true;
        c.part_size = 64 * 1024;
    })
    .await;
    let mut c = node.client().await;
    let batches: Vec<_> = (0..5).map(|i| batch(i * 3000, 3000)).collect();
    let r = put(&mut c, descriptor("analytics", "events"), batches.clone())
        .await
        .unwrap();
    let ticket = r["ticket"].as_str().unwrap().to_string();
    assert_eq!(
        concat(&get(&mut c, &ticket).await.unwrap()),
        concat(&batches)
    );

    // The objects are in the bucket, under the prefix, in the documented layout.
    let storage = Storage::open(&cfg).unwrap();
    let id = DatasetId::new("analytics", "events").unwrap();
    let manifests = stored_manifests(&storage, "analytics", "events").await;
    assert_eq!(manifests.len(), 1);
    assert!(manifests[0]["parts"].as_array().unwrap().len() > 1);
    let objects: Vec<_> = storage
        .object_store()
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert!(
        objects.contains(&"analytics/events/v1.manifest.json".to_string()),
        "{objects:?}"
    );
    assert!(objects
        .iter()
        .any(|o| o.starts_with("analytics/events/parts/") && o.ends_with("part-0.parquet")));

    // Evict, then a cold read loads from S3.
    let mut client = flight_node::client::NodeClient::connect(&node.running().grpc_uri(), None)
        .await
        .unwrap();
    assert_eq!(client.evict(&id, None).await.unwrap(), 1);
    assert_eq!(
        concat(&client.get(&ticket).await.unwrap()),
        concat(&batches)
    );
    // One miss per part (the cache holds parts).
    let parts = client.flight_info(&id).await.unwrap().endpoint.len();
    assert!(parts > 1, "{parts}");
    assert_eq!(client.stats().await.unwrap()["misses"], parts as u64);

    // A second node on the same bucket serves the ticket (any node serves any ticket).
    let other = TestNode::start(|c2| {
        c2.storage_url = node.config.storage_url.clone();
        c2.storage_endpoint = node.config.storage_endpoint.clone();
        c2.storage_region = node.config.storage_region.clone();
        c2.storage_access_key_id = node.config.storage_access_key_id.clone();
        c2.storage_secret_access_key = node.config.storage_secret_access_key.clone();
        c2.allow_http = true;
    })
    .await;
    let mut c2 = other.client().await;
    assert_eq!(
        concat(&get(&mut c2, &ticket).await.unwrap()),
        concat(&batches)
    );

    // A delete removes the parts and leaves a tombstone where the manifest was, so the
    // version's number is never handed out again.
    assert_eq!(client.delete(&id, None).await.unwrap(), vec![1]);
    let left: Vec<_> = storage
        .object_store()
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(left, vec!["analytics/events/v1.manifest.json"]);
    let records = stored_manifests(&storage, "analytics", "events").await;
    assert_eq!(
        records[0]["format"],
        flight_node::versions::TOMBSTONE_FORMAT,
        "{records:?}"
    );
    assert_eq!(
        get(&mut c, &ticket).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    // The other node still holds its hot copy until it is told to drop it (the operator
    // evicts every node of a pool when it deletes); then it finds nothing in storage.
    let mut other_client =
        flight_node::client::NodeClient::connect(&other.running().grpc_uri(), None)
            .await
            .unwrap();
    other_client.evict(&id, None).await.unwrap();
    assert_eq!(
        get(&mut c2, &ticket).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    other.stop().await;
    node.stop().await;
}

/// Uploads through two nodes to one dataset at once: every upload gets its own version
/// (create-only manifest commits on MinIO), and every version holds exactly its upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_create_only_commits_give_concurrent_uploads_distinct_versions() {
    const UPLOADS: i64 = 16;
    let target = minio();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(TestNode::start(|c| target.configure(c)).await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(UPLOADS as usize));
    let mut tasks = Vec::new();
    for i in 0..UPLOADS {
        let mut c = nodes[(i % 2) as usize].client().await;
        let barrier = std::sync::Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = put(&mut c, descriptor("ns", "race"), vec![batch(i * 10, 10)])
                .await
                .unwrap();
            (i, r)
        }));
    }
    let mut versions = Vec::new();
    let mut reader = nodes[0].client().await;
    for t in tasks {
        let (i, r) = t.await.unwrap();
        let got = concat(
            &get(&mut reader, r["ticket"].as_str().unwrap())
                .await
                .unwrap(),
        );
        assert_eq!(got, batch(i * 10, 10), "upload {i} reads back different");
        versions.push(r["version"].as_u64().unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=UPLOADS as u64).collect::<Vec<u64>>());

    // Storage agrees: one manifest per upload, each naming its own upload id.
    let manifests = stored_manifests(&target.storage(), "ns", "race").await;
    assert_eq!(manifests.len(), UPLOADS as usize);
    let mut upload_ids: Vec<_> = manifests
        .iter()
        .map(|m| m["uploadId"].as_str().unwrap().to_string())
        .collect();
    upload_ids.sort();
    upload_ids.dedup();
    assert_eq!(
        upload_ids.len(),
        UPLOADS as usize,
        "two versions share an upload"
    );
    for n in nodes {
        n.stop().await;
    }
}
