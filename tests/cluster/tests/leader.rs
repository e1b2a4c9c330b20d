//! Leader election on a real Lease: of two operators only the holder reconciles; when it
//! stops, the other takes over.

use std::time::Duration;

use cluster_tests::{
    admin_client, control_plane, init_tracing, poll, unique_name, unique_namespace, wait_for,
    TIMEOUT,
};
use flight_operator::crd::FlightPool;
use flight_operator::runtime::{LeaderElection, OperatorConfig};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Instance {
    metrics: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), flight_operator::runtime::RunError>>,
}

fn start(client: Client, ns: &str, lease: &str, identity: &str) -> Instance {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let config = OperatorConfig {
        controllers: cluster_tests::controller_config(ns),
        metrics_addr: Some(metrics.parse().expect("addr")),
        leader_election: Some(LeaderElection {
            lease_name: lease.into(),
            namespace: ns.into(),
            identity: identity.into(),
            duration_seconds: 4,
            grace_seconds: 1,
        }),
    };
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(flight_operator::runtime::run(client, config, async move {
        let _ = rx.await;
    }));
    Instance {
        metrics,
        stop,
        task,
    }
}

/// Pool reconciles an instance started, from its `/metrics`.
async fn reconciles(addr: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("flight_operator_reconciles_total{controller=\"pool\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum(),
    )
}

async fn create_pool(client: &Client, ns: &str, name: &str) {
    let pool: FlightPool = serde_json::from_value(json!({
        "apiVersion": "arrow.trinity.io/v1alpha1",
        "kind": "FlightPool",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "storage": {"url": "file:///tmp/unused"}},
    }))
    .expect("pool");
    Api::<FlightPool>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool");
}

fn holder(lease: Option<&Lease>) -> Option<String> {
    lease?.spec.as_ref()?.holder_identity.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_reconciles_and_the_other_takes_over() {
    control_plane();
    init_tracing();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "leader").await;
    let lease_name = unique_name("lease");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);

    let a = start(client.clone(), &ns, &lease_name, "op-a");
    wait_for(
        &leases,
        &lease_name,
        "op-a to lead",
        TIMEOUT,
        |l: Option<&Lease>| holder(l).as_deref() == Some("op-a"),
    )
    .await;
    let b = start(client.clone(), &ns, &lease_name, "op-b");
    // b is up (its metrics answer) but waits.
    poll("op-b's metrics endpoint", TIMEOUT, || async {
        reconciles(&b.metrics).await
    })
    .await;

    create_pool(&client, &ns, "first").await;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    wait_for(
        &sts,
        "first",
        "the leader to build the pool",
        TIMEOUT,
        |s: Option<&StatefulSet>| s.is_some(),
    )
    .await;
    assert!(reconciles(&a.metrics).await.unwrap_or(0) >= 1);
    assert_eq!(
        reconciles(&b.metrics).await,
        Some(0),
        "the follower reconciled while the leader held the Lease"
    );
    let lease = leases.get(&lease_name).await.expect("lease");
    assert_eq!(holder(Some(&lease)).as_deref(), Some("op-a"));

    // The leader stops; the follower takes the Lease and does the work.
    let _ = a.stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(30), a.task)
        .await
        .expect("op-a stops")
        .expect("op-a task");
    assert!(result.is_ok(), "op-a: {result:?}");
    wait_for(
        &leases,
        &lease_name,
        "op-b to lead",
        TIMEOUT,
        |l: Option<&Lease>| holder(l).as_deref() == Some("op-b"),
    )
    .await;
    create_pool(&client, &ns, "second").await;
    wait_for(
        &sts,
        "second",
        "the new leader to build the pool",
        TIMEOUT,
        |s: Option<&StatefulSet>| s.is_some(),
    )
    .await;
    let _ = b.stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(30), b.task)
        .await
        .expect("op-b stops")
        .expect("op-b task");
    assert!(result.is_ok(), "op-b: {result:?}");
}
