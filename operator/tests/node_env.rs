//! The environment the operator writes into node pods is the node's own configuration:
//! every `FLIGHT_*` variable of the StatefulSet it builds (for a pool that sets every
//! option) is the `env` of one of flight-node's flags, and the values parse as that flag.

use clap::CommandFactory;
use flight_operator::controller::pool::build::{build, BuildConfig};
use flight_operator::crd::pool::FlightPool;

const FULL: &str = include_str!("fixtures/pool-full.yaml");

fn full_pool() -> FlightPool {
    let mut pool: FlightPool = serde_yaml::from_str(FULL).expect("fixture parses");
    // The one option the fixture leaves out.
    pool.spec.storage.load_source_prefixes = vec!["shared/".into(), "landing/".into()];
    pool
}

#[test]
fn every_flight_variable_the_operator_writes_is_a_node_flag() {
    let objects = build(
        &full_pool(),
        &BuildConfig {
            default_image: "flight-node:test".into(),
        },
    )
    .expect("the full pool builds");
    let pod = objects.stateful_set.spec.template.spec.expect("pod spec");
    let env = pod.containers[0].env.clone().unwrap_or_default();
    let written: Vec<_> = env
        .iter()
        .filter(|e| e.name.starts_with("FLIGHT_"))
        .collect();
    assert!(
        written.len() >= 15,
        "only {} FLIGHT_ variables",
        written.len()
    );

    let command = flight_node::Config::command();
    let flags: Vec<_> = command.get_arguments().collect();
    let mut args = vec!["flight-node".to_string()];
    for var in &written {
        let flag = flags
            .iter()
            .find(|a| a.get_env().is_some_and(|e| e == var.name.as_str()))
            .unwrap_or_else(|| panic!("{} is not the env of any flight-node flag", var.name));
        let long = flag.get_long().expect("flags with env have a long name");
        // Literal values must parse as the flag; Secret references are resolved by the
        // kubelet, so a sample value stands in for them.
        let value = var.value.clone().unwrap_or_else(|| "sample".into());
        if flag.get_action().takes_values() {
            args.push(format!("--{long}={value}"));
        } else {
            assert_eq!(value, "true", "{} is a switch", var.name);
            args.push(format!("--{long}"));
        }
    }
    command
        .try_get_matches_from(&args)
        .unwrap_or_else(|e| panic!("the node refuses what the operator writes: {e}\n{args:?}"));
}
