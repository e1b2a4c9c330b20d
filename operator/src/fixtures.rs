//! Test fixtures: a mocked API server answered call by call (the kube-rs `ApiServerVerifier`
//! pattern over `tower-test`), a fixed clock, a fake node client and manifest helpers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use flight_core::manifest::{Manifest, PutResult};
use flight_core::name::DatasetId;
use flight_core::protocol::{LoadRequest, NodePreload, PreloadResult};
use flight_core::storage::Storage;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, Store};
use kube::Client;
use serde_json::{json, Value};

use crate::controller::node::{NodeApi, NodeError, NodeTarget};
use crate::controller::{reporter, Clock, Context, ControllerConfig};
use crate::crd::ArrowDataset;
use crate::metrics::Metrics;

/// A fixed instant.
#[derive(Debug)]
pub struct FixedClock(pub DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// `1970-01-01T00:00:00Z + secs`.
pub fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0)
        .single()
        .expect("valid timestamp")
}

/// Records node calls; a `load` commits a version into `storage` like a node would.
#[derive(Default)]
pub struct FakeNodes {
    /// `(action, uri)` of every call.
    pub calls: Mutex<Vec<(String, String)>>,
    /// Storage a `load` writes its version into.
    pub storage: Mutex<Option<(Storage, DateTime<Utc>)>>,
    /// Error every `load` returns instead.
    pub load_error: Mutex<Option<NodeError>>,
    /// What `check_storage` answers (Ok when unset).
    pub storage_problem: Mutex<Option<String>>,
    /// What `cache` answers for every node (an error when unset).
    pub cache: Mutex<Option<(u64, u64)>>,
    /// `(parts, parts cached)` that `preload` answers (every part of three when unset).
    pub preloaded: Mutex<Option<(u32, u32)>>,
}

impl FakeNodes {
    /// The recorded calls.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().expect("lock").clone()
    }
}

impl NodeApi for FakeNodes {
    fn cache(&self, target: NodeTarget) -> BoxFuture<'static, Result<(u64, u64), NodeError>> {
        self.calls
            .lock()
            .expect("lock")
            .push(("stats".into(), target.uri.clone()));
        let cache = *self.cache.lock().expect("lock");
        async move {
            cache.ok_or(NodeError {
                action: "stats",
                uri: target.uri,
                message: "no node runs in this test".into(),
                permanent: false,
            })
        }
        .boxed()
    }

    fn check_storage(&self, _storage: Storage) -> BoxFuture<'static, Result<(), String>> {
        let problem = self.storage_problem.lock().expect("lock").clone();
        async move { problem.map_or(Ok(()), Err) }.boxed()
    }

    fn load(
        &self,
        target: NodeTarget,
        req: LoadRequest,
    ) -> BoxFuture<'static, Result<PutResult, NodeError>> {
        self.calls
            .lock()
            .expect("lock")
            .push(("load".into(), target.uri.clone()));
        let error = self.load_error.lock().expect("lock").clone();
        let storage = self.storage.lock().expect("lock").clone();
        async move {
            if let Some(e) = error {
                return Err(e);
            }
            let (storage, created) = storage.expect("FakeNodes.storage set for load");
            let ttl = req
                .ttl
                .as_deref()
                .map(|t| crate::ttl::parse_ttl(t).expect("valid ttl"));
            let m = commit(&storage, &req.namespace, &req.name, created, ttl, 42).await;
            Ok(m.put_result(None).expect("put result"))
        }
        .boxed()
    }

    fn evict(
        &self,
        target: NodeTarget,
        _id: DatasetId,
    ) -> BoxFuture<'static, Result<(), NodeError>> {
        self.calls
            .lock()
            .expect("lock")
            .push(("evict".into(), target.uri.clone()));
        let uri = target.uri;
        async move {
            // Nodes in tests are "down": eviction fails, which must not block deletion.
            Err(NodeError {
                action: "evict",
                uri,
                message: "connection refused".into(),
                permanent: false,
            })
        }
        .boxed()
    }

    fn preload(
        &self,
        target: NodeTarget,
        _id: DatasetId,
        version: u64,
    ) -> BoxFuture<'static, Result<PreloadResult, NodeError>> {
        self.calls
            .lock()
            .expect("lock")
            .push(("preload".into(), target.uri.clone()));
        let (parts, cached) = self.preloaded.lock().expect("lock").unwrap_or((3, 3));
        // Two nodes: the one asked holds its share, the other the rest (or is down).
        let mine = parts.min(1);
        let nodes = vec![
            NodePreload {
                node: target.uri,
                parts: mine,
                cached: cached.min(mine),
                error: None,
            },
            NodePreload {
                node: "grpc://other:8815".into(),
                parts: parts - mine,
                cached: cached.saturating_sub(mine),
                error: (cached < parts).then(|| "connection refused".to_string()),
            },
        ];
        async move {
            Ok(PreloadResult {
                version,
                cached: cached == parts,
                parts,
                parts_cached: cached,
                nodes,
            })
        }
        .boxed()
    }
}

static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Commits a version like a node would (one empty part list; sizes made up).
pub async fn commit(
    storage: &Storage,
    namespace: &str,
    name: &str,
    created: DateTime<Utc>,
    ttl: Option<Duration>,
    rows: u64,
) -> Manifest {
    let expires = ttl.and_then(|ttl| crate::ttl::expiry(created, ttl).ok());
    let mut m: Manifest = serde_json::from_value(json!({
        "format": flight_core::manifest::MANIFEST_FORMAT,
        "namespace": namespace,
        "name": name,
        "version": 0,
        "uploadId": format!("upload-{}", UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        "schema": "",
        "columns": [],
        "rows": rows,
        "bytes": rows * 100,
        "storedBytes": rows * 10,
        "parts": [],
        "createdAt": created,
        "ttlSeconds": ttl.map(|d| d.as_secs()),
        "expiresAt": expires,
        "source": "test",
    }))
    .expect("manifest json");
    let versions = flight_core::versions::Versions::new(storage.clone());
    let id = flight_core::name::DatasetId::new(namespace, name).expect("dataset id");
    let upload = versions.begin(&id, std::time::Duration::from_secs(3600));
    m.upload_id = upload.upload_id().to_string();
    let m = versions.commit(upload, m).await.expect("commit");
    // A part object, so clean-up has more than manifests to remove.
    let part = object_store::path::Path::from(format!(
        "{namespace}/{name}/parts/{}/part-0.parquet",
        m.upload_id
    ));
    storage
        .put(&part, bytes_of("PAR1"))
        .await
        .expect("write part");
    m
}

fn bytes_of(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

/// One request to the mocked API server, waiting for its answer.
pub struct Call {
    /// HTTP method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// Query string.
    pub query: String,
    /// JSON body (`Null` when empty).
    pub body: Value,
    send: tower_test::mock::SendResponse<Response<Body>>,
}

impl Call {
    /// Answers with a status code and a JSON body.
    pub fn respond(self, code: u16, body: &Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        let response = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(bytes))
            .expect("response");
        self.send.send_response(response);
    }

    /// Answers a status write with `object` carrying the sent status; returns the body sent.
    pub fn status_of(self, object: &impl serde::Serialize) -> Value {
        let body = self.body.clone();
        let mut answer = serde_json::to_value(object).expect("object json");
        answer["status"] = body["status"].clone();
        self.respond(200, &answer);
        body
    }

    /// Answers 200 with the request body echoed (what an apply or create returns).
    pub fn echo(self) -> Value {
        let body = self.body.clone();
        self.respond(200, &body);
        body
    }
}

/// A 404 Status body.
pub fn not_found(what: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{what} not found"), "reason": "NotFound", "code": 404
    })
}

/// Answers the mocked API server call by call; each expectation fails fast on a timeout.
pub struct ApiServerVerifier(tower_test::mock::Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// The next request, or a panic after 5 s.
    pub async fn next(&mut self) -> Call {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .expect("timed out waiting for an API call")
            .expect("the client went away");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON request body")
        };
        Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            body,
            send,
        }
    }

    /// The next request, asserting its method and path.
    pub async fn expect(&mut self, method: Method, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&method, path),
            "unexpected API call (query {:?}, body {})",
            call.query,
            call.body
        );
        call
    }

    /// Asserts the client sends nothing more (call after every clone of the client is gone).
    pub async fn done(mut self) {
        let next = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .expect("the client is still alive");
        if let Some((request, _)) = next {
            panic!(
                "unexpected extra API call: {} {}",
                request.method(),
                request.uri()
            );
        }
    }
}

/// A context over the mocked API server, with a fixed clock and fake nodes.
pub fn context(
    now: DateTime<Utc>,
    nodes: Arc<FakeNodes>,
) -> (
    Arc<Context>,
    ApiServerVerifier,
    reflector::store::Writer<ArrowDataset>,
) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (store, writer): (Store<ArrowDataset>, _) = reflector::store();
    let ctx = Context {
        recorder: Recorder::new(client.clone(), reporter()),
        client,
        config: ControllerConfig::default(),
        metrics: Arc::new(Metrics::new()),
        datasets: store,
        nodes,
        clock: Arc::new(FixedClock(now)),
        stores: Arc::default(),
    };
    (Arc::new(ctx), ApiServerVerifier(handle), writer)
}

/// Path of a namespaced core or group resource.
pub fn path(group_version: &str, namespace: &str, plural: &str, name: &str) -> String {
    let prefix = if group_version == "v1" {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{group_version}")
    };
    format!("{prefix}/namespaces/{namespace}/{plural}/{name}")
}

/// Path of the events collection of a namespace.
pub fn events_path(namespace: &str) -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events")
}
