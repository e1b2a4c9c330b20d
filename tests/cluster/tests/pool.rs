//! The FlightPool controller against the real API server: owned objects, status, a spec
//! change rolling through, idempotent reconciles, and an invalid spec.

use std::collections::BTreeMap;
use std::sync::Arc;

use cluster_tests::{
    admin_client, control_plane, controller_config, poll, unique_namespace, wait_for, Operator,
    TIMEOUT,
};
use flight_operator::controller::node::FlightNodes;
use flight_operator::controller::{pool, Context};
use flight_operator::crd::FlightPool;
use flight_operator::metrics::Metrics;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

fn pool_object(name: &str, store: &str, replicas: i32) -> FlightPool {
    serde_json::from_value(json!({
        "apiVersion": "arrow.trinity.io/v1alpha1",
        "kind": "FlightPool",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "image": "ghcr.io/trinity-data/flight-node:0.1.0",
            "memoryLimit": "256MiB",
            "storage": {"url": store},
            "defaultTtl": "6h",
            "contracts": {
                "sales": {"fields": [
                    {"name": "id", "type": "int64", "nullable": false},
                    {"name": "amount", "type": "decimal128(12,2)"},
                ]},
            },
        },
    }))
    .expect("pool json")
}

/// Resource versions of the pool and of everything it owns.
async fn versions(client: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let rv = |kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (
            format!("{kind}/{}", meta.name.clone().unwrap_or_default()),
            meta.resource_version.clone().unwrap_or_default(),
        )
    };
    let mut out = BTreeMap::new();
    let p = Api::<FlightPool>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("pool");
    out.extend([rv("FlightPool", &p.metadata)]);
    let s = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("sts");
    out.extend([rv("StatefulSet", &s.metadata)]);
    for svc in [name.to_owned(), format!("{name}-headless")] {
        let s = Api::<Service>::namespaced(client.clone(), ns)
            .get(&svc)
            .await
            .expect("service");
        out.extend([rv("Service", &s.metadata)]);
    }
    let c = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(&format!("{name}-config"))
        .await
        .expect("configmap");
    out.extend([rv("ConfigMap", &c.metadata)]);
    let d = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("pdb");
    out.extend([rv("PodDisruptionBudget", &d.metadata)]);
    out
}

fn assert_owned_by<K: Resource>(obj: &K, pool: &FlightPool) {
    let owners = obj.meta().owner_references.clone().unwrap_or_default();
    assert_eq!(
        owners.len(),
        1,
        "{:?} should have one owner: {owners:#?}",
        obj.meta().name
    );
    let o = &owners[0];
    assert_eq!(o.kind, "FlightPool");
    assert_eq!(o.api_version, "arrow.trinity.io/v1alpha1");
    assert_eq!(Some(&o.name), pool.metadata.name.as_ref());
    assert_eq!(Some(&o.uid), pool.metadata.uid.as_ref());
    assert_eq!(o.controller, Some(true), "{:?}", obj.meta().name);
    let labels = obj.meta().labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("flight-operator"),
        "{:?}: {labels:?}",
        obj.meta().name
    );
}

fn args_of(sts: &StatefulSet) -> Vec<String> {
    let c = &sts
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .containers[0];
    let mut all = c.command.clone().unwrap_or_default();
    all.extend(c.args.clone().unwrap_or_default());
    all.extend(
        c.env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| format!("{}={}", e.name, e.value.unwrap_or_default())),
    );
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_reconciles_into_owned_objects_and_rolls_spec_changes() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "pool").await;
    let store = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", store.path().display());
    let operator = Operator::start(client.clone(), controller_config(&ns));

    let pools: Api<FlightPool> = Api::namespaced(client.clone(), &ns);
    pools
        .create(&PostParams::default(), &pool_object("analytics", &url, 2))
        .await
        .expect("create pool");
    let pool = wait_for(
        &pools,
        "analytics",
        "a status with an endpoint",
        TIMEOUT,
        |p: Option<&FlightPool>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.endpoint.is_some() && s.observed_generation == Some(1))
        },
    )
    .await;
    let status = pool.status.clone().expect("status");
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("grpc://analytics.{ns}.svc:8815").as_str())
    );
    let cond = |t: &str| status.conditions.iter().find(|c| c.type_ == t).cloned();
    assert_eq!(cond("Valid").map(|c| c.status).as_deref(), Some("True"));
    // No kubelet here: nothing becomes ready, and the status says so.
    let ready = cond("Ready").expect("Ready condition");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "ReplicasNotReady");
    assert_eq!(ready.observed_generation, Some(1));
    assert_eq!(status.ready_replicas, 0);

    // Everything the pool owns exists, is owned by it, and is what the design says.
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get("analytics")
        .await
        .expect("StatefulSet analytics");
    assert_owned_by(&sts, &pool);
    let spec = sts.spec.clone();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(spec.service_name.as_deref(), Some("analytics-headless"));
    let pod = spec.template.spec.clone().expect("pod spec");
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("ghcr.io/trinity-data/flight-node:0.1.0")
    );
    let args = args_of(&sts);
    assert!(
        args.iter().any(|a| a.contains(&url)),
        "the storage URL reaches the node: {args:?}"
    );

    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let client_svc = services.get("analytics").await.expect("client Service");
    assert_owned_by(&client_svc, &pool);
    let ports: Vec<i32> = client_svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .iter()
        .map(|p| p.port)
        .collect();
    assert!(ports.contains(&8815), "{ports:?}");
    // The API server allocated a cluster IP for the client Service.
    let ip = client_svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .unwrap_or_default();
    assert!(ip.starts_with("10.96."), "cluster IP {ip:?}");
    let headless = services
        .get("analytics-headless")
        .await
        .expect("headless Service");
    assert_owned_by(&headless, &pool);
    assert_eq!(
        headless.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = cms.get("analytics-config").await.expect("ConfigMap");
    assert_owned_by(&cm, &pool);
    let peers = cm
        .data
        .as_ref()
        .and_then(|d| d.get("peers.yaml"))
        .cloned()
        .unwrap_or_default();
    assert!(
        peers.contains(&format!("analytics-1.analytics-headless.{ns}.svc:8815")),
        "{peers}"
    );
    assert!(!peers.contains("analytics-2."), "{peers}");

    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let pdb = pdbs.get("analytics").await.expect("PodDisruptionBudget");
    assert_owned_by(&pdb, &pool);

    // A spec change rolls through to every object.
    let change = json!({"spec": {"replicas": 3, "image": "ghcr.io/trinity-data/flight-node:0.2.0", "memoryLimit": "512MiB"}});
    pools
        .patch("analytics", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("change the pool");
    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let sts = wait_for(
        &sts_api,
        "analytics",
        "3 replicas of image 0.2.0",
        TIMEOUT,
        |s: Option<&StatefulSet>| {
            s.map(|s| &s.spec).is_some_and(|spec| {
                spec.replicas == Some(3)
                    && spec
                        .template
                        .spec
                        .as_ref()
                        .and_then(|p| p.containers[0].image.as_deref())
                        == Some("ghcr.io/trinity-data/flight-node:0.2.0")
            })
        },
    )
    .await;
    let args = args_of(&sts);
    assert!(
        args.iter().any(|a| a.contains("512MiB")),
        "the new memory limit reaches the node: {args:?}"
    );
    let cm = wait_for(
        &cms,
        "analytics-config",
        "3 peers",
        TIMEOUT,
        |c: Option<&ConfigMap>| {
            c.and_then(|c| c.data.as_ref())
                .and_then(|d| d.get("peers.yaml"))
                .is_some_and(|p| p.contains("analytics-2."))
        },
    )
    .await;
    assert!(cm.data.is_some());
    let pool = wait_for(
        &pools,
        "analytics",
        "status of generation 2",
        TIMEOUT,
        |p: Option<&FlightPool>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.observed_generation == Some(2))
        },
    )
    .await;
    assert_eq!(pool.metadata.generation, Some(2));

    // Drift is corrected: another field manager scales the StatefulSet; the operator (which
    // owns the field through server-side apply) takes it back.
    let scale = json!({"spec": {"replicas": 7}});
    sts_api
        .patch("analytics", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .expect("scale the StatefulSet by hand");
    wait_for(
        &sts_api,
        "analytics",
        "replicas back at 3",
        TIMEOUT,
        |s: Option<&StatefulSet>| s.is_some_and(|s| s.spec.replicas == Some(3)),
    )
    .await;
    // A label added by someone else is left alone (only the operator's fields are its own).
    let label = json!({"metadata": {"labels": {"team": "data"}}});
    sts_api
        .patch("analytics", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("label the StatefulSet");

    // Reconciling again changes nothing: stop the controllers, wait for the world to settle,
    // reconcile twice by hand and compare every resourceVersion.
    poll("the operator to reconcile the pool", TIMEOUT, || async {
        (operator.reconciles("pool") >= 2).then_some(())
    })
    .await;
    operator.stop().await;
    let before = versions(&client, &ns, "analytics").await;
    let (store, _writer) = reflector::store();
    let ctx = Arc::new(Context::new(
        client.clone(),
        controller_config(&ns),
        Arc::new(Metrics::new()),
        store,
        Arc::new(FlightNodes::default()),
    ));
    for round in 1..=2 {
        let current = pools.get("analytics").await.expect("pool");
        pool::reconcile(Arc::new(current), Arc::clone(&ctx))
            .await
            .unwrap_or_else(|e| panic!("reconcile {round} failed: {e}"));
        let after = versions(&client, &ns, "analytics").await;
        let changed: Vec<_> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .collect();
        assert!(
            changed.is_empty(),
            "reconcile {round} of an unchanged pool wrote {changed:?} (before {before:?})"
        );
    }

    // A restarted operator does not rewrite anything either.
    let operator = Operator::start(client.clone(), controller_config(&ns));
    poll(
        "the restarted operator to reconcile the pool",
        TIMEOUT,
        || async { (operator.reconciles("pool") >= 1).then_some(()) },
    )
    .await;
    operator.stop().await;
    let after = versions(&client, &ns, "analytics").await;
    assert_eq!(before, after, "a restarted operator rewrote objects");
    let sts = sts_api.get("analytics").await.expect("sts");
    assert_eq!(
        sts.labels().get("team").map(String::as_str),
        Some("data"),
        "the operator removed a label it does not own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_pool_spec_gets_a_condition_and_an_event() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "pool-invalid").await;
    let operator = Operator::start(client.clone(), controller_config(&ns));
    let pools: Api<FlightPool> = Api::namespaced(client.clone(), &ns);
    // Passes the schema, fails the operator's own check: an Arrow type that does not exist.
    let mut bad = pool_object("broken", "file:///tmp/unused", 1);
    bad.spec.contracts.clear();
    let bad: FlightPool = {
        let mut v = serde_json::to_value(&bad).expect("json");
        v["spec"]["contracts"] = json!({"sales": {"fields": [{"name": "id", "type": "int65"}]}});
        serde_json::from_value(v).expect("pool")
    };
    pools
        .create(&PostParams::default(), &bad)
        .await
        .expect("the schema accepts the pool");
    let pool = wait_for(
        &pools,
        "broken",
        "Valid=False",
        TIMEOUT,
        |p: Option<&FlightPool>| {
            p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Valid" && c.status == "False")
            })
        },
    )
    .await;
    let valid = pool
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Valid"))
        .cloned()
        .expect("Valid");
    assert!(valid.message.contains("int65"), "{valid:?}");
    // Nothing was created for it.
    assert!(Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get_opt("broken")
        .await
        .expect("get")
        .is_none());
    // A Warning Event names the problem.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let event = poll("an InvalidSpec Event", TIMEOUT, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("InvalidSpec"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("broken")
    );
    assert!(event.note.unwrap_or_default().contains("int65"));

    // Fixing the spec brings the pool up.
    let fixed =
        json!({"spec": {"contracts": {"sales": {"fields": [{"name": "id", "type": "int64"}]}}}});
    pools
        .patch("broken", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .expect("fix the pool");
    wait_for(
        &Api::<StatefulSet>::namespaced(client.clone(), &ns),
        "broken",
        "the StatefulSet of the fixed pool",
        TIMEOUT,
        |s: Option<&StatefulSet>| s.is_some(),
    )
    .await;
    let pool = wait_for(
        &pools,
        "broken",
        "Valid=True",
        TIMEOUT,
        |p: Option<&FlightPool>| {
            p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Valid" && c.status == "True")
            })
        },
    )
    .await;
    assert_eq!(pool.name_any(), "broken");
    operator.stop().await;
}

/// Every field of the pool spec in use (Secrets, TLS, auth, scheduling): the API server
/// accepts the StatefulSet, Services and PDB the operator builds from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_spec_builds_objects_the_api_server_accepts() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "pool-full").await;
    let path = cluster_tests::repo_root().join("operator/tests/fixtures/pool-full.yaml");
    let text = std::fs::read_to_string(&path).expect("pool-full.yaml");
    let mut value: serde_json::Value = serde_yaml::from_str(&text).expect("yaml");
    value["metadata"] = json!({"name": "analytics"});
    let pool: FlightPool = serde_json::from_value(value).expect("pool");
    let operator = Operator::start(client.clone(), controller_config(&ns));
    let pools: Api<FlightPool> = Api::namespaced(client.clone(), &ns);
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("the API server accepts the full pool");
    let pool = wait_for(
        &pools,
        "analytics",
        "a status",
        TIMEOUT,
        |p: Option<&FlightPool>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.observed_generation == Some(1) && s.endpoint.is_some())
        },
    )
    .await;
    let valid = pool
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Valid"))
        .cloned()
        .expect("Valid");
    assert_eq!(valid.status, "True", "{valid:?}");
    assert_eq!(
        pool.status.as_ref().and_then(|s| s.endpoint.as_deref()),
        Some(format!("grpc+tls://analytics.{ns}.svc:8815").as_str())
    );
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get("analytics")
        .await
        .expect("StatefulSet");
    let pod = sts.spec.template.spec.clone().expect("pod spec");
    assert_eq!(pod.priority_class_name.as_deref(), Some("data-high"));
    assert!(pod.tolerations.unwrap_or_default().len() == 1);
    let volumes: Vec<String> = pod
        .volumes
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.secret.as_ref().and_then(|s| s.secret_name.clone()))
        .collect();
    assert!(volumes.contains(&"flight-tls".to_owned()), "{volumes:?}");
    assert!(volumes.contains(&"flight-auth".to_owned()), "{volumes:?}");
    for name in ["analytics", "analytics-headless"] {
        assert!(Api::<Service>::namespaced(client.clone(), &ns)
            .get_opt(name)
            .await
            .expect("get")
            .is_some());
    }
    assert!(Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .get_opt("analytics")
        .await
        .expect("get")
        .is_some());
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_ready_says_whether_the_pools_storage_answers() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "storage-ready").await;
    let store = tempfile::tempdir().expect("tempdir");
    let api: Api<FlightPool> = Api::namespaced(client.clone(), &ns);
    let good = pool_object("good", &format!("file://{}", store.path().display()), 1);
    api.create(&PostParams::default(), &good)
        .await
        .expect("create good");
    // An S3 bucket without credentials, where no instance metadata service gives any.
    let mut bad = pool_object("bad", "s3://datasets/prod", 1);
    bad.spec.storage.endpoint = Some("http://127.0.0.1:9".into());
    bad.spec.storage.allow_http = true;
    api.create(&PostParams::default(), &bad)
        .await
        .expect("create bad");
    let operator = Operator::start(client.clone(), controller_config(&ns));
    let condition = |p: Option<&FlightPool>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "StorageReady"))
            .cloned()
    };
    let good = wait_for(
        &api,
        "good",
        "StorageReady",
        TIMEOUT,
        |p: Option<&FlightPool>| condition(p).is_some(),
    )
    .await;
    assert_eq!(condition(Some(&good)).expect("condition").status, "True");
    let bad = wait_for(
        &api,
        "bad",
        "StorageReady",
        TIMEOUT,
        |p: Option<&FlightPool>| condition(p).is_some(),
    )
    .await;
    let c = condition(Some(&bad)).expect("condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "StorageUnusable")
    );
    assert!(
        c.message.contains("no storage credentials were given"),
        "{}",
        c.message
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    poll("a StorageUnusable Event", TIMEOUT, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("StorageUnusable"))
    })
    .await;
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_reaches_the_statefulset_and_the_scale_subresource_has_a_selector() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "scale").await;
    let store = tempfile::tempdir().expect("tempdir");
    let api: Api<FlightPool> = Api::namespaced(client.clone(), &ns);
    let pool = pool_object("elastic", &format!("file://{}", store.path().display()), 1);
    api.create(&PostParams::default(), &pool)
        .await
        .expect("create");
    let operator = Operator::start(client.clone(), controller_config(&ns));
    wait_for(
        &api,
        "elastic",
        "a status with a selector",
        TIMEOUT,
        |p: Option<&FlightPool>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.selector.is_some())
        },
    )
    .await;
    let out = cluster_tests::kubectl(&["scale", "fpool", "elastic", "--replicas=3", "-n", &ns]);
    cluster_tests::assert_success(&out, "kubectl scale fpool");
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    poll("the StatefulSet to have 3 replicas", TIMEOUT, || async {
        let s = sts.get("elastic").await.ok()?;
        (s.spec.replicas == Some(3)).then_some(())
    })
    .await;
    // What an autoscaler reads.
    let out = cluster_tests::kubectl(&[
        "get",
        "--raw",
        &format!("/apis/arrow.trinity.io/v1alpha1/namespaces/{ns}/flightpools/elastic/scale"),
    ]);
    cluster_tests::assert_success(&out, "GET scale");
    let scale: serde_json::Value = serde_json::from_slice(&out.stdout).expect("scale json");
    assert_eq!(scale["spec"]["replicas"], 3, "{scale}");
    assert_eq!(
        scale["status"]["selector"],
        "app.kubernetes.io/instance=elastic,app.kubernetes.io/name=flight-node",
        "{scale}"
    );
    operator.stop().await;
}
