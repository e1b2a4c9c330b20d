//! Shared fixture: a node serving on loopback ports chosen by the OS, with a Flight client.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]
pub mod check;
pub mod proxy;

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor};
use flight_node::clock::{Clock, SystemClock};
use flight_node::server::{start_with_clock, RunningNode};
use flight_node::Config;
use futures::{StreamExt, TryStreamExt};
use tempfile::TempDir;
use tonic::transport::Channel;

pub struct TestNode {
    pub running: Option<RunningNode>,
    pub dir: TempDir,
    pub config: Config,
}

impl TestNode {
    /// A node on `file://<tempdir>`; `tweak` adjusts the flags.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_clock(Arc::new(SystemClock), tweak).await
    }

    /// [`TestNode::start`] with the node reading the time from `clock`.
    pub async fn start_with_clock(clock: Arc<dyn Clock>, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(&format!("file://{}", dir.path().display()));
        tweak(&mut config);
        let running = within("start the node", start_with_clock(config.clone(), clock))
            .await
            .unwrap();
        Self {
            running: Some(running),
            dir,
            config,
        }
    }

    pub fn running(&self) -> &RunningNode {
        self.running.as_ref().unwrap()
    }

    pub async fn client(&self) -> FlightClient {
        let uri = format!("http://{}", self.running().grpc_addr);
        let channel = within("connect", Channel::from_shared(uri).unwrap().connect())
            .await
            .unwrap();
        FlightClient::new(channel)
    }

    pub async fn client_with_token(&self, token: &str) -> FlightClient {
        let mut c = self.client().await;
        c.add_header("authorization", &format!("Bearer {token}"))
            .unwrap();
        c
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            within("stop the node", r.shutdown()).await.unwrap();
        }
    }
}

/// How long a test waits for a node to start, connect or stop before it fails.
pub const TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Awaits `f`, failing the test (naming `what`) if it takes longer than [`TEST_TIMEOUT`].
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {TEST_TIMEOUT:?}: {what}"))
}

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ]))
}

/// `rows` rows starting at `start`; distinct starts give distinct tables.
pub fn batch(start: i64, rows: usize) -> RecordBatch {
    let ids: Vec<i64> = (start..start + rows as i64).collect();
    let names: Vec<String> = ids.iter().map(|i| format!("row-{i}")).collect();
    let scores: Vec<f64> = ids.iter().map(|i| *i as f64 * 0.5).collect();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(StringArray::from(names)),
        Arc::new(Float64Array::from(scores)),
    ];
    RecordBatch::try_new(schema(), cols).unwrap()
}

pub fn descriptor(ns: &str, name: &str) -> FlightDescriptor {
    FlightDescriptor::new_path(vec![ns.to_string(), name.to_string()])
}

/// Uploads batches; returns the PutResult JSON or the status.
pub async fn put(
    client: &mut FlightClient,
    desc: FlightDescriptor,
    batches: Vec<RecordBatch>,
) -> Result<serde_json::Value, tonic::Status> {
    let schema = batches.first().map(|b| b.schema()).unwrap_or_else(schema);
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_flight_descriptor(Some(desc))
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    let mut results = client.do_put(stream).await.map_err(status)?;
    let first = results.next().await.expect("a PutResult").map_err(status)?;
    Ok(serde_json::from_slice(&first.app_metadata).unwrap())
}

pub async fn get(
    client: &mut FlightClient,
    ticket: &str,
) -> Result<Vec<RecordBatch>, tonic::Status> {
    let stream = client
        .do_get(arrow_flight::Ticket::new(ticket.to_string()))
        .await
        .map_err(status)?;
    stream.try_collect().await.map_err(status)
}

pub fn status(e: arrow_flight::error::FlightError) -> tonic::Status {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => tonic::Status::internal(other.to_string()),
    }
}

/// Concatenates batches for comparison.
pub fn concat(batches: &[RecordBatch]) -> RecordBatch {
    let schema = batches[0].schema();
    arrow::compute::concat_batches(&schema, batches).unwrap()
}

/// Files under the dataset's directory in the temp store.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The environment variables naming the MinIO server the tests run against; `make test`
/// (through `tests/minio/minio up`) sets them.
pub const MINIO_ENV: [&str; 4] = [
    "MINIO_ENDPOINT",
    "MINIO_BUCKET",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
];

/// MinIO's default region; object_store signs requests for it.
pub const MINIO_REGION: &str = "us-east-1";

/// A place in the test MinIO server that no other test uses: `s3://<bucket>/<prefix>` with a
/// fresh random prefix.
#[derive(Debug, Clone)]
pub struct MinioTarget {
    /// `http://127.0.0.1:<port>`, as in `MINIO_ENDPOINT`.
    pub endpoint: String,
    pub bucket: String,
    /// Fresh for every `minio()` call, e.g. `test-01jz...`; no leading or trailing `/`.
    pub prefix: String,
    pub access_key: String,
    pub secret_key: String,
}

/// The test MinIO server, with a fresh prefix. Panics with instructions when the
/// environment does not name one: these tests never skip.
pub fn minio() -> MinioTarget {
    let missing: Vec<&str> = MINIO_ENV
        .iter()
        .copied()
        .filter(|k| std::env::var(k).map(|v| v.is_empty()).unwrap_or(true))
        .collect();
    assert!(
        missing.is_empty(),
        "{} not set: this test needs a real MinIO server. Run it with `make test`, or start \
         one with `tests/minio/minio up` and export its environment with \
         `set -a; . target/minio/state/env; set +a` before `cargo test`",
        missing.join(", ")
    );
    let var = |k: &str| std::env::var(k).unwrap();
    let target = MinioTarget {
        endpoint: var("MINIO_ENDPOINT").trim_end_matches('/').to_string(),
        bucket: var("MINIO_BUCKET"),
        prefix: format!("test-{}", ulid::Ulid::new().to_string().to_lowercase()),
        access_key: var("MINIO_ACCESS_KEY"),
        secret_key: var("MINIO_SECRET_KEY"),
    };
    let addr = target.host_port();
    assert!(
        std::net::TcpStream::connect(&addr).is_ok(),
        "MINIO_ENDPOINT={} is set but nothing listens on {addr}; is the server from \
         `tests/minio/minio up` still running? (`tests/minio/minio status`)",
        target.endpoint
    );
    target
}

impl MinioTarget {
    /// `host:port` of the server (where a TCP proxy in front of it connects to).
    pub fn host_port(&self) -> String {
        let rest = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, r)| r);
        rest.trim_end_matches('/').to_string()
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// Another fresh prefix in the same bucket.
    pub fn fresh(&self) -> Self {
        Self {
            prefix: format!("test-{}", ulid::Ulid::new().to_string().to_lowercase()),
            ..self.clone()
        }
    }

    /// Storage settings for `s3://<bucket>/<prefix>` on the server.
    pub fn storage_config(&self) -> flight_node::storage::StorageConfig {
        self.storage_config_via(&self.endpoint)
    }

    /// The same bucket, prefix and credentials through another endpoint (a proxy in front
    /// of MinIO): `http://host:port` or a bare `host:port`.
    pub fn storage_config_via(&self, endpoint: &str) -> flight_node::storage::StorageConfig {
        let endpoint = if endpoint.contains("://") {
            endpoint.trim_end_matches('/').to_string()
        } else {
            format!("http://{endpoint}")
        };
        flight_node::storage::StorageConfig {
            url: self.url(),
            endpoint: Some(endpoint),
            region: Some(MINIO_REGION.to_string()),
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(self.secret_key.clone()),
            allow_http: true,
        }
    }

    /// The object store under the prefix, as a node opens it.
    pub fn storage(&self) -> flight_node::storage::Storage {
        flight_node::storage::Storage::open(&self.storage_config()).unwrap()
    }

    /// Points a node's flags at the prefix on the server (for `TestNode::start`).
    pub fn configure(&self, config: &mut Config) {
        use_storage(config, &self.storage_config());
    }
}

/// Sets a node's storage flags from `storage`.
pub fn use_storage(config: &mut Config, storage: &flight_node::storage::StorageConfig) {
    config.storage_url = storage.url.clone();
    config.storage_endpoint = storage.endpoint.clone();
    config.storage_region = storage.region.clone();
    config.storage_access_key_id = storage.access_key_id.clone();
    config.storage_secret_access_key = storage.secret_access_key.clone();
    config.allow_http = storage.allow_http;
}
