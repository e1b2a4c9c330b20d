//! Pure status computation of the FlightPool controller.

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::ResourceExt;

use super::build;
use crate::controller::{set_condition, NewCondition};
use crate::crd::condition;
use crate::crd::{FlightPool, FlightPoolStatus};

/// Status of a pool whose objects were applied; `sts` is the StatefulSet as the API server
/// returned it (with its status).
pub fn observed(
    pool: &FlightPool,
    sts: &StatefulSet,
    datasets: i32,
    storage_problem: Option<&String>,
    now: DateTime<Utc>,
) -> FlightPoolStatus {
    let generation = pool.metadata.generation;
    let mut status = pool.status.clone().unwrap_or_default();
    let desired = pool.spec.replicas;
    let (replicas, ready) = sts
        .status
        .as_ref()
        .map(|s| (s.replicas, s.ready_replicas.unwrap_or(0)))
        .unwrap_or((0, 0));
    status.replicas = replicas;
    status.ready_replicas = ready;
    status.datasets = datasets;
    status.observed_generation = generation;
    status.selector = Some(build::selector(&pool.name_any()));
    status.endpoint = Some(build::endpoint(
        &pool.name_any(),
        &pool.namespace().unwrap_or_default(),
        &pool.spec,
    ));
    set_condition(
        &mut status.conditions,
        NewCondition {
            type_: condition::VALID,
            status: true,
            reason: "Accepted",
            message: "the spec was accepted".into(),
        },
        generation,
        now,
    );
    let (usable, reason, message) = match storage_problem {
        None => (
            true,
            "StorageReachable",
            "the operator lists the pool's storage".to_owned(),
        ),
        Some(p) => (false, "StorageUnusable", p.clone()),
    };
    set_condition(
        &mut status.conditions,
        NewCondition {
            type_: condition::STORAGE_READY,
            status: usable,
            reason,
            message,
        },
        generation,
        now,
    );
    let (ok, reason, message) = if desired == 0 {
        (false, "ScaledToZero", "the pool has no replicas".to_owned())
    } else if ready >= desired {
        (
            true,
            "AllReplicasReady",
            format!("{ready}/{desired} replicas ready"),
        )
    } else {
        (
            false,
            "ReplicasNotReady",
            format!("{ready}/{desired} replicas ready"),
        )
    };
    set_condition(
        &mut status.conditions,
        NewCondition {
            type_: condition::READY,
            status: ok,
            reason,
            message,
        },
        generation,
        now,
    );
    status
}

/// Whether the last status found the pool's storage usable (None before any check).
pub fn storage_usable(pool: &FlightPool) -> Option<bool> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == condition::STORAGE_READY)
        .map(|c| c.status == "True")
}

/// Status of a pool whose spec was refused: the last observed counts stay, both conditions
/// say why.
pub fn invalid(
    pool: &FlightPool,
    datasets: i32,
    message: &str,
    now: DateTime<Utc>,
) -> FlightPoolStatus {
    let generation = pool.metadata.generation;
    let mut status = pool.status.clone().unwrap_or_default();
    status.datasets = datasets;
    status.observed_generation = generation;
    for type_ in [condition::VALID, condition::READY] {
        set_condition(
            &mut status.conditions,
            NewCondition {
                type_,
                status: false,
                reason: "InvalidSpec",
                message: message.to_owned(),
            },
            generation,
            now,
        );
    }
    status
}
