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
