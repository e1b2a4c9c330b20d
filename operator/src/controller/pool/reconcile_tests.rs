//! Reconcile tests of the FlightPool controller against a mocked API server.

use std::sync::Arc;

use http::Method;
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use super::{reconcile, RESYNC};
use crate::crd::{FlightPool, FlightPoolStatus};
use crate::fixtures::{context, events_path, path, t, ApiServerVerifier, FakeNodes};

const MINIMAL: &str = include_str!("../../../tests/fixtures/pool-minimal.yaml");
const FULL: &str = include_str!("../../../tests/fixtures/pool-full.yaml");

fn pool(yaml: &str) -> FlightPool {
    serde_yaml::from_str(yaml).expect("fixture parses")
}

/// The applies of one pool reconcile, in order; the StatefulSet answer carries `ready` pods.
/// Returns the bodies sent.
async fn expect_applies(
    api: &mut ApiServerVerifier,
    ns: &str,
    name: &str,
    ready: i32,
) -> Vec<Value> {
    let mut bodies = Vec::new();
    for (gv, plural, object) in [
        ("v1", "configmaps", format!("{name}-config")),
        ("v1", "services", format!("{name}-headless")),
        ("v1", "services", name.to_owned()),
        ("apps/v1", "statefulsets", name.to_owned()),
        ("policy/v1", "poddisruptionbudgets", name.to_owned()),
    ] {
        let call = api
            .expect(Method::PATCH, &path(gv, ns, plural, &object))
            .await;
        assert!(
            call.query.contains("fieldManager=flight-operator"),
            "{}",
            call.query
        );
        assert!(call.query.contains("force=true"), "{}", call.query);
        let mut answer = call.body.clone();
        if plural == "statefulsets" {
            let replicas = answer["spec"]["replicas"].clone();
            answer["status"] = json!({ "replicas": replicas, "readyReplicas": ready });
        }
        bodies.push(call.body.clone());
        call.respond(200, &answer);
    }
    bodies
}

/// Answers the operator's reads of the FULL fixture's storage credentials (one per key).
async fn expect_credentials(api: &mut ApiServerVerifier) {
    for _ in 0..2 {
        expect_secret(api).await;
    }
}

/// Answers the read of the operator's token, before it asks the nodes for their stats.
async fn expect_operator_token(api: &mut ApiServerVerifier) {
    api.expect(Method::GET, &path("v1", "data", "secrets", "flight-auth"))
        .await
        .respond(
            200,
            &json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "flight-auth", "namespace": "data"},
                // base64 of "operator-secret"
                "data": {"operator-token": "b3BlcmF0b3Itc2VjcmV0"},
            }),
        );
}

async fn expect_secret(api: &mut ApiServerVerifier) {
    api.expect(Method::GET, &path("v1", "data", "secrets", "minio-creds"))
        .await
        .respond(
            200,
            &json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "minio-creds", "namespace": "data"},
                // base64 of "user" and "password"
                "data": {"user": "dXNlcg==", "password": "cGFzc3dvcmQ="},
            }),
        );
}

#[tokio::test]
async fn pool_create_applies_every_object_and_reports_status() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut api, _w) = context(t(1_000), nodes);
    let p = Arc::new(pool(MINIMAL));
    let run = tokio::spawn(reconcile(Arc::clone(&p), Arc::clone(&ctx)));

    let bodies = expect_applies(&mut api, "default", "scratch", 0).await;
    assert_eq!(bodies[0]["kind"], "ConfigMap");
    assert_eq!(bodies[3]["kind"], "StatefulSet");
    assert_eq!(
        bodies[3]["metadata"]["ownerReferences"][0]["kind"],
        "FlightPool"
    );
    let status = api
        .expect(
            Method::PATCH,
            &path(
                "arrow.trinity.io/v1alpha1",
                "default",
                "flightpools",
                "scratch/status",
            ),
        )
        .await;
    assert!(status.query.contains("fieldManager=flight-operator"));
    let s = status.status_of(&*p);
    assert_eq!(s["status"]["endpoint"], "grpc://scratch.default.svc:8815");
    assert_eq!(s["status"]["replicas"], 1);
    assert_eq!(s["status"]["readyReplicas"], 0);
    assert_eq!(s["status"]["observedGeneration"], 1);
    let ready = &s["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready condition")
        .clone();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "ReplicasNotReady");

    let action = run.await.expect("task").expect("reconcile");
    assert_eq!(action, Action::requeue(RESYNC));
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn pool_update_and_scale_reach_the_statefulset_and_peers() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut api, _w) = context(t(1_000), nodes);
    let mut p = pool(FULL);
    p.spec.replicas = 5;
    p.spec.image = Some("registry.example.com/flight-node:2.0.0".into());
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), Arc::clone(&ctx)));

    let bodies = expect_applies(&mut api, "data", "analytics", 5).await;
    expect_credentials(&mut api).await;
    expect_operator_token(&mut api).await;
    let peers: serde_yaml::Value =
        serde_yaml::from_str(bodies[0]["data"]["peers.yaml"].as_str().expect("peers"))
            .expect("yaml");
    assert_eq!(peers["peers"].as_sequence().map(Vec::len), Some(5));
    assert_eq!(bodies[3]["spec"]["replicas"], 5);
    assert_eq!(
        bodies[3]["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/flight-node:2.0.0"
    );
    let status = api
        .expect(
            Method::PATCH,
            &path(
                "arrow.trinity.io/v1alpha1",
                "data",
                "flightpools",
                "analytics/status",
            ),
        )
        .await
        .status_of(&p);
    assert_eq!(status["status"]["readyReplicas"], 5);
    assert_eq!(
        status["status"]["endpoint"],
        "grpc+tls://analytics.data.svc:8815"
    );
    let ready = status["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .expect("Ready");
    assert_eq!(ready["status"], "True");
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn reconciling_twice_writes_nothing_new() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut api, _w) = context(t(1_000), Arc::clone(&nodes));
    let p = pool(FULL);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), Arc::clone(&ctx)));
    let first = expect_applies(&mut api, "data", "analytics", 3).await;
    expect_credentials(&mut api).await;
    expect_operator_token(&mut api).await;
    let status = api
        .expect(
            Method::PATCH,
            &path(
                "arrow.trinity.io/v1alpha1",
                "data",
                "flightpools",
                "analytics/status",
            ),
        )
        .await
        .status_of(&p);
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    api.done().await;

    // Second pass, later, with the status the first pass wrote.
    let mut p2 = p;
    p2.status =
        Some(serde_json::from_value::<FlightPoolStatus>(status["status"].clone()).expect("status"));
    let (ctx, mut api, _w) = context(t(5_000), nodes);
    let run = tokio::spawn(reconcile(Arc::new(p2), Arc::clone(&ctx)));
    let second = expect_applies(&mut api, "data", "analytics", 3).await;
    expect_credentials(&mut api).await;
    expect_operator_token(&mut api).await;
    assert_eq!(
        first, second,
        "identical applies are no-ops for server-side apply"
    );
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    // No status write, no event.
    api.done().await;
}

#[tokio::test]
async fn invalid_pool_spec_becomes_a_condition_and_an_event() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, mut api, _w) = context(t(1_000), Arc::clone(&nodes));
    let mut p = pool(FULL);
    if let Some(c) = p.spec.contracts.get_mut("sales") {
        c.fields[1].type_ = "text".into();
    }
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), Arc::clone(&ctx)));
    let event = api.expect(Method::POST, &events_path("data")).await.echo();
    assert_eq!(event["reason"], "InvalidSpec");
    assert_eq!(event["type"], "Warning");
    let status = api
        .expect(
            Method::PATCH,
            &path(
                "arrow.trinity.io/v1alpha1",
                "data",
                "flightpools",
                "analytics/status",
            ),
        )
        .await
        .status_of(&p);
    let valid = status["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Valid")
        .cloned()
        .expect("Valid");
    assert_eq!(valid["status"], "False");
    assert_eq!(valid["reason"], "InvalidSpec");
    assert!(valid["message"]
        .as_str()
        .unwrap_or_default()
        .contains("text"));
    assert_eq!(valid["observedGeneration"], 4);
    let action = run.await.expect("task").expect("reconcile");
    assert_eq!(action, Action::await_change());
    drop(ctx);
    api.done().await;

    // The same invalid spec again: no new event, no write, no crash loop.
    p.status = Some(serde_json::from_value(status["status"].clone()).expect("status"));
    let (ctx, api, _w) = context(t(2_000), nodes);
    let action = reconcile(Arc::new(p), Arc::clone(&ctx))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn unusable_storage_is_a_condition_and_one_event() {
    let nodes = Arc::new(FakeNodes::default());
    *nodes.storage_problem.lock().expect("lock") = Some(
        "storage s3://scratch-bucket is not usable (listing failed): the bucket does not exist"
            .into(),
    );
    let (ctx, mut api, _w) = context(t(1_000), Arc::clone(&nodes));
    let mut p = pool(MINIMAL);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), Arc::clone(&ctx)));
    expect_applies(&mut api, "default", "scratch", 1).await;
    let status = api
        .expect(
            Method::PATCH,
            &path(
                "arrow.trinity.io/v1alpha1",
                "default",
                "flightpools",
                "scratch/status",
            ),
        )
        .await
        .status_of(&p);
    let storage = status["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "StorageReady")
        .cloned()
        .expect("StorageReady");
    assert_eq!(storage["status"], "False");
    assert_eq!(storage["reason"], "StorageUnusable");
    assert!(storage["message"]
        .as_str()
        .unwrap_or_default()
        .contains("the bucket does not exist"));
    let event = api
        .expect(Method::POST, &events_path("default"))
        .await
        .echo();
    assert_eq!(event["reason"], "StorageUnusable");
    assert_eq!(event["type"], "Warning");
    let action = run.await.expect("task").expect("reconcile");
    assert_ne!(
        action,
        Action::requeue(RESYNC),
        "a broken storage is looked at again sooner"
    );
    drop(ctx);
    api.done().await;

    // Still broken on the next pass: no second Event. Then fixed: the condition turns True.
    p.status = Some(serde_json::from_value(status["status"].clone()).expect("status"));
    let (ctx, mut api, _w) = context(t(2_000), Arc::clone(&nodes));
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), Arc::clone(&ctx)));
    expect_applies(&mut api, "default", "scratch", 1).await;
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    api.done().await;

    *nodes.storage_problem.lock().expect("lock") = None;
    *nodes.cache.lock().expect("lock") = Some((0, 1 << 30));
    let (ctx, mut api, _w) = context(t(3_000), nodes);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), Arc::clone(&ctx)));
    expect_applies(&mut api, "default", "scratch", 1).await;
    let status = api
        .expect(
            Method::PATCH,
            &path(
                "arrow.trinity.io/v1alpha1",
                "default",
                "flightpools",
                "scratch/status",
            ),
        )
        .await
        .status_of(&p);
    let storage = status["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "StorageReady")
        .cloned()
        .expect("StorageReady");
    assert_eq!(storage["status"], "True");
    assert_eq!(
        run.await.expect("task").expect("reconcile"),
        Action::requeue(RESYNC)
    );
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn cache_fill_of_the_ready_nodes_is_in_the_status() {
    let nodes = Arc::new(FakeNodes::default());
    *nodes.cache.lock().expect("lock") = Some((256 << 20, 1 << 30));
    let (ctx, mut api, _w) = context(t(1_000), Arc::clone(&nodes));
    let p = pool(MINIMAL);
    let run = tokio::spawn(reconcile(Arc::new(p.clone()), Arc::clone(&ctx)));
    expect_applies(&mut api, "default", "scratch", 1).await;
    let status = api
        .expect(
            Method::PATCH,
            &path(
                "arrow.trinity.io/v1alpha1",
                "default",
                "flightpools",
                "scratch/status",
            ),
        )
        .await
        .status_of(&p);
    let cache = &status["status"]["cache"];
    assert_eq!(cache["cachedBytes"], 256 << 20, "{status}");
    assert_eq!(cache["capacityBytes"], 1 << 30);
    assert_eq!(cache["percentage"], "25%");
    assert_eq!(cache["cached"], "256.0 MiB");
    assert_eq!(cache["nodes"], 1);
    assert!(nodes
        .calls()
        .iter()
        .any(|(a, uri)| a == "stats" && uri.contains("scratch-0.scratch-headless.default.svc")));
    run.await.expect("task").expect("reconcile");
    drop(ctx);
    api.done().await;
}
