//! The checked-in `crds/*.yaml` must equal what the Rust types generate.
//! Regenerate with `cargo run -p flight-operator --bin crdgen -- --out-dir crds`.

use std::path::PathBuf;

#[test]
fn checked_in_crds_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let rendered = flight_operator::crd::render_all().expect("CRDs render");
    assert_eq!(rendered.len(), 2);
    for (file, yaml) in rendered {
        let path = dir.join(&file);
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
        assert!(
            on_disk == yaml,
            "{} is out of date; run `cargo run -p flight-operator --bin crdgen -- --out-dir crds`",
            path.display()
        );
    }
}

#[test]
fn crds_carry_names_columns_and_validation() {
    let rendered = flight_operator::crd::render_all().expect("CRDs render");
    let docs: Vec<serde_yaml::Value> = rendered
        .iter()
        .map(|(_, y)| serde_yaml::from_str(y).expect("yaml"))
        .collect();
    let ads = &docs[0];
    assert_eq!(ads["spec"]["group"].as_str(), Some("arrow.trinity.io"));
    assert_eq!(ads["spec"]["names"]["shortNames"][0].as_str(), Some("ads"));
    let version = &ads["spec"]["versions"][0];
    assert_eq!(version["name"].as_str(), Some("v1alpha1"));
    assert!(version["subresources"]["status"].is_mapping());
    let columns: Vec<_> = version["additionalPrinterColumns"]
        .as_sequence()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Pool",
            "Phase",
            "Rows",
            "Size",
            "Tier",
            "Hot",
            "Expires",
            "Age",
            "Version",
            "Ticket",
            "Consumers"
        ]
    );
    let ttl = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["ttl"];
    assert_eq!(
        ttl["pattern"].as_str(),
        Some(flight_operator::crd::TTL_PATTERN)
    );

    let fpool = &docs[1];
    assert_eq!(
        fpool["spec"]["names"]["shortNames"][0].as_str(),
        Some("fpool")
    );
    let version = &fpool["spec"]["versions"][0];
    let replicas =
        &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["replicas"];
    assert_eq!(replicas["minimum"].as_f64(), Some(0.0));
    let columns: Vec<_> = version["additionalPrinterColumns"]
        .as_sequence()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        ["Replicas", "Ready", "Endpoint", "Datasets", "Cached", "Capacity", "Fill", "Age"]
    );
}

/// The schema pattern is what the API server enforces; check it against the cases the
/// issue names, with the same regex dialect subset (no look-around).
#[test]
fn ttl_pattern_refuses_zero_negative_and_words() {
    let re = regex::Regex::new(flight_operator::crd::TTL_PATTERN).expect("valid regex");
    for ok in ["30m", "6h", "7d", "1w", "90s", "1h30m", "0h5m", "10d"] {
        assert!(re.is_match(ok), "{ok} should pass");
        assert!(
            flight_operator::ttl::parse_ttl(ok).is_ok(),
            "{ok} should parse"
        );
    }
    for bad in ["0s", "-5m", "soon", "", "5", "0h0m", "1.5h", "6 h", "6H"] {
        assert!(!re.is_match(bad), "{bad} should be refused by the schema");
    }
}
