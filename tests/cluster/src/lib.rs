//! Harness of the operator's tests against a real control plane: the kube-apiserver and etcd
//! that `tests/k8s/control-plane up` started (`make test-cluster` does it around
//! `cargo test -p cluster-tests`).
//!
//! The control plane is found through `$K8S_STATE_DIR/env` (default
//! `target/k8s/state/env`). When it is not running, every test fails and says how to start
//! it; nothing is skipped.
//!
//! Tests share the one control plane and run in parallel, so each works in namespaces of its
//! own ([`unique_namespace`]) and runs the operator narrowed to them. There is no
//! controller-manager: namespaces are never removed and owner references are not garbage
//! collected, which the tests do not need.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use flight_node::manifest::Manifest;
use flight_node::name::DatasetId;
use flight_node::node::{Node, PutOptions};
use flight_operator::controller::node::FlightNodes;
use flight_operator::controller::ControllerConfig;
use flight_operator::metrics::Metrics;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, Condition};
use kube::{Client, Config, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Default time a test waits for the operator or the API server to get somewhere.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Where the running control plane is and how to reach it.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// Repository root.
    pub root: PathBuf,
    /// State directory of `tests/k8s/control-plane`.
    pub state_dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub apiserver_url: String,
    /// Kubeconfig of a `system:masters` user.
    pub admin_kubeconfig: PathBuf,
    /// The API server's JSON audit log (one event per line).
    pub audit_log: PathBuf,
}

impl ControlPlane {
    /// The control-plane script.
    pub fn script(&self) -> PathBuf {
        self.root.join("tests/k8s/control-plane")
    }
}

/// Repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

/// The running control plane, with `crds/` applied and Established (once per process).
///
/// Panics with instructions when no control plane is up.
pub fn control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        let root = repo_root();
        let state_dir = std::env::var_os("K8S_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/k8s/state"));
        let env_file = state_dir.join("env");
        let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
            panic!(
                "no control plane: cannot read {} ({e}). These tests need a real kube-apiserver: \
                 run `make test-cluster`, or `tests/k8s/control-plane up` before \
                 `cargo test -p cluster-tests` and `tests/k8s/control-plane down` after",
                env_file.display()
            )
        });
        let env = parse_env_file(&text);
        let get = |k: &str| {
            env.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{} has no {k}", env_file.display()))
        };
        let cp = ControlPlane {
            root,
            apiserver_url: get("K8S_APISERVER_URL"),
            admin_kubeconfig: PathBuf::from(get("K8S_ADMIN_KUBECONFIG")),
            audit_log: PathBuf::from(get("K8S_AUDIT_LOG")),
            state_dir,
        };
        let status = Command::new(cp.script())
            .arg("status")
            .env("K8S_STATE_DIR", &cp.state_dir)
            .output()
            .expect("run tests/k8s/control-plane status");
        assert!(
            status.status.success(),
            "the control plane in {} is not healthy:\n{}{}",
            cp.state_dir.display(),
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr)
        );
        apply_crds(&cp);
        cp
    })
}

/// Applies `crds/` server-side and waits until every CRD is Established.
fn apply_crds(cp: &ControlPlane) {
    let crds = cp.root.join("crds");
    let out = kubectl_with(
        &cp.admin_kubeconfig,
        &[
            "apply",
            "--server-side",
            "--field-manager=cluster-tests",
            "-f",
            crds.to_str().expect("utf-8 path"),
        ],
    );
    assert_success(&out, "kubectl apply --server-side -f crds/");
    let out = kubectl_with(
        &cp.admin_kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            crds.to_str().expect("utf-8 path"),
        ],
    );
    assert_success(&out, "kubectl wait --for=condition=Established -f crds/");
}

/// Panics with the command's output unless it succeeded.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the real `kubectl` with a kubeconfig.
pub fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl must be installed (kubectl 1.32 or newer)")
}

/// Runs `kubectl` as the admin user.
pub fn kubectl(args: &[&str]) -> Output {
    kubectl_with(&control_plane().admin_kubeconfig, args)
}

/// Runs `kubectl` as admin with `stdin` fed to it.
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .arg("--kubeconfig")
        .arg(&control_plane().admin_kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl must be installed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write kubectl stdin");
    child.wait_with_output().expect("kubectl output")
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Client {
    flight_operator::config::install_crypto_provider();
    let kc = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", kubeconfig.display()));
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("load kubeconfig {}: {e}", kubeconfig.display()));
    Client::try_from(config).expect("kube client")
}

/// A client acting as a `system:masters` user.
pub async fn admin_client() -> Client {
    client_from(&control_plane().admin_kubeconfig).await
}

/// A namespace name no other test (or earlier run against the same control plane) uses.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{:05x}", std::process::id(), nanos >> 12)
}

/// Creates a fresh namespace and returns its name.
pub async fn unique_namespace(client: &Client, prefix: &str) -> String {
    let name = unique_name(prefix);
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "cluster-tests".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    name
}

/// Waits (with a watch) until `cond` holds for the named object, or panics after `timeout`.
pub async fn wait_for<K, C>(api: &Api<K>, name: &str, what: &str, timeout: Duration, cond: C) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    C: Condition<K>,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => panic!("{name}: {what}: the object does not exist"),
        Ok(Err(e)) => panic!("{name}: {what}: watch failed: {e}"),
        Err(_) => {
            let now = api.get_opt(name).await.ok().flatten();
            panic!("{name}: timed out after {timeout:?} waiting for {what}; now: {now:#?}")
        }
    }
}

/// Waits until the object is gone (or panics after `timeout`).
pub async fn wait_deleted<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let gone = |obj: Option<&K>| obj.is_none();
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, gone)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("{name}: watch for deletion failed: {e}"),
        Err(_) => {
            let now = api.get_opt(name).await.ok().flatten();
            panic!("{name}: still there after {timeout:?}: {now:#?}")
        }
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The operator's controllers running in this process against the control plane.
pub struct Operator {
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// The controllers' metrics (reconcile counts).
    pub metrics: Arc<Metrics>,
}

/// Controller settings for tests: watch one namespace, retry quickly.
pub fn controller_config(namespace: &str) -> ControllerConfig {
    ControllerConfig {
        namespace: Some(namespace.to_owned()),
        retry_after: Duration::from_secs(2),
        discovery_interval: Duration::from_secs(3600),
        ..ControllerConfig::default()
    }
}

impl Operator {
    /// Starts `run_controllers` with the real Flight node client.
    pub fn start(client: Client, config: ControllerConfig) -> Self {
        init_tracing();
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(flight_operator::runtime::run_controllers(
            client,
            config,
            Arc::clone(&metrics),
            Arc::new(FlightNodes {
                timeout: Duration::from_secs(2),
            }),
            stop.clone(),
            None,
        ));
        Self {
            stop,
            task,
            metrics,
        }
    }

    /// Count of finished reconciles of a controller (`pool` or `dataset`).
    pub fn reconciles(&self, controller: &str) -> u64 {
        let text = self.metrics.encode().expect("encode metrics");
        let prefix = format!(
            "flight_operator_reconcile_duration_seconds_count{{controller=\"{controller}\""
        );
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next())
            .filter_map(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// Stops the controllers and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("operator task failed: {e}"),
            Err(_) => panic!("the operator did not stop within 30s"),
        }
    }
}

/// Logs of the operator in the test output (`RUST_LOG` filters; default info).
pub fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Commits a real version (Parquet part + manifest) of `namespace/name` into the store at
/// `storage_url`, through the flight node's own ingest path.
pub async fn seed_version(
    storage_url: &str,
    namespace: &str,
    name: &str,
    ttl: Option<Duration>,
    rows: usize,
) -> Manifest {
    seed_version_with(storage_url, namespace, name, ttl, rows, None).await
}

/// [`seed_version`] with declared consumers.
pub async fn seed_version_with(
    storage_url: &str,
    namespace: &str,
    name: &str,
    ttl: Option<Duration>,
    rows: usize,
    consumers: Option<flight_node::consumers::Consumers>,
) -> Manifest {
    let config = flight_node::config::Config::for_tests(storage_url);
    let node = Node::from_config(&config).expect("open a flight node on the store");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("city", DataType::Utf8, true),
    ]));
    let ids: Vec<i64> = (0..rows as i64).collect();
    let cities: Vec<Option<String>> = (0..rows).map(|i| Some(format!("city-{}", i % 7))).collect();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(cities)),
        ],
    )
    .expect("record batch");
    let id = DatasetId::new(namespace, name).expect("dataset id");
    let opts = PutOptions {
        ttl,
        contract: None,
        source: "cluster-tests".into(),
        consumers,
        ..PutOptions::default()
    };
    node.put(id, opts, schema, futures::stream::iter(vec![Ok(batch)]))
        .await
        .expect("put a version into the store")
}

/// Every file below `dir`, recursively (relative paths, sorted).
/// Objects of a dataset directory that still hold data: every file except the tombstones
/// that deleted versions leave so that their numbers are never reused.
pub fn data_left(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|rel| {
            let text = std::fs::read_to_string(dir.join(rel)).unwrap_or_default();
            let format = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["format"].as_str().map(str::to_owned));
            format.as_deref() != Some(flight_node::versions::TOMBSTONE_FORMAT)
        })
        .collect()
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if let Ok(rel) = path.strip_prefix(base) {
                out.push(rel.to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// One line of the API server's audit log.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// `GET /apis/...`.
    #[serde(default)]
    pub verb: String,
    /// Request URI.
    #[serde(default)]
    pub request_u_r_i: String,
    /// Who made the request.
    pub user: AuditUser,
    /// The answer.
    #[serde(default)]
    pub response_status: Option<AuditStatus>,
    /// Stage of the event.
    #[serde(default)]
    pub stage: String,
}

/// User of an audit event.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AuditUser {
    /// User name.
    #[serde(default)]
    pub username: String,
}

/// Response status of an audit event.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AuditStatus {
    /// HTTP status code.
    #[serde(default)]
    pub code: Option<u16>,
}

/// Every audit event of `username` so far.
pub fn audit_events_of(username: &str) -> Vec<AuditEvent> {
    let text = std::fs::read_to_string(&control_plane().audit_log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<AuditEvent>(l).ok())
        .filter(|e| e.user.username == username)
        .collect()
}
