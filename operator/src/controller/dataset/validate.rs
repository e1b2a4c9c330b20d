//! The checks of an ArrowDataset's spec, without I/O: first on its own, then against its
//! pool. A refusal says which phase the resource is left in, why, and when to look again.

use std::time::Duration;

use flight_core::consumers::{Consumers, ConsumersSpec};
use flight_core::name::DatasetId;
use kube::runtime::controller::Action;

use crate::crd::{ArrowDataset, DatasetPhase, FlightPool};
use crate::ttl;

/// Why a dataset cannot go on, as its status will say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub phase: DatasetPhase,
    pub reason: &'static str,
    pub message: String,
    pub then: Action,
}

impl Refusal {
    /// A spec mistake: nothing to do until the spec changes.
    pub fn invalid(reason: &'static str, message: String) -> Self {
        Self {
            phase: DatasetPhase::Failed,
            reason,
            message,
            then: Action::await_change(),
        }
    }
}

/// What the spec says once checked on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub id: DatasetId,
    pub consumers: Option<ConsumersSpec>,
}

/// What the spec says once checked against its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The TTL as written (the dataset's, else the pool's default).
    pub ttl_text: String,
    pub ttl: Duration,
}

/// Checks what needs no API call: the name, the source's format, the consumers.
pub fn check(ds: &ArrowDataset, namespace: &str, name: &str) -> Result<Checked, Refusal> {
    let id = DatasetId::new(namespace, name).map_err(|e| {
        Refusal::invalid(
            "InvalidName",
            format!("the dataset name is not usable: {e}"),
        )
    })?;
    if let Some(source) = &ds.spec.source {
        if source.effective_format().is_none() {
            return Err(Refusal::invalid(
                "InvalidSource",
                format!(
                    "cannot tell the format of {}; set source.format to csv or parquet",
                    source.url
                ),
            ));
        }
    }
    let consumers = match (&ds.spec.consumers, ds.spec.consumer_count) {
        (Some(_), Some(_)) => Err("set spec.consumers or spec.consumerCount, not both".into()),
        (Some(names), None) => Consumers::named(names.clone())
            .map(|_| Some(ConsumersSpec::Names(names.clone())))
            .map_err(|e| format!("spec.consumers: {e}")),
        (None, Some(n)) => Consumers::counted(n)
            .map(|_| Some(ConsumersSpec::Count(n)))
            .map_err(|e| format!("spec.consumerCount: {e}")),
        (None, None) => Ok(None),
    }
    .map_err(|message| Refusal::invalid("InvalidConsumers", message))?;
    Ok(Checked { id, consumers })
}

/// Checks the spec against its pool: the TTL (the pool's default when the dataset names
/// none) and the contract.
pub fn against_pool(
    ds: &ArrowDataset,
    pool: &FlightPool,
    retry_after: Duration,
) -> Result<Resolved, Refusal> {
    let ttl_text = ds
        .spec
        .ttl
        .clone()
        .unwrap_or_else(|| pool.spec.default_ttl.clone());
    let ttl =
        ttl::parse_ttl(&ttl_text).map_err(|e| Refusal::invalid("InvalidTtl", e.to_string()))?;
    if let Some(contract) = &ds.spec.contract {
        if !pool.spec.contracts.contains_key(contract) {
            return Err(Refusal {
                phase: DatasetPhase::Failed,
                reason: "ContractNotFound",
                message: format!("FlightPool {:?} has no contract {contract:?}", ds.spec.pool),
                // The pool may gain the contract; look again later.
                then: Action::requeue(retry_after),
            });
        }
    }
    Ok(Resolved { ttl_text, ttl })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dataset(spec: serde_json::Value) -> ArrowDataset {
        serde_json::from_value(json!({
            "apiVersion": "arrow.trinity.io/v1alpha1", "kind": "ArrowDataset",
            "metadata": { "name": "sales", "namespace": "data" },
            "spec": spec,
        }))
        .expect("dataset")
    }

    fn pool(default_ttl: &str) -> FlightPool {
        serde_json::from_value(json!({
            "apiVersion": "arrow.trinity.io/v1alpha1", "kind": "FlightPool",
            "metadata": { "name": "analytics", "namespace": "data" },
            "spec": {
                "storage": { "url": "memory://" },
                "defaultTtl": default_ttl,
                "contracts": { "sales": { "fields": [ { "name": "id", "type": "int64" } ] } }
            }
        }))
        .expect("pool")
    }

    #[test]
    fn a_spec_is_checked_on_its_own_before_any_call() {
        let ok = check(
            &dataset(json!({"pool": "analytics", "consumers": ["a", "b"]})),
            "data",
            "sales",
        )
        .expect("valid");
        assert_eq!(ok.id.to_string(), "data/sales");
        assert_eq!(
            ok.consumers,
            Some(ConsumersSpec::Names(vec!["a".into(), "b".into()]))
        );

        let bad_name = check(&dataset(json!({"pool": "analytics"})), "data", "Bad_Name");
        assert_eq!(bad_name.expect_err("refused").reason, "InvalidName");
        let both = check(
            &dataset(json!({"pool": "analytics", "consumers": ["a"], "consumerCount": 2})),
            "data",
            "sales",
        );
        let both = both.expect_err("refused");
        assert_eq!(
            (both.reason, both.then),
            ("InvalidConsumers", Action::await_change())
        );
        let source = check(
            &dataset(json!({"pool": "analytics", "source": {"url": "s3://b/data.bin"}})),
            "data",
            "sales",
        );
        assert_eq!(source.expect_err("refused").reason, "InvalidSource");
    }

    #[test]
    fn the_pool_supplies_the_ttl_and_must_hold_the_contract() {
        let r = against_pool(
            &dataset(json!({"pool": "analytics"})),
            &pool("6h"),
            Duration::from_secs(5),
        )
        .expect("valid");
        assert_eq!(
            (r.ttl_text.as_str(), r.ttl),
            ("6h", Duration::from_secs(6 * 3600))
        );
        let own = against_pool(
            &dataset(json!({"pool": "analytics", "ttl": "30m", "contract": "sales"})),
            &pool("6h"),
            Duration::from_secs(5),
        )
        .expect("valid");
        assert_eq!(own.ttl, Duration::from_secs(1800));

        let missing = against_pool(
            &dataset(json!({"pool": "analytics", "contract": "orders"})),
            &pool("6h"),
            Duration::from_secs(5),
        )
        .expect_err("refused");
        assert_eq!(
            (missing.reason, missing.then),
            ("ContractNotFound", Action::requeue(Duration::from_secs(5)))
        );
        let ttl = against_pool(
            &dataset(json!({"pool": "analytics", "ttl": "soon"})),
            &pool("6h"),
            Duration::from_secs(5),
        );
        assert_eq!(ttl.expect_err("refused").reason, "InvalidTtl");
    }
}
