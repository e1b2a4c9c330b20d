//! Pure build step of the FlightPool controller: the desired StatefulSet, Services, ConfigMap
//! and PodDisruptionBudget of a pool, computed from its spec alone (no API calls).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::crd::{ContractSpec, FlightPool, FlightPoolSpec};

/// gRPC (Arrow Flight) port of every node.
pub const FLIGHT_PORT: i32 = 8815;
/// HTTP port of every node: probes, metrics, CSV upload.
pub const HTTP_PORT: i32 = 8816;
/// Where the pool ConfigMap is mounted in the node container.
pub const CONFIG_DIR: &str = "/etc/flight/config";
/// ConfigMap key of the peers file.
pub const PEERS_KEY: &str = "peers.yaml";
/// ConfigMap key of the contracts file.
pub const CONTRACTS_KEY: &str = "contracts.yaml";
/// Pod template annotation holding a hash of the contracts, so a contract change rolls the
/// pods (the node reads contracts at start) while a peers change (scaling) does not.
pub const CONTRACTS_HASH_ANNOTATION: &str = "arrow.trinity.io/contracts-hash";
/// Non-root user and group the node runs as.
pub const NODE_UID: i64 = 65532;

const AUTH_DIR: &str = "/etc/flight/auth";
const TLS_DIR: &str = "/etc/flight/tls";
const DATA_DIR: &str = "/var/lib/flight";

/// Flight node image used when a FlightPool names none (the operator's `--node-image`
/// default; the chart's `nodeImage` agrees).
pub const DEFAULT_NODE_IMAGE: &str = "ghcr.io/trinity-data/flight-node:0.1.0";

/// Operator-wide inputs of the build step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildConfig {
    /// Flight node image used when the pool names none.
    pub default_image: String,
}

/// Everything a pool owns.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolObjects {
    /// The flight nodes.
    pub stateful_set: StatefulSet,
    /// Per-pod DNS for placement (`<pod>.<pool>-headless.<ns>.svc`).
    pub headless_service: Service,
    /// What atoms use: `<pool>.<ns>.svc:8815`.
    pub client_service: Service,
    /// Peers file and contracts file.
    pub config_map: ConfigMap,
    /// Keeps voluntary disruptions to one pod at a time.
    pub pod_disruption_budget: PodDisruptionBudget,
}

/// Why a pool spec cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The object has no namespace or name (never the case for objects from the API).
    #[error("failed to build pool objects: the FlightPool has no {0}")]
    MissingMetadata(&'static str),
    /// The default TTL does not parse.
    #[error("failed to accept defaultTtl: {0}")]
    InvalidTtl(#[from] crate::ttl::TtlError),
    /// A contract names an unknown Arrow type or is otherwise refused by the node.
    #[error("failed to accept contracts: {0}")]
    InvalidContracts(String),
    /// Negative replica count (refused by the schema too).
    #[error("failed to accept replicas {0}: must not be negative")]
    NegativeReplicas(i32),
}

/// Name of the headless Service of a pool.
pub fn headless_name(pool: &str) -> String {
    format!("{pool}-headless")
}

/// Name of the ConfigMap of a pool.
pub fn config_map_name(pool: &str) -> String {
    format!("{pool}-config")
}

fn scheme(spec: &FlightPoolSpec) -> &'static str {
    if spec.tls.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    }
}

/// The URI atoms connect to: the client Service.
pub fn endpoint(pool: &str, namespace: &str, spec: &FlightPoolSpec) -> String {
    format!("{}://{pool}.{namespace}.svc:{FLIGHT_PORT}", scheme(spec))
}

/// Per-pod URIs of a pool, in ordinal order (what each node advertises).
pub fn peers(pool: &str, namespace: &str, spec: &FlightPoolSpec) -> Vec<String> {
    let headless = headless_name(pool);
    (0..spec.replicas.max(0))
        .map(|i| {
            format!(
                "{}://{pool}-{i}.{headless}.{namespace}.svc:{FLIGHT_PORT}",
                scheme(spec)
            )
        })
        .collect()
}

/// Labels on every object of a pool; the first two also select its pods.
pub fn labels(pool: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(pool);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "flight-operator".into(),
    );
    l.insert("app.kubernetes.io/component".into(), "flight-node".into());
    l
}

/// The pods' label selector as text (`app.kubernetes.io/name=flight-node,...`).
pub fn selector(pool: &str) -> String {
    selector_labels(pool)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn selector_labels(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "flight-node".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), pool.to_owned()),
    ])
}

#[derive(Serialize)]
struct PeersFile<'a> {
    peers: &'a [String],
}

#[derive(Serialize)]
struct ContractsFile<'a> {
    contracts: &'a BTreeMap<String, ContractSpec>,
}

/// The peers file (`peers: [uri, ...]`) the nodes read.
pub fn peers_yaml(peers: &[String]) -> String {
    // Serialising a list of strings cannot fail.
    serde_yaml::to_string(&PeersFile { peers }).unwrap_or_default()
}

/// The contracts file in the node's format.
pub fn contracts_yaml(contracts: &BTreeMap<String, ContractSpec>) -> String {
    serde_yaml::to_string(&ContractsFile { contracts }).unwrap_or_default()
}

/// Checks what the schema cannot: TTL arithmetic bounds and Arrow type names.
pub fn validate(spec: &FlightPoolSpec) -> Result<(), BuildError> {
    if spec.replicas < 0 {
        return Err(BuildError::NegativeReplicas(spec.replicas));
    }
    crate::ttl::parse_ttl(&spec.default_ttl)?;
    if let Some(grace) = &spec.release_grace {
        crate::ttl::parse_ttl(grace)?;
    }
    flight_core::contract::Contracts::from_yaml(&contracts_yaml(&spec.contracts))
        .map_err(|e| BuildError::InvalidContracts(e.to_string()))?;
    Ok(())
}

/// 64-bit FNV-1a: a stable hash (unlike `DefaultHasher`) for the rollout annotation.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Builds every object of a pool from its spec.
pub fn build(pool: &FlightPool, config: &BuildConfig) -> Result<PoolObjects, BuildError> {
    let name = pool
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = pool
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let spec = &pool.spec;
    validate(spec)?;
    let owner = pool.controller_owner_ref(&());
    let meta = |object_name: String| ObjectMeta {
        name: Some(object_name),
        namespace: Some(namespace.clone()),
        labels: Some(labels(&name)),
        owner_references: owner.clone().map(|o: OwnerReference| vec![o]),
        ..ObjectMeta::default()
    };

    let contracts = contracts_yaml(&spec.contracts);
    let contracts_hash = format!("{:016x}", fnv1a(contracts.as_bytes()));
    let config_map = ConfigMap {
        metadata: meta(config_map_name(&name)),
        data: Some(BTreeMap::from([
            (
                PEERS_KEY.to_owned(),
                peers_yaml(&peers(&name, &namespace, spec)),
            ),
            (CONTRACTS_KEY.to_owned(), contracts),
        ])),
        ..ConfigMap::default()
    };

    let flight_port = || ServicePort {
        name: Some("flight".into()),
        port: FLIGHT_PORT,
        target_port: Some(IntOrString::String("flight".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    let http_port = || ServicePort {
        name: Some("http".into()),
        port: HTTP_PORT,
        target_port: Some(IntOrString::String("http".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    let headless_service = Service {
        metadata: meta(headless_name(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Peers must resolve each other while they start, before they are ready.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![flight_port(), http_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let client_service = Service {
        metadata: meta(name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![flight_port(), http_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let pod_disruption_budget = PodDisruptionBudget {
        metadata: meta(name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };

    let stateful_set = StatefulSet {
        metadata: meta(name.clone()),
        spec: StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(headless_name(&name)),
            // Nodes are independent (state is in storage): start and stop them all at once.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            template: pod_template(&name, &namespace, spec, config, contracts_hash),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    };

    Ok(PoolObjects {
        stateful_set,
        headless_service,
        client_service,
        config_map,
        pod_disruption_budget,
    })
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(source),
        ..EnvVar::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        },
    )
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn node_env(pool: &str, namespace: &str, spec: &FlightPoolSpec) -> Vec<EnvVar> {
    let storage = &spec.storage;
    let mut env_vars = vec![
        env_from(
            "POD_NAME",
            EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            },
        ),
        env("FLIGHT_LISTEN", format!("0.0.0.0:{FLIGHT_PORT}")),
        env("FLIGHT_HTTP_LISTEN", format!("0.0.0.0:{HTTP_PORT}")),
        env(
            "FLIGHT_ADVERTISE_URI",
            format!(
                "{}://$(POD_NAME).{}.{namespace}.svc:{FLIGHT_PORT}",
                scheme(spec),
                headless_name(pool)
            ),
        ),
        env("FLIGHT_PEERS_FILE", format!("{CONFIG_DIR}/{PEERS_KEY}")),
        env(
            "FLIGHT_CONTRACTS_FILE",
            format!("{CONFIG_DIR}/{CONTRACTS_KEY}"),
        ),
        env("FLIGHT_STORAGE_URL", storage.url.clone()),
        env("FLIGHT_DEFAULT_TTL", spec.default_ttl.clone()),
        env("FLIGHT_LOG_FORMAT", "json"),
    ];
    if let Some(endpoint) = &storage.endpoint {
        env_vars.push(env("FLIGHT_STORAGE_ENDPOINT", endpoint.clone()));
    }
    if let Some(region) = &storage.region {
        env_vars.push(env("FLIGHT_STORAGE_REGION", region.clone()));
    }
    if storage.allow_http {
        env_vars.push(env("FLIGHT_STORAGE_ALLOW_HTTP", "true"));
    }
    if !storage.load_source_prefixes.is_empty() {
        env_vars.push(env(
            "FLIGHT_LOAD_SOURCE_PREFIXES",
            storage.load_source_prefixes.join(","),
        ));
    }
    if let Some(creds) = &storage.credentials_secret {
        env_vars.push(secret_env(
            "FLIGHT_STORAGE_ACCESS_KEY_ID",
            &creds.name,
            &creds.access_key_id_key,
        ));
        env_vars.push(secret_env(
            "FLIGHT_STORAGE_SECRET_ACCESS_KEY",
            &creds.name,
            &creds.secret_access_key_key,
        ));
    }
    if let Some(limit) = &spec.memory_limit {
        env_vars.push(env("FLIGHT_MEMORY_LIMIT", limit.clone()));
    }
    if let Some(size) = &spec.part_size {
        env_vars.push(env("FLIGHT_PART_SIZE", size.clone()));
    }
    if let Some(grace) = &spec.release_grace {
        env_vars.push(env("FLIGHT_RELEASE_GRACE", grace.clone()));
    }
    if let Some(auth) = &spec.auth {
        env_vars.push(env(
            "FLIGHT_TOKEN_FILE",
            format!("{AUTH_DIR}/{}", auth.tokens_key),
        ));
        if let Some(key) = &auth.ticket_key_key {
            env_vars.push(env("FLIGHT_TICKET_KEY_FILE", format!("{AUTH_DIR}/{key}")));
        }
    }
    if spec.tls.is_some() {
        env_vars.push(env("FLIGHT_TLS_CERT", format!("{TLS_DIR}/tls.crt")));
        env_vars.push(env("FLIGHT_TLS_KEY", format!("{TLS_DIR}/tls.key")));
    }
    env_vars
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn pod_template(
    pool: &str,
    namespace: &str,
    spec: &FlightPoolSpec,
    config: &BuildConfig,
    contracts_hash: String,
) -> PodTemplateSpec {
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(pool),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        empty_dir("tmp"),
        empty_dir("data"),
    ];
    let mut mounts = vec![
        mount("config", CONFIG_DIR),
        VolumeMount {
            read_only: Some(false),
            ..mount("tmp", "/tmp")
        },
        VolumeMount {
            read_only: Some(false),
            ..mount("data", DATA_DIR)
        },
    ];
    if let Some(auth) = &spec.auth {
        volumes.push(secret_volume("auth", &auth.secret_name));
        mounts.push(mount("auth", AUTH_DIR));
    }
    if let Some(tls) = &spec.tls {
        volumes.push(secret_volume("tls", &tls.secret_name));
        mounts.push(mount("tls", TLS_DIR));
    }

    let container = Container {
        name: "flight-node".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| config.default_image.clone()),
        ),
        image_pull_policy: spec.image_pull_policy.clone(),
        env: Some(node_env(pool, namespace, spec)),
        ports: Some(vec![
            ContainerPort {
                name: Some("flight".into()),
                container_port: FLIGHT_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        resources: spec.resources.clone(),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    let non_empty_map = |m: &BTreeMap<String, String>| (!m.is_empty()).then(|| m.clone());
    let non_empty_vec = |v: &Vec<_>| (!v.is_empty()).then(|| v.clone());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(pool)),
            annotations: Some(BTreeMap::from([(
                CONTRACTS_HASH_ANNOTATION.to_owned(),
                contracts_hash,
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            // Nodes never talk to the Kubernetes API.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(NODE_UID),
                run_as_group: Some(NODE_UID),
                fs_group: Some(NODE_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            node_selector: non_empty_map(&spec.node_selector),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            affinity: spec.affinity.clone(),
            topology_spread_constraints: non_empty_vec(&spec.topology_spread_constraints),
            priority_class_name: spec.priority_class_name.clone(),
            termination_grace_period_seconds: Some(30),
            ..PodSpec::default()
        }),
    }
}

/// Convenience for callers holding only the resource: its name and namespace.
pub fn pool_key(pool: &FlightPool) -> (String, String) {
    (pool.name_any(), pool.namespace().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    const FULL: &str = include_str!("../../../tests/fixtures/pool-full.yaml");
    const MINIMAL: &str = include_str!("../../../tests/fixtures/pool-minimal.yaml");

    fn pool(yaml: &str) -> FlightPool {
        serde_yaml::from_str(yaml).expect("fixture parses")
    }

    fn config() -> BuildConfig {
        BuildConfig {
            default_image: "ghcr.io/example/flight-node:default".into(),
        }
    }

    fn env_map(sts: &StatefulSet) -> BTreeMap<String, EnvVar> {
        container(sts)
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    fn container(sts: &StatefulSet) -> &Container {
        &pod_spec(sts).containers[0]
    }

    fn pod_spec(sts: &StatefulSet) -> &PodSpec {
        sts.spec.template.spec.as_ref().expect("pod spec")
    }

    fn value<'a>(env: &'a BTreeMap<String, EnvVar>, name: &str) -> &'a str {
        env.get(name)
            .and_then(|e| e.value.as_deref())
            .unwrap_or_else(|| panic!("env {name} missing or not a literal"))
    }

    fn secret_ref(env: &BTreeMap<String, EnvVar>, name: &str) -> (String, String) {
        let sel = env
            .get(name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.secret_key_ref.as_ref())
            .unwrap_or_else(|| panic!("env {name} is not a secret reference"));
        (sel.name.clone(), sel.key.clone())
    }

    #[test]
    fn full_spec_lands_in_the_statefulset() {
        let objects = build(&pool(FULL), &config()).expect("builds");
        let sts = &objects.stateful_set;
        assert_eq!(sts.metadata.name.as_deref(), Some("analytics"));
        assert_eq!(sts.metadata.namespace.as_deref(), Some("data"));
        let owner = &sts.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!(owner.kind, "FlightPool");
        assert_eq!(owner.name, "analytics");
        assert_eq!(owner.uid, "6f1c2a3e-0000-4000-8000-000000000001");
        assert_eq!(owner.controller, Some(true));

        assert_eq!(sts.spec.replicas, Some(3));
        assert_eq!(sts.spec.service_name.as_deref(), Some("analytics-headless"));
        let c = container(sts);
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example.com/flight-node:1.2.3")
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        let res = c.resources.as_ref().expect("resources");
        assert_eq!(
            res.limits.as_ref().and_then(|l| l.get("memory")),
            Some(&Quantity("4Gi".into()))
        );
        assert_eq!(
            res.requests.as_ref().and_then(|l| l.get("cpu")),
            Some(&Quantity("500m".into()))
        );

        let env = env_map(sts);
        assert_eq!(value(&env, "FLIGHT_STORAGE_URL"), "s3://datasets/prod");
        assert_eq!(
            value(&env, "FLIGHT_STORAGE_ENDPOINT"),
            "http://minio.minio.svc:9000"
        );
        assert_eq!(value(&env, "FLIGHT_STORAGE_REGION"), "eu-west-1");
        assert_eq!(value(&env, "FLIGHT_STORAGE_ALLOW_HTTP"), "true");
        assert_eq!(
            secret_ref(&env, "FLIGHT_STORAGE_ACCESS_KEY_ID"),
            ("minio-creds".into(), "user".into())
        );
        assert_eq!(
            secret_ref(&env, "FLIGHT_STORAGE_SECRET_ACCESS_KEY"),
            ("minio-creds".into(), "password".into())
        );
        assert_eq!(value(&env, "FLIGHT_MEMORY_LIMIT"), "2GiB");
        assert_eq!(value(&env, "FLIGHT_PART_SIZE"), "16MiB");
        assert_eq!(value(&env, "FLIGHT_RELEASE_GRACE"), "45s");
        assert_eq!(value(&env, "FLIGHT_DEFAULT_TTL"), "6h");
        assert_eq!(value(&env, "FLIGHT_LISTEN"), "0.0.0.0:8815");
        assert_eq!(value(&env, "FLIGHT_HTTP_LISTEN"), "0.0.0.0:8816");
        assert_eq!(
            value(&env, "FLIGHT_TOKEN_FILE"),
            "/etc/flight/auth/tokens.yaml"
        );
        assert_eq!(
            value(&env, "FLIGHT_TICKET_KEY_FILE"),
            "/etc/flight/auth/ticket-key"
        );
        assert_eq!(value(&env, "FLIGHT_TLS_CERT"), "/etc/flight/tls/tls.crt");
        assert_eq!(value(&env, "FLIGHT_TLS_KEY"), "/etc/flight/tls/tls.key");
        assert_eq!(
            value(&env, "FLIGHT_ADVERTISE_URI"),
            "grpc+tls://$(POD_NAME).analytics-headless.data.svc:8815"
        );
        assert_eq!(
            value(&env, "FLIGHT_PEERS_FILE"),
            "/etc/flight/config/peers.yaml"
        );
        assert_eq!(
            value(&env, "FLIGHT_CONTRACTS_FILE"),
            "/etc/flight/config/contracts.yaml"
        );
        // POD_NAME must precede its use for Kubernetes to expand $(POD_NAME).
        let names: Vec<_> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).expect("present");
        assert!(pos("POD_NAME") < pos("FLIGHT_ADVERTISE_URI"));

        let pod = pod_spec(sts);
        let secrets: BTreeMap<_, _> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| Some((v.name.clone(), v.secret.as_ref()?.secret_name.clone()?)))
            .collect();
        assert_eq!(secrets.get("auth").map(String::as_str), Some("flight-auth"));
        assert_eq!(secrets.get("tls").map(String::as_str), Some("flight-tls"));
        assert_eq!(
            pod.node_selector.as_ref().and_then(|n| n.get("pool")),
            Some(&"memory-optimized".to_owned())
        );
        assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            pod.tolerations.as_ref().and_then(|t| t[0].value.clone()),
            Some("flight".into())
        );
        assert!(pod
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .is_some());
        assert_eq!(
            pod.topology_spread_constraints
                .as_ref()
                .map(|t| t[0].topology_key.as_str()),
            Some("topology.kubernetes.io/zone")
        );
        assert_eq!(pod.priority_class_name.as_deref(), Some("data-high"));
    }

    #[test]
    fn pods_are_restricted_and_probed_on_the_http_port() {
        let objects = build(&pool(MINIMAL), &config()).expect("builds");
        let sts = &objects.stateful_set;
        let pod = pod_spec(sts);
        let psc = pod.security_context.as_ref().expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(NODE_UID));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = container(sts);
        let sc = c
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        for (probe, path) in [
            (c.readiness_probe.as_ref(), "/readyz"),
            (c.liveness_probe.as_ref(), "/healthz"),
        ] {
            let get = probe.and_then(|p| p.http_get.as_ref()).expect("http probe");
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.port, IntOrString::String("http".into()));
        }
        let ports: Vec<_> = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            vec![("flight".into(), FLIGHT_PORT), ("http".into(), HTTP_PORT)]
        );
        // /tmp is writable even with a read-only root file system.
        assert!(c
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/tmp" && m.read_only == Some(false)));
    }

    #[test]
    fn minimal_spec_gets_defaults_and_nothing_optional() {
        let objects = build(&pool(MINIMAL), &config()).expect("builds");
        let sts = &objects.stateful_set;
        assert_eq!(sts.spec.replicas, Some(1));
        assert_eq!(
            container(sts).image.as_deref(),
            Some("ghcr.io/example/flight-node:default")
        );
        let env = env_map(sts);
        assert_eq!(value(&env, "FLIGHT_DEFAULT_TTL"), "24h");
        assert_eq!(
            value(&env, "FLIGHT_ADVERTISE_URI"),
            "grpc://$(POD_NAME).scratch-headless.default.svc:8815"
        );
        for absent in [
            "FLIGHT_STORAGE_ENDPOINT",
            "FLIGHT_STORAGE_REGION",
            "FLIGHT_STORAGE_ALLOW_HTTP",
            "FLIGHT_STORAGE_ACCESS_KEY_ID",
            "FLIGHT_MEMORY_LIMIT",
            "FLIGHT_TOKEN_FILE",
            "FLIGHT_TLS_CERT",
        ] {
            assert!(!env.contains_key(absent), "{absent} should not be set");
        }
        let pod = pod_spec(sts);
        assert!(pod.node_selector.is_none());
        assert!(pod.tolerations.is_none());
        assert!(pod.affinity.is_none());
        assert!(pod.volumes.iter().flatten().all(|v| v.secret.is_none()));
    }

    #[test]
    fn services_configmap_and_pdb() {
        let objects = build(&pool(FULL), &config()).expect("builds");
        let headless = objects.headless_service.spec.as_ref().expect("spec");
        assert_eq!(
            objects.headless_service.metadata.name.as_deref(),
            Some("analytics-headless")
        );
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        assert_eq!(headless.publish_not_ready_addresses, Some(true));

        let client = objects.client_service.spec.as_ref().expect("spec");
        assert_eq!(
            objects.client_service.metadata.name.as_deref(),
            Some("analytics")
        );
        let ports = client.ports.as_ref().expect("ports");
        assert!(ports
            .iter()
            .any(|p| p.port == 8815 && p.name.as_deref() == Some("flight")));
        assert_eq!(
            client.selector.as_ref(),
            Some(&selector_labels("analytics"))
        );

        let data = objects.config_map.data.as_ref().expect("data");
        let peers: serde_yaml::Value = serde_yaml::from_str(&data[PEERS_KEY]).expect("peers yaml");
        let listed: Vec<_> = peers["peers"]
            .as_sequence()
            .expect("list")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(
            listed,
            vec![
                "grpc+tls://analytics-0.analytics-headless.data.svc:8815",
                "grpc+tls://analytics-1.analytics-headless.data.svc:8815",
                "grpc+tls://analytics-2.analytics-headless.data.svc:8815",
            ]
        );
        let contracts = flight_core::contract::Contracts::from_yaml(&data[CONTRACTS_KEY])
            .expect("the node accepts the contracts file");
        let sales = contracts.get("sales").expect("sales contract");
        let fields: Vec<_> = sales
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.nullable))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("id", false),
                ("region", true),
                ("amount", true),
                ("at", true)
            ]
        );

        let pdb = objects.pod_disruption_budget.spec.as_ref().expect("spec");
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            pdb.selector.as_ref().and_then(|s| s.match_labels.clone()),
            Some(selector_labels("analytics"))
        );
        assert_eq!(
            endpoint("analytics", "data", &pool(FULL).spec),
            "grpc+tls://analytics.data.svc:8815"
        );
    }

    #[test]
    fn contract_changes_roll_pods_but_scaling_does_not() {
        let hash = |p: &FlightPool| {
            build(p, &config())
                .expect("builds")
                .stateful_set
                .spec
                .template
                .metadata
                .and_then(|m| m.annotations)
                .and_then(|a| a.get(CONTRACTS_HASH_ANNOTATION).cloned())
                .expect("annotation")
        };
        let base = pool(FULL);
        let mut scaled = base.clone();
        scaled.spec.replicas = 5;
        assert_eq!(hash(&base), hash(&scaled));
        let mut changed = base.clone();
        if let Some(c) = changed.spec.contracts.get_mut("sales") {
            c.fields[0].nullable = true;
        }
        assert_ne!(hash(&base), hash(&changed));
    }

    #[test]
    fn invalid_specs_are_refused_with_reasons() {
        let mut p = pool(MINIMAL);
        p.spec.default_ttl = "0s".into();
        assert!(matches!(
            build(&p, &config()),
            Err(BuildError::InvalidTtl(_))
        ));

        let mut p = pool(FULL);
        if let Some(c) = p.spec.contracts.get_mut("sales") {
            c.fields[0].type_ = "integer-ish".into();
        }
        let err = build(&p, &config()).expect_err("unknown type");
        assert!(matches!(err, BuildError::InvalidContracts(_)));
        assert!(err.to_string().contains("integer-ish"), "{err}");

        let mut p = pool(MINIMAL);
        p.spec.replicas = -1;
        assert!(matches!(
            build(&p, &config()),
            Err(BuildError::NegativeReplicas(-1))
        ));
    }

    #[test]
    fn scaling_to_zero_empties_the_peers_file() {
        let mut p = pool(MINIMAL);
        p.spec.replicas = 0;
        let objects = build(&p, &config()).expect("builds");
        assert_eq!(objects.stateful_set.spec.replicas, Some(0));
        let data = objects.config_map.data.expect("data");
        assert_eq!(data[PEERS_KEY].trim(), "peers: []");
    }
}
