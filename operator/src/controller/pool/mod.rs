//! FlightPool controller: validate → build (pure) → apply (server-side, one field manager)
//! → status. The pool owns everything it creates, so deleting it deletes them.

pub mod build;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};

use super::{apply, apply_status, Context, Error};
use crate::crd::{ArrowDataset, FlightPool};

/// Controller label in metrics and logs.
pub const CONTROLLER: &str = "pool";

/// How often a healthy pool is re-checked even without a watch event.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Number of ArrowDatasets of a pool, from the dataset cache.
pub fn count_datasets(datasets: &Store<ArrowDataset>, namespace: &str, pool: &str) -> i32 {
    let n = datasets
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace) && d.spec.pool == pool)
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Brings a pool's objects and status to the desired state.
#[tracing::instrument(skip_all, fields(pool = %pool.name_any(), namespace = pool.namespace().unwrap_or_default()))]
pub async fn reconcile(pool: Arc<FlightPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let namespace = pool
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let name = pool.name_any();
    let api: Api<FlightPool> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = ctx.clock.now();
    let datasets = count_datasets(&ctx.datasets, &namespace, &name);

    let objects = match build::build(&pool, &ctx.config.build) {
        Ok(objects) => objects,
        Err(e) => {
            let message = e.to_string();
            let status = status::invalid(&pool, datasets, &message, now);
            if pool.status.as_ref() != Some(&status) {
                tracing::warn!(error = %message, "invalid FlightPool spec");
                ctx.event(&*pool, EventType::Warning, "InvalidSpec", message)
                    .await;
                apply_status(&api, &pool, &status).await?;
            }
            // Nothing to retry until the spec changes.
            return Ok(Action::await_change());
        }
    };

    // The ConfigMap first: pods mount it.
    apply(&ctx.client, &namespace, &objects.config_map).await?;
    apply(&ctx.client, &namespace, &objects.headless_service).await?;
    apply(&ctx.client, &namespace, &objects.client_service).await?;
    let sts = apply(&ctx.client, &namespace, &objects.stateful_set).await?;
    apply(&ctx.client, &namespace, &objects.pod_disruption_budget).await?;

    let status = status::observed(&pool, &sts, datasets, now);
    if pool.status.as_ref() != Some(&status) {
        apply_status(&api, &pool, &status).await?;
    }
    Ok(Action::requeue(RESYNC))
}

/// Retries transient failures after the configured delay.
pub fn error_policy(pool: Arc<FlightPool>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(pool = %pool.name_any(), error = %error, "FlightPool reconcile failed");
    ctx.metrics.error(CONTROLLER, error.metric_label());
    Action::requeue(ctx.config.retry_after)
}

#[cfg(test)]
mod reconcile_tests;
