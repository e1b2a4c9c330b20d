//! The Helm chart against the real API server: its rendered manifests pass server-side
//! dry-run, and its RBAC is enough: the operator, run as the chart's ServiceAccount with
//! leader election as the chart deploys it, is never answered `403 Forbidden`.
//!
//! The chart is rendered by `chart/render.py` with Helm's Go SDK (helm-python-sdk, in the
//! project's `.venv`, which `make venv` installs; `$CLUSTER_TESTS_PYTHON` overrides it).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cluster_tests::{
    admin_client, assert_success, audit_events_of, client_from, control_plane, data_left, kubectl,
    kubectl_stdin, poll, repo_root, seed_version, unique_namespace, wait_deleted, wait_for,
    TIMEOUT,
};
use flight_operator::controller::ControllerConfig;
use flight_operator::crd::{ArrowDataset, DatasetPhase, FlightPool};
use flight_operator::runtime::{LeaderElection, OperatorConfig};
use futures::FutureExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde::Deserialize;
use serde_json::{json, Value};

const RELEASE: &str = "flight-operator";
const RELEASE_NAMESPACE: &str = "flight-system";

fn python() -> PathBuf {
    std::env::var_os("CLUSTER_TESTS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

/// The chart under test: `charts/flight-operator`, or `$CLUSTER_TESTS_CHART_DIR`.
fn chart_dir() -> PathBuf {
    std::env::var_os("CLUSTER_TESTS_CHART_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("charts/flight-operator"))
}

/// Renders the chart; panics (never skips) when the chart or helm-python-sdk is missing.
fn render(values: &Value, namespace: &str) -> (String, Vec<Value>) {
    let chart = chart_dir();
    assert!(
        chart.join("Chart.yaml").exists(),
        "the chart is missing: {}",
        chart.display()
    );
    let script = repo_root().join("tests/cluster/chart/render.py");
    let py = python();
    let out = Command::new(&py)
        .arg(&script)
        .arg("--chart")
        .arg(&chart)
        .args(["--name", RELEASE, "--namespace", namespace, "--values"])
        .arg(values.to_string())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); run `make venv` to install helm-python-sdk",
                py.display()
            )
        });
    assert_success(&out, "rendering the chart (chart/render.py)");
    let text = String::from_utf8(out.stdout).expect("utf-8 manifests");
    let objects = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect();
    (text, objects)
}

fn ensure_namespace(name: &str) {
    let out = kubectl(&[
        "create",
        "namespace",
        name,
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    assert_success(&out, "kubectl create namespace --dry-run");
    let out = kubectl_stdin(&["apply", "-f", "-"], &String::from_utf8_lossy(&out.stdout));
    assert_success(&out, "kubectl apply namespace");
}

fn to_yaml_stream(objects: &[&Value]) -> String {
    objects
        .iter()
        .map(|o| serde_yaml::to_string(o).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[tokio::test]
async fn rendered_chart_passes_server_side_dry_run() {
    control_plane();
    ensure_namespace(RELEASE_NAMESPACE);
    ensure_namespace("analytics");
    let modes = [
        ("default", json!({})),
        (
            "namespaced",
            json!({"namespaced": {"enabled": true, "namespace": "analytics"}}),
        ),
        ("minio", json!({"minio": {"enabled": true}})),
    ];
    for (mode, values) in modes {
        let (text, objects) = render(&values, RELEASE_NAMESPACE);
        assert!(
            objects.iter().any(|o| o["kind"] == "Deployment"),
            "{mode}: no Deployment rendered"
        );
        // Objects the chart puts in other namespaces (dev MinIO) need them to exist.
        for o in &objects {
            if let Some(ns) = o["metadata"]["namespace"].as_str() {
                ensure_namespace(ns);
            }
        }
        let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &text);
        assert_success(
            &out,
            &format!("kubectl apply --dry-run=server ({mode} values)"),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("(server dry run)"),
            "{mode}: kubectl did not dry-run on the server:\n{stdout}"
        );
    }
}

fn arg_value(deployment: &Value, flag: &str) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(&format!("{flag}=")).map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_is_enough_for_the_operator() {
    let _serial = OPERATORS.lock().await;
    control_plane();
    let admin = admin_client().await;
    ensure_namespace(RELEASE_NAMESPACE);
    let (_, objects) = render(&json!({}), RELEASE_NAMESPACE);
    let rbac: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .collect();
    assert!(
        rbac.iter().any(|o| o["kind"] == "ClusterRole"),
        "the default values render no ClusterRole"
    );
    let out = kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=cluster-tests",
            "-n",
            RELEASE_NAMESPACE,
            "-f",
            "-",
        ],
        &to_yaml_stream(&rbac),
    );
    assert_success(&out, "applying the chart's RBAC");

    // Act as the chart's ServiceAccount, configured as the chart's Deployment configures it.
    let sa = objects
        .iter()
        .find(|o| o["kind"] == "ServiceAccount")
        .and_then(|o| o["metadata"]["name"].as_str())
        .expect("the chart renders a ServiceAccount")
        .to_owned();
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("the chart renders a Deployment");
    let lease_name = arg_value(deployment, "--lease-name").unwrap_or_else(|| RELEASE.into());
    assert_eq!(
        arg_value(deployment, "--leader-election").as_deref(),
        Some("true")
    );
    assert_eq!(
        arg_value(deployment, "--namespace"),
        None,
        "cluster mode watches all namespaces"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("operator.kubeconfig");
    let cp = control_plane();
    let out = Command::new(cp.script())
        .args(["sa-kubeconfig", RELEASE_NAMESPACE, &sa])
        .arg(&kubeconfig)
        .env("K8S_STATE_DIR", &cp.state_dir)
        .output()
        .expect("run control-plane sa-kubeconfig");
    assert_success(&out, "control-plane sa-kubeconfig");
    let username = format!("system:serviceaccount:{RELEASE_NAMESPACE}:{sa}");
    let forbidden_before = forbidden(&username).len();

    // Work for the operator in a namespace of its own: a pool, a declared dataset with a
    // short TTL, and an upload to discover.
    let ns = unique_namespace(&admin, "rbac").await;
    let store = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", store.path().display());
    let pool: FlightPool = serde_json::from_value(json!({
        "apiVersion": "arrow.trinity.io/v1alpha1",
        "kind": "FlightPool",
        "metadata": {"name": "analytics"},
        "spec": {"replicas": 2, "storage": {"url": url}},
    }))
    .expect("pool");
    Api::<FlightPool>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool");
    let ds: ArrowDataset = serde_json::from_value(json!({
        "apiVersion": "arrow.trinity.io/v1alpha1",
        "kind": "ArrowDataset",
        "metadata": {"name": "short"},
        "spec": {"pool": "analytics", "ttl": "6s"},
    }))
    .expect("dataset");
    let datasets: Api<ArrowDataset> = Api::namespaced(admin.clone(), &ns);
    datasets
        .create(&PostParams::default(), &ds)
        .await
        .expect("create dataset");
    seed_version(&url, &ns, "short", Some(Duration::from_secs(6)), 10).await;
    seed_version(&url, &ns, "uploaded", Some(Duration::from_secs(3600)), 20).await;

    let operator_client = client_from(&kubeconfig).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = OperatorConfig {
        controllers: ControllerConfig {
            namespace: None,
            retry_after: Duration::from_secs(2),
            discovery_interval: Duration::from_secs(5),
            ..ControllerConfig::default()
        },
        metrics_addr: None,
        leader_election: Some(LeaderElection {
            lease_name: lease_name.clone(),
            namespace: RELEASE_NAMESPACE.into(),
            identity: "cluster-tests-0".into(),
            duration_seconds: 15,
            grace_seconds: 5,
        }),
    };
    cluster_tests::init_tracing();
    let operator = tokio::spawn(flight_operator::runtime::run(
        operator_client,
        config,
        async move {
            let _ = stop_rx.await;
        },
    ));

    // It takes the Lease, builds the pool, serves, expires and discovers datasets.
    // A failed wait reports what RBAC refused first: that is the likely cause.
    let progress = async {
        let leases: Api<Lease> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
        wait_for(
            &leases,
            &lease_name,
            "the operator to hold the Lease",
            TIMEOUT,
            |l: Option<&Lease>| {
                l.and_then(|l| l.spec.as_ref())
                    .and_then(|s| s.holder_identity.as_deref())
                    == Some("cluster-tests-0")
            },
        )
        .await;
        wait_for(
            &Api::<StatefulSet>::namespaced(admin.clone(), &ns),
            "analytics",
            "the pool's StatefulSet",
            TIMEOUT,
            |s: Option<&StatefulSet>| s.is_some(),
        )
        .await;
        wait_for(
            &datasets,
            "uploaded",
            "the upload discovered and Ready",
            TIMEOUT,
            |d: Option<&ArrowDataset>| {
                d.and_then(|d| d.status.as_ref())
                    .is_some_and(|s| s.phase == DatasetPhase::Ready)
            },
        )
        .await;
        wait_deleted(&datasets, "short", TIMEOUT).await;
        let left = data_left(&store.path().join(&ns).join("short"));
        assert!(
            left.is_empty(),
            "objects of the expired dataset are left: {left:?}"
        );
        let pools: Api<FlightPool> = Api::namespaced(admin.clone(), &ns);
        wait_for(
            &pools,
            "analytics",
            "the pool status",
            TIMEOUT,
            |p: Option<&FlightPool>| {
                p.and_then(|p| p.status.as_ref())
                    .is_some_and(|s| s.endpoint.is_some() && s.datasets == 1)
            },
        )
        .await;
    };
    if let Err(panic) = std::panic::AssertUnwindSafe(progress).catch_unwind().await {
        let denied = forbidden(&username);
        if denied.len() > forbidden_before {
            eprintln!(
                "the chart's RBAC forbade the operator:\n{}",
                denied[forbidden_before..].join("\n")
            );
        }
        std::panic::resume_unwind(panic);
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(30), operator).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => panic!("the operator stopped with an error: {e}"),
        Ok(Err(e)) => panic!("the operator task failed: {e}"),
        Err(_) => panic!("the operator did not stop within 30s"),
    }

    // The audit log has the operator's requests, and none was forbidden.
    let events = poll(
        "the operator's requests in the audit log",
        TIMEOUT,
        || async {
            let events = audit_events_of(&username);
            events
                .iter()
                .any(|e| e.verb == "delete" && e.request_u_r_i.contains("arrowdatasets"))
                .then_some(events)
        },
    )
    .await;
    for needle in [
        "leases",
        "statefulsets",
        "poddisruptionbudgets",
        "events",
        "flightpools",
    ] {
        assert!(
            events.iter().any(|e| e.request_u_r_i.contains(needle)),
            "no request of the operator touched {needle}"
        );
    }
    let denied = forbidden(&username);
    assert!(
        denied.len() == forbidden_before,
        "the chart's RBAC forbade the operator:\n{}",
        denied[forbidden_before..].join("\n")
    );
}

fn forbidden(username: &str) -> Vec<String> {
    audit_events_of(username)
        .into_iter()
        .filter(|e| e.response_status.as_ref().and_then(|s| s.code) == Some(403))
        .map(|e| format!("{} {}", e.verb, e.request_u_r_i))
        .collect()
}

/// Serializes the tests that run an operator over the whole cluster or the release
/// namespace, so two operators never race for the same objects.
static OPERATORS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `flight-operator` binary: `$FLIGHT_OPERATOR_BIN` (`make test-cluster` passes the one
/// `make build` made), or built (or found up to date) with `cargo build --workspace --bins`,
/// which shares its artifacts with `make build`.
fn operator_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("FLIGHT_OPERATOR_BIN") {
        return PathBuf::from(bin);
    }
    let out = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--workspace", "--bins"])
        .current_dir(repo_root())
        .output()
        .expect("run cargo build");
    assert_success(&out, "cargo build --workspace --bins");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug/flight-operator")
}

/// Kills the child on drop, so a failed test leaves no operator running.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// The chart in namespaced mode, deployed as the chart deploys it: the real `flight-operator`
/// binary with the rendered Deployment's flags and environment, as the release's
/// ServiceAccount, bound only by the namespace Role and the leader-election Role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_binary_runs_with_the_namespaced_chart_rbac() {
    let _serial = OPERATORS.lock().await;
    control_plane();
    let admin = admin_client().await;
    ensure_namespace(RELEASE_NAMESPACE);
    let ns = unique_namespace(&admin, "binary").await;
    let release = "flight-operator-ns";
    let values = json!({
        "namespaced": {"enabled": true, "namespace": ns},
        "discoveryInterval": "5s",
        "retryAfter": "2s",
    });
    let script = repo_root().join("tests/cluster/chart/render.py");
    let out = Command::new(python())
        .arg(&script)
        .arg("--chart")
        .arg(chart_dir())
        .args([
            "--name",
            release,
            "--namespace",
            RELEASE_NAMESPACE,
            "--values",
        ])
        .arg(values.to_string())
        .output()
        .expect("render the chart");
    assert_success(&out, "rendering the chart (namespaced)");
    let objects: Vec<Value> =
        serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
            .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
            .filter(|v| !v.is_null())
            .collect();
    assert!(
        !objects.iter().any(|o| o["kind"] == "ClusterRole"),
        "namespaced mode should need no ClusterRole"
    );
    let rbac: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("ServiceAccount" | "Role" | "RoleBinding")
            )
        })
        .collect();
    let out = kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=cluster-tests",
            "-f",
            "-",
        ],
        &to_yaml_stream(&rbac),
    );
    assert_success(&out, "applying the chart's namespaced RBAC");
    let sa = objects
        .iter()
        .find(|o| o["kind"] == "ServiceAccount")
        .and_then(|o| o["metadata"]["name"].as_str())
        .expect("a ServiceAccount")
        .to_owned();
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let lease_name = arg_value(deployment, "--lease-name").expect("--lease-name");
    assert_eq!(
        arg_value(deployment, "--namespace").as_deref(),
        Some(ns.as_str())
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("operator.kubeconfig");
    let cp = control_plane();
    let out = Command::new(cp.script())
        .args(["sa-kubeconfig", RELEASE_NAMESPACE, &sa])
        .arg(&kubeconfig)
        .env("K8S_STATE_DIR", &cp.state_dir)
        .output()
        .expect("run control-plane sa-kubeconfig");
    assert_success(&out, "control-plane sa-kubeconfig");
    let username = format!("system:serviceaccount:{RELEASE_NAMESPACE}:{sa}");
    let forbidden_before = forbidden(&username).len();

    // The Deployment's flags, with the metrics address moved to a free loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .map(|a| {
            if a.starts_with("--metrics-addr=") {
                format!("--metrics-addr={metrics}")
            } else {
                a.to_owned()
            }
        })
        .collect();
    let log_path = dir.path().join("operator.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let identity = "cluster-tests-binary-0";
    let mut command = Command::new(operator_binary());
    command
        .args(&args)
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("POD_NAME", identity)
        .env("POD_NAMESPACE", RELEASE_NAMESPACE)
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    for env in container["env"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (env["name"].as_str(), env["value"].as_str()) {
            command.env(name, value);
        }
    }
    let mut child = ChildGuard(command.spawn().expect("start flight-operator"));
    let pid = child.0.id();
    let log_tail = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };

    let progress = async {
        poll("the operator's /readyz", TIMEOUT, || async {
            if let Ok(Some(status)) = child_status(pid) {
                panic!("flight-operator exited ({status}):\n{}", log_tail());
            }
            matches!(http_get(&metrics, "/readyz"), Some((200, _))).then_some(())
        })
        .await;
        let leases: Api<Lease> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
        wait_for(
            &leases,
            &lease_name,
            "the binary to hold the Lease",
            TIMEOUT,
            |l: Option<&Lease>| {
                l.and_then(|l| l.spec.as_ref())
                    .and_then(|s| s.holder_identity.as_deref())
                    == Some(identity)
            },
        )
        .await;

        let store = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", store.path().display());
        let pool: FlightPool = serde_json::from_value(json!({
            "apiVersion": "arrow.trinity.io/v1alpha1",
            "kind": "FlightPool",
            "metadata": {"name": "analytics"},
            "spec": {"replicas": 1, "storage": {"url": url}},
        }))
        .expect("pool");
        Api::<FlightPool>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &pool)
            .await
            .expect("create pool");
        let datasets: Api<ArrowDataset> = Api::namespaced(admin.clone(), &ns);
        let ds: ArrowDataset = serde_json::from_value(json!({
            "apiVersion": "arrow.trinity.io/v1alpha1",
            "kind": "ArrowDataset",
            "metadata": {"name": "short"},
            "spec": {"pool": "analytics", "ttl": "6s"},
        }))
        .expect("dataset");
        datasets
            .create(&PostParams::default(), &ds)
            .await
            .expect("create dataset");
        seed_version(&url, &ns, "short", Some(Duration::from_secs(6)), 10).await;
        seed_version(&url, &ns, "uploaded", Some(Duration::from_secs(3600)), 20).await;

        wait_for(
            &Api::<StatefulSet>::namespaced(admin.clone(), &ns),
            "analytics",
            "the pool's StatefulSet",
            TIMEOUT,
            |s: Option<&StatefulSet>| s.is_some(),
        )
        .await;
        wait_for(
            &datasets,
            "uploaded",
            "the upload discovered and Ready",
            TIMEOUT,
            |d: Option<&ArrowDataset>| {
                d.and_then(|d| d.status.as_ref())
                    .is_some_and(|s| s.phase == DatasetPhase::Ready)
            },
        )
        .await;
        wait_deleted(&datasets, "short", TIMEOUT).await;
        assert!(data_left(&store.path().join(&ns).join("short")).is_empty());
        let (code, body) = http_get(&metrics, "/metrics").expect("GET /metrics");
        assert_eq!(code, 200);
        assert!(body.contains("flight_operator_reconciles"), "{body}");
    };
    if let Err(panic) = std::panic::AssertUnwindSafe(progress).catch_unwind().await {
        let denied = forbidden(&username);
        eprintln!("flight-operator log:\n{}", log_tail());
        if denied.len() > forbidden_before {
            eprintln!(
                "the chart's RBAC forbade the operator:\n{}",
                denied[forbidden_before..].join("\n")
            );
        }
        std::panic::resume_unwind(panic);
    }

    // SIGTERM (as the kubelet sends it): a clean exit that releases the Lease.
    let out = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .output()
        .expect("kill");
    assert_success(&out, "kill -TERM flight-operator");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for flight-operator") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "flight-operator did not exit within 30s of SIGTERM:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "flight-operator exited with {status}:\n{}",
        log_tail()
    );
    let lease = Api::<Lease>::namespaced(admin.clone(), RELEASE_NAMESPACE)
        .get(&lease_name)
        .await
        .expect("lease");
    assert_ne!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some(identity),
        "the Lease was not released on shutdown: {lease:#?}"
    );
    let denied = forbidden(&username);
    assert!(
        denied.len() == forbidden_before,
        "the chart's RBAC forbade the operator:\n{}",
        denied[forbidden_before..].join("\n")
    );
    assert!(
        audit_events_of(&username)
            .iter()
            .any(|e| e.verb == "delete" && e.request_u_r_i.contains("arrowdatasets")),
        "the binary's requests are not in the audit log"
    );
}

/// Exit status of a process that is our child, without reaping others: `None` while it runs.
fn child_status(pid: u32) -> std::io::Result<Option<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
    match stat {
        Ok(text) if text.contains(") Z ") => Ok(Some("exited (zombie)".into())),
        Ok(_) => Ok(None),
        Err(_) => Ok(Some("gone".into())),
    }
}
