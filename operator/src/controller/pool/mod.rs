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
use crate::controller::node::NodeTarget;
use crate::crd::{ArrowDataset, FlightPool, PoolCache};

/// Controller label in metrics and logs.
pub const CONTROLLER: &str = "pool";

/// How often a healthy pool is re-checked even without a watch event.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Number of ArrowDatasets of a pool, from the dataset cache. Datasets being deleted do not
/// count: the pool's watch can see a dataset's final removal before the cache does, and by
/// then the cache holds it with its deletion timestamp, so the count is already right.
pub fn count_datasets(datasets: &Store<ArrowDataset>, namespace: &str, pool: &str) -> i32 {
    let n = datasets
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace) && d.spec.pool == pool)
        .filter(|d| d.metadata.deletion_timestamp.is_none())
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

    // The same storage check a node runs at start, so a misconfigured pool says why on
    // its status even while its pods crash-loop.
    let storage = match ctx.storage_for(&pool).await {
        Ok(s) => ctx.nodes.check_storage(s).await,
        Err(e) => Err(e.to_string()),
    };
    let was_usable = status::storage_usable(&pool);
    let mut status = status::observed(&pool, &sts, datasets, storage.as_ref().err(), now);
    status.cache = cache_fill(&ctx, &pool, status.ready_replicas).await;
    if pool.status.as_ref() != Some(&status) {
        apply_status(&api, &pool, &status).await?;
    }
    if let Err(problem) = &storage {
        if was_usable != Some(false) {
            ctx.event(
                &*pool,
                EventType::Warning,
                "StorageUnusable",
                problem.clone(),
            )
            .await;
        }
        return Ok(Action::requeue(ctx.config.retry_after.max(RESYNC / 10)));
    }
    let answered = status.cache.as_ref().map_or(0, |c| c.nodes);
    if status.ready_replicas > answered {
        // A node that just became ready may not answer yet: ask again soon for the fill.
        return Ok(Action::requeue(
            ctx.config.retry_after.clamp(Duration::from_secs(1), RESYNC),
        ));
    }
    Ok(Action::requeue(RESYNC))
}

/// The pool's cache fill, from the `stats` of each ready node (asked at once, each for at
/// most a few seconds); None when no node answers.
async fn cache_fill(ctx: &Context, pool: &FlightPool, ready: i32) -> Option<PoolCache> {
    if ready <= 0 {
        return None;
    }
    let namespace = pool.namespace().unwrap_or_default();
    let token = crate::controller::dataset::operator_token(ctx, pool)
        .await
        .ok()?;
    let peers = build::peers(&pool.name_any(), &namespace, &pool.spec);
    let answers = futures::future::join_all(peers.into_iter().map(|uri| {
        ctx.nodes.cache(NodeTarget {
            uri,
            token: token.clone(),
        })
    }))
    .await;
    let figures: Vec<(u64, u64)> = answers.into_iter().filter_map(Result::ok).collect();
    if figures.is_empty() {
        return None;
    }
    let used: u64 = figures.iter().map(|f| f.0).sum();
    let capacity: u64 = figures.iter().map(|f| f.1).sum();
    let percent = used.saturating_mul(100).checked_div(capacity).unwrap_or(0);
    Some(PoolCache {
        cached_bytes: i64::try_from(used).unwrap_or(i64::MAX),
        capacity_bytes: i64::try_from(capacity).unwrap_or(i64::MAX),
        cached: crate::controller::dataset::status::human_bytes(used),
        capacity: crate::controller::dataset::status::human_bytes(capacity),
        percentage: format!("{percent}%"),
        nodes: i32::try_from(figures.len()).unwrap_or(i32::MAX),
    })
}

/// Retries transient failures after the configured delay.
pub fn error_policy(pool: Arc<FlightPool>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(pool = %pool.name_any(), error = %error, "FlightPool reconcile failed");
    ctx.metrics.error(CONTROLLER, error.metric_label());
    Action::requeue(ctx.config.retry_after)
}

#[cfg(test)]
mod reconcile_tests;
