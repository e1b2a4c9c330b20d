//! `crds/` against the real API server: accepted, structural, Established, and the schema
//! validation that a mocked API server never runs.

use cluster_tests::{admin_client, control_plane, kubectl_stdin, unique_namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, Status};
use kube::discovery::{ApiCapabilities, Discovery, Scope};
use kube::Client;
use serde_json::{json, Value};

const CRDS: [&str; 2] = [
    "arrowdatasets.arrow.trinity.io",
    "flightpools.arrow.trinity.io",
];

fn ar(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "arrow.trinity.io".into(),
        version: "v1alpha1".into(),
        api_version: "arrow.trinity.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn pools(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ar("FlightPool", "flightpools"))
}

fn datasets(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ar("ArrowDataset", "arrowdatasets"))
}

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).expect("object json")
}

fn pool(name: &str, spec: Value) -> DynamicObject {
    object(json!({
        "apiVersion": "arrow.trinity.io/v1alpha1",
        "kind": "FlightPool",
        "metadata": {"name": name},
        "spec": spec,
    }))
}

fn dataset(name: &str, spec: Value) -> DynamicObject {
    object(json!({
        "apiVersion": "arrow.trinity.io/v1alpha1",
        "kind": "ArrowDataset",
        "metadata": {"name": name},
        "spec": spec,
    }))
}

/// The API server refused the object as invalid; returns its message.
fn rejected(result: Result<DynamicObject, kube::Error>, what: &str) -> Status {
    match result {
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => *e,
        Err(e) => panic!("{what}: expected a validation error, got {e}"),
        Ok(obj) => panic!(
            "{what}: the API server accepted it: {}",
            serde_json::to_string(&obj.data).unwrap_or_default()
        ),
    }
}

#[tokio::test]
async fn crds_are_accepted_structural_and_established() {
    control_plane();
    let client = admin_client().await;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        let crd = api.get(name).await.expect("CRD exists");
        let conditions = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let status_of = |t: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()))
        };
        assert_eq!(
            status_of("Established").map(|s| s.0).as_deref(),
            Some("True"),
            "{name}: {conditions:#?}"
        );
        assert_eq!(
            status_of("NamesAccepted").map(|s| s.0).as_deref(),
            Some("True"),
            "{name}: {conditions:#?}"
        );
        if let Some((status, message)) = status_of("NonStructuralSchema") {
            panic!("{name} has a non-structural schema ({status}): {message}");
        }
        // The accepted names are the ones the design promises.
        let accepted = crd
            .status
            .as_ref()
            .and_then(|s| s.accepted_names.clone())
            .expect("accepted names");
        let short = accepted.short_names.unwrap_or_default();
        match name {
            "arrowdatasets.arrow.trinity.io" => assert_eq!(short, vec!["ads".to_owned()]),
            _ => assert_eq!(short, vec!["fpool".to_owned()]),
        }
    }

    // Discovery serves both kinds, namespaced, with the status subresource.
    let discovery = Discovery::new(client)
        .filter(&["arrow.trinity.io"])
        .run()
        .await
        .expect("discovery");
    let group = discovery
        .get("arrow.trinity.io")
        .expect("group arrow.trinity.io is served");
    let kinds: Vec<(ApiResource, ApiCapabilities)> = group.recommended_resources();
    for kind in ["ArrowDataset", "FlightPool"] {
        let (ar, caps) = kinds
            .iter()
            .find(|(ar, _)| ar.kind == kind)
            .unwrap_or_else(|| panic!("{kind} is not served: {kinds:?}"));
        assert_eq!(ar.version, "v1alpha1");
        assert_eq!(caps.scope, Scope::Namespaced);
        assert!(
            caps.subresources
                .iter()
                .any(|(sub, _)| sub.plural == "status"),
            "{kind} has no status subresource"
        );
    }
}

#[tokio::test]
async fn bad_ttls_are_rejected_by_the_api_server() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "crd-ttl").await;
    let api = datasets(&client, &ns);
    let pp = PostParams::default();
    for (i, ttl) in ["-5m", "soon", "0s", "5", "1h-30m", "m", "", "0h0m"]
        .into_iter()
        .enumerate()
    {
        let err = rejected(
            api.create(
                &pp,
                &dataset(&format!("bad-{i}"), json!({"pool": "p", "ttl": ttl})),
            )
            .await,
            &format!("ArrowDataset with ttl {ttl:?}"),
        );
        assert!(
            err.message.contains("spec.ttl"),
            "ttl {ttl:?}: the error should name spec.ttl: {}",
            err.message
        );
    }
    // Good ones pass, so the rejections above are about the values.
    for (i, ttl) in ["90s", "1h30m", "7d", "2w", "10m"].into_iter().enumerate() {
        api.create(
            &pp,
            &dataset(&format!("good-{i}"), json!({"pool": "p", "ttl": ttl})),
        )
        .await
        .unwrap_or_else(|e| panic!("ttl {ttl:?} should be accepted: {e}"));
    }

    // The pool's default TTL has the same rule.
    let pools = pools(&client, &ns);
    let err = rejected(
        pools
            .create(
                &pp,
                &pool(
                    "bad-default-ttl",
                    json!({"storage": {"url": "file:///tmp/x"}, "defaultTtl": "0s"}),
                ),
            )
            .await,
        "FlightPool with defaultTtl 0s",
    );
    assert!(err.message.contains("spec.defaultTtl"), "{}", err.message);
}

#[tokio::test]
async fn bad_pools_are_rejected_by_the_api_server() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "crd-pool").await;
    let api = pools(&client, &ns);
    let pp = PostParams::default();

    let err = rejected(
        api.create(
            &pp,
            &pool(
                "negative",
                json!({"replicas": -1, "storage": {"url": "file:///tmp/x"}}),
            ),
        )
        .await,
        "FlightPool with replicas -1",
    );
    assert!(err.message.contains("spec.replicas"), "{}", err.message);

    let err = rejected(
        api.create(&pp, &pool("no-storage", json!({"replicas": 1})))
            .await,
        "FlightPool without storage",
    );
    assert!(err.message.contains("spec.storage"), "{}", err.message);

    let err = rejected(
        api.create(
            &pp,
            &pool(
                "http-url",
                json!({"storage": {"url": "http://minio:9000/bucket"}}),
            ),
        )
        .await,
        "FlightPool with an http:// storage URL",
    );
    assert!(err.message.contains("spec.storage.url"), "{}", err.message);

    let err = rejected(
        api.create(
            &pp,
            &pool(
                "bad-memory",
                json!({"storage": {"url": "file:///tmp/x"}, "memoryLimit": "lots"}),
            ),
        )
        .await,
        "FlightPool with memoryLimit lots",
    );
    assert!(err.message.contains("spec.memoryLimit"), "{}", err.message);

    // A valid pool passes and gets the schema defaults.
    let created = api
        .create(
            &pp,
            &pool("fine", json!({"storage": {"url": "file:///tmp/x"}})),
        )
        .await
        .expect("a minimal pool is accepted");
    assert_eq!(
        created.data["spec"]["replicas"],
        json!(1),
        "{:#?}",
        created.data
    );
    assert_eq!(created.data["spec"]["defaultTtl"], json!("24h"));
    assert_eq!(created.data["spec"]["storage"]["allowHttp"], json!(false));
}

#[tokio::test]
async fn unknown_pool_fields_are_rejected() {
    control_plane();
    let client = admin_client().await;
    let ns = unique_namespace(&client, "crd-unknown").await;
    let api = pools(&client, &ns);
    let typo = pool(
        "typo",
        json!({"replicas": 2, "storage": {"url": "file:///tmp/x", "bucketName": "b"}, "replica": 3}),
    );

    // Strict field validation (what kubectl uses by default) refuses unknown fields.
    let strict = PatchParams::apply("cluster-tests").validation_strict();
    let err = match api.patch("typo", &strict, &Patch::Apply(&typo)).await {
        Err(kube::Error::Api(e)) => e,
        Err(e) => panic!("expected a validation error, got {e}"),
        Ok(obj) => panic!("unknown fields accepted: {:#?}", obj.data),
    };
    assert!(
        (err.message.contains("unknown field") || err.message.contains("not declared in schema"))
            && err.message.contains("spec.replica"),
        "{}",
        err.message
    );

    // kubectl apply refuses it too.
    let yaml = serde_yaml::to_string(&typo).expect("yaml");
    let out = kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &yaml);
    assert!(
        !out.status.success(),
        "kubectl apply accepted unknown fields"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown field") && stderr.contains("bucketName"),
        "{stderr}"
    );

    // Server-side apply refuses unknown fields whatever the validation level.
    match api
        .patch(
            "typo",
            &PatchParams::apply("cluster-tests"),
            &Patch::Apply(&typo),
        )
        .await
    {
        Err(kube::Error::Api(e)) => assert!(e.message.contains("spec.replica"), "{}", e.message),
        other => panic!("server-side apply with unknown fields: {other:?}"),
    }

    // A plain create without strict validation is pruned (structural schema): the unknown
    // fields are never stored.
    let pruned = api
        .create(&PostParams::default(), &typo)
        .await
        .expect("a non-strict create prunes unknown fields");
    assert!(
        pruned.data["spec"].get("replica").is_none(),
        "{:#?}",
        pruned.data
    );
    assert!(
        pruned.data["spec"]["storage"].get("bucketName").is_none(),
        "{:#?}",
        pruned.data
    );
}

#[tokio::test]
async fn examples_pass_server_side_dry_run() {
    let cp = control_plane();
    let out = cluster_tests::kubectl(&[
        "create",
        "namespace",
        "analytics",
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    cluster_tests::assert_success(&out, "kubectl create namespace --dry-run");
    let out = kubectl_stdin(&["apply", "-f", "-"], &String::from_utf8_lossy(&out.stdout));
    cluster_tests::assert_success(&out, "create namespace analytics");
    let examples = cp.root.join("examples");
    let out = cluster_tests::kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        examples.to_str().expect("utf-8 path"),
    ]);
    cluster_tests::assert_success(&out, "kubectl apply --dry-run=server -f examples/");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("flightpool.arrow.trinity.io/analytics"),
        "{stdout}"
    );
    assert!(
        stdout.contains("arrowdataset.arrow.trinity.io/"),
        "{stdout}"
    );
}
