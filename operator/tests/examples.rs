//! The YAML under `examples/` must parse into the CRD types and build.

use std::path::PathBuf;

use flight_operator::controller::pool::build::{build, BuildConfig};
use flight_operator::crd::{ArrowDataset, FlightPool};

fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

#[test]
fn pool_example_builds() {
    let mut pool: FlightPool =
        serde_yaml::from_str(&example("flightpool-minio.yaml")).expect("pool");
    // The API server would assign a uid; build needs it for the owner reference.
    pool.metadata.uid = Some("example".into());
    let objects = build(
        &pool,
        &BuildConfig {
            default_image: "flight-node:dev".into(),
        },
    )
    .expect("the example is valid");
    assert_eq!(objects.stateful_set.spec.replicas, Some(3));
    assert!(pool.spec.contracts.contains_key("sales"));
    assert_eq!(
        pool.spec
            .storage
            .credentials_secret
            .as_ref()
            .map(|c| c.name.as_str()),
        Some("minio-credentials")
    );
}

#[test]
fn dataset_examples_parse_and_name_the_pool_and_contract() {
    let re = regex::Regex::new(flight_operator::crd::TTL_PATTERN).expect("regex");
    for file in ["arrowdataset-uploaded.yaml", "arrowdataset-csv-source.yaml"] {
        let ds: ArrowDataset = serde_yaml::from_str(&example(file)).expect(file);
        assert_eq!(ds.spec.pool, "analytics", "{file}");
        assert_eq!(ds.spec.contract.as_deref(), Some("sales"), "{file}");
        let ttl = ds.spec.ttl.as_deref().expect("ttl");
        assert!(re.is_match(ttl), "{file}: {ttl}");
    }
    let csv: ArrowDataset =
        serde_yaml::from_str(&example("arrowdataset-csv-source.yaml")).expect("csv");
    assert_eq!(
        csv.spec.source.and_then(|s| s.effective_format()),
        Some(flight_operator::crd::SourceFormat::Csv)
    );
}

#[test]
fn secret_example_has_the_keys_the_pool_reads() {
    let secret: serde_yaml::Value =
        serde_yaml::from_str(&example("minio-credentials.yaml")).expect("secret");
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(secret["stringData"][key].is_string(), "{key}");
    }
}
