//! ArrowDataset controller: dereference the pool → validate → load a declarative source on
//! the owner node → collect expired versions → status; a finalizer removes the dataset's
//! objects from storage (and evicts caches) when the resource goes.

pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use flight_core::name::DatasetId;
use flight_core::protocol::LoadRequest;
use flight_core::storage::Storage;
use flight_core::ticket::TicketSigner;
use flight_core::versions::Versions;
use futures::future::join_all;
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Api, ResourceExt};

use super::node::NodeTarget;
use super::pool::build;
use super::{apply_status, chrono_time, set_condition, Context, Error, NewCondition};
use crate::crd::condition;
use crate::crd::{ArrowDataset, ArrowDatasetStatus, ConsumersStatus, DatasetPhase, FlightPool};
use crate::{gc, ttl};
use validate::Refusal;

/// Controller label in metrics and logs.
pub const CONTROLLER: &str = "dataset";
/// Finalizer that removes a dataset's objects from storage.
pub const FINALIZER: &str = "arrow.trinity.io/storage-cleanup";
/// Set to `"true"` to let a dataset go without removing its objects (the way out when its
/// pool or storage is gone for good).
pub const SKIP_CLEANUP_ANNOTATION: &str = "arrow.trinity.io/skip-storage-cleanup";
/// Label on ArrowDatasets created for uploads found in storage.
pub const DISCOVERED_LABEL: &str = "arrow.trinity.io/discovered";

/// Reconciles one ArrowDataset through its finalizer.
#[tracing::instrument(skip_all, fields(dataset = %ds.name_any(), namespace = ds.namespace().unwrap_or_default()))]
pub async fn reconcile(ds: Arc<ArrowDataset>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let namespace = ds.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<ArrowDataset> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, ds, |event| async {
        match event {
            FinalizerEvent::Apply(ds) => apply_dataset(&ds, &ctx, &api).await,
            FinalizerEvent::Cleanup(ds) => cleanup(&ds, &ctx, &api).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Retries transient failures after the configured delay.
pub fn error_policy(ds: Arc<ArrowDataset>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(dataset = %ds.name_any(), error = %error, "ArrowDataset reconcile failed");
    ctx.metrics.error(CONTROLLER, error.metric_label());
    Action::requeue(ctx.config.retry_after)
}

/// Writes `status` when it differs from the current one.
async fn write_status(
    api: &Api<ArrowDataset>,
    ds: &ArrowDataset,
    status: &ArrowDatasetStatus,
) -> Result<(), Error> {
    if ds.status.as_ref() == Some(status) {
        return Ok(());
    }
    apply_status(api, ds, status).await
}

async fn refuse(
    ctx: &Context,
    api: &Api<ArrowDataset>,
    ds: &ArrowDataset,
    mut status: ArrowDatasetStatus,
    refusal: Refusal,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let generation = ds.metadata.generation;
    status.phase = refusal.phase;
    status.message = Some(refusal.message.clone());
    for type_ in [condition::VALID, condition::READY] {
        set_condition(
            &mut status.conditions,
            NewCondition {
                type_,
                status: false,
                reason: refusal.reason,
                message: refusal.message.clone(),
            },
            generation,
            now,
        );
    }
    if ds.status.as_ref() != Some(&status) {
        tracing::warn!(reason = refusal.reason, message = %refusal.message, "dataset refused");
        ctx.event(ds, EventType::Warning, refusal.reason, refusal.message)
            .await;
        apply_status(api, ds, &status).await?;
    }
    Ok(refusal.then)
}

/// The owner node of a dataset (rendezvous hashing over the pool's pods, as the nodes do)
/// and the operator's token for the pool.
async fn owner_target(
    ctx: &Context,
    pool: &FlightPool,
    id: &DatasetId,
) -> Result<NodeTarget, Error> {
    let namespace = pool.namespace().unwrap_or_default();
    let peers = build::peers(&pool.name_any(), &namespace, &pool.spec);
    let uri = flight_core::placement::dataset_node(&peers, id)
        .unwrap_or_else(|| build::endpoint(&pool.name_any(), &namespace, &pool.spec));
    Ok(NodeTarget {
        uri,
        token: operator_token(ctx, pool).await?,
    })
}

pub(crate) async fn operator_token(
    ctx: &Context,
    pool: &FlightPool,
) -> Result<Option<String>, Error> {
    let namespace = pool.namespace().unwrap_or_default();
    match pool
        .spec
        .auth
        .as_ref()
        .and_then(|a| a.operator_token_key.as_ref().map(|k| (&a.secret_name, k)))
    {
        Some((secret, key)) => Ok(Some(ctx.secret_value(&namespace, secret, key).await?)),
        None => Ok(None),
    }
}

async fn ticket_signer(ctx: &Context, pool: &FlightPool) -> Result<Option<TicketSigner>, Error> {
    let namespace = pool.namespace().unwrap_or_default();
    let Some(auth) = &pool.spec.auth else {
        return Ok(None);
    };
    let Some(key) = &auth.ticket_key_key else {
        return Ok(None);
    };
    let value = ctx.secret_value(&namespace, &auth.secret_name, key).await?;
    TicketSigner::new(value.into_bytes())
        .map(Some)
        .map_err(|e| Error::Credentials {
            namespace,
            secret: auth.secret_name.clone(),
            key: key.clone(),
            reason: e.to_string(),
        })
}

fn storage_error(
    storage: &Storage,
    action: String,
) -> impl FnOnce(flight_core::Error) -> Error + '_ {
    move |source| Error::Storage {
        action,
        url: storage.url().to_owned(),
        source,
    }
}

/// One pass over a live dataset, in the pool controller's order: validate (on its own,
/// then against its pool) → plan (versions and expiry) → apply (load a declared source,
/// delete expired versions, preload) → status.
async fn apply_dataset(
    ds: &ArrowDataset,
    ctx: &Context,
    api: &Api<ArrowDataset>,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let generation = ds.metadata.generation;
    let namespace = ds.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = ds.name_any();
    let mut status = ds.status.clone().unwrap_or_default();
    status.observed_generation = generation;

    // Validate.
    let checked = match validate::check(ds, &namespace, &name) {
        Ok(checked) => checked,
        Err(refusal) => return refuse(ctx, api, ds, status, refusal).await,
    };
    let Some(pool) = get_pool(ctx, &namespace, &ds.spec.pool).await? else {
        let refusal = Refusal {
            phase: DatasetPhase::Pending,
            reason: "PoolNotFound",
            message: format!(
                "FlightPool {:?} does not exist in {namespace}",
                ds.spec.pool
            ),
            then: Action::requeue(ctx.config.retry_after),
        };
        return refuse(ctx, api, ds, status, refusal).await;
    };
    let resolved = match validate::against_pool(ds, &pool, ctx.config.retry_after) {
        Ok(resolved) => resolved,
        Err(refusal) => return refuse(ctx, api, ds, status, refusal).await,
    };
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

    // Plan: expiry first, an expired resource is deleted, not loaded.
    let created = ds
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(chrono_time)
        .unwrap_or(now);
    let storage = ctx.storage_for(&pool).await?;
    let id = &checked.id;
    let plan_now = || async {
        let manifests = Versions::new(storage.clone())
            .live(id)
            .await
            .map_err(storage_error(&storage, format!("list versions of {id}")))?;
        Ok::<_, Error>(gc::plan(&manifests, resolved.ttl, created, now))
    };
    let mut plan = match plan_now().await? {
        Ok(plan) => plan,
        Err(e) => {
            let refusal = Refusal::invalid("InvalidTtl", e.to_string());
            return refuse(ctx, api, ds, status, refusal).await;
        }
    };
    if plan.expired {
        return expire(ctx, api, ds, status, &plan).await;
    }

    // Apply: a declarative source is loaded once (per source), by the owner node.
    if let Some(source) = &ds.spec.source {
        let fingerprint = source.fingerprint(ds.spec.contract.as_deref());
        if status.loaded_source.as_deref() != Some(fingerprint.as_str()) {
            let req = LoadRequest {
                namespace: namespace.clone(),
                name: name.clone(),
                source: source.url.clone(),
                format: source.effective_format().map(|f| f.as_str().to_owned()),
                ttl: Some(resolved.ttl_text.clone()),
                contract: ds.spec.contract.clone(),
                delimiter: source.delimiter.as_ref().and_then(|d| d.chars().next()),
                consumers: checked.consumers.clone(),
            };
            status.phase = DatasetPhase::Loading;
            status.message = Some(format!("loading {}", source.url));
            write_status(api, ds, &status).await?;
            if let Err(refusal) = load_source(ctx, ds, &pool, id, &mut status, req, &plan).await? {
                return refuse(ctx, api, ds, status, refusal).await;
            }
            status.loaded_source = Some(fingerprint);
            plan = plan_now().await??;
        }
    }
    delete_expired_versions(ctx, &storage, id, &plan.expired_versions).await?;
    // `preload`: ask the pool to hold the newest version in memory (the node asked loads
    // its parts and asks each other part's owner for theirs).
    let preload = match (&plan.newest, ds.spec.preload) {
        (Some((manifest, _)), true) => {
            let target = owner_target(ctx, &pool, id).await?;
            Some(
                ctx.nodes
                    .preload(target, id.clone(), manifest.version)
                    .await
                    .map_err(|e| e.to_string()),
            )
        }
        _ => None,
    };

    // Status.
    let signer = ticket_signer(ctx, &pool).await?;
    let endpoint = build::endpoint(&pool.name_any(), &namespace, &pool.spec);
    let released_before = status
        .consumers
        .as_ref()
        .is_some_and(ConsumersStatus::all_released);
    status::fill(
        &mut status,
        &plan,
        id,
        signer.as_ref(),
        endpoint,
        preload,
        generation,
        now,
    );
    write_status(api, ds, &status).await?;
    if !released_before {
        announce_release(ctx, ds, &status).await;
    }
    let mut after = ttl::requeue_after(plan.next_expiry, now).max(Duration::from_secs(1));
    if status.consumers.as_ref().is_some_and(|c| !c.all_released()) {
        // Releases change the record in storage, not this resource: look again soon.
        after = after.min(ctx.config.retry_after.max(Duration::from_secs(1)));
    }
    Ok(Action::requeue(after))
}

/// The dataset's pool, if it exists.
async fn get_pool(ctx: &Context, namespace: &str, pool: &str) -> Result<Option<FlightPool>, Error> {
    let pools: Api<FlightPool> = Api::namespaced(ctx.client.clone(), namespace);
    pools.get_opt(pool).await.map_err(|source| Error::Read {
        what: format!("FlightPool {namespace}/{pool}"),
        source,
    })
}

/// Asks the owner node to ingest the declared source. `Ok(Err(refusal))` when the load
/// failed: the `Loaded` condition says why, and the refusal retries (or waits, for a
/// permanent failure) no later than the next expiry.
async fn load_source(
    ctx: &Context,
    ds: &ArrowDataset,
    pool: &FlightPool,
    id: &DatasetId,
    status: &mut ArrowDatasetStatus,
    req: LoadRequest,
    plan: &gc::Plan,
) -> Result<Result<(), Refusal>, Error> {
    let now = ctx.clock.now();
    let generation = ds.metadata.generation;
    let source = req.source.clone();
    let target = owner_target(ctx, pool, id).await?;
    match ctx.nodes.load(target, req).await {
        Ok(put) => {
            let message = format!("loaded version {} from {source}", put.version);
            set_condition(
                &mut status.conditions,
                NewCondition {
                    type_: condition::LOADED,
                    status: true,
                    reason: "Loaded",
                    message: message.clone(),
                },
                generation,
                now,
            );
            ctx.event(ds, EventType::Normal, "Loaded", message).await;
            Ok(Ok(()))
        }
        Err(e) => {
            set_condition(
                &mut status.conditions,
                NewCondition {
                    type_: condition::LOADED,
                    status: false,
                    reason: "LoadFailed",
                    message: e.to_string(),
                },
                generation,
                now,
            );
            // Still expire on time even if the source never loads.
            let retry = if e.permanent {
                ttl::requeue_after(plan.next_expiry, now)
            } else {
                ctx.config
                    .retry_after
                    .min(ttl::requeue_after(plan.next_expiry, now))
            };
            Ok(Err(Refusal {
                phase: DatasetPhase::Failed,
                reason: "LoadFailed",
                message: e.to_string(),
                then: Action::requeue(retry.max(Duration::from_secs(1))),
            }))
        }
    }
}

/// Older versions go as they expire.
async fn delete_expired_versions(
    ctx: &Context,
    storage: &Storage,
    id: &DatasetId,
    versions: &[u64],
) -> Result<(), Error> {
    for version in versions {
        Versions::new(storage.clone())
            .delete_version(id, *version)
            .await
            .map_err(storage_error(
                storage,
                format!("delete version {version} of {id}"),
            ))?;
        ctx.metrics.gc_deleted("version", 1);
        tracing::info!(version, "deleted expired version");
    }
    Ok(())
}

/// An Event once every consumer of the newest version has released it.
async fn announce_release(ctx: &Context, ds: &ArrowDataset, status: &ArrowDatasetStatus) {
    let (Some(c), Some(version)) = (&status.consumers, status.version) else {
        return;
    };
    if !c.all_released() {
        return;
    }
    let who = if c.released.is_empty() {
        format!("{} consumers", c.count)
    } else {
        c.released.join(", ")
    };
    let message = format!(
        "version {version} was released by every consumer ({who}); it is deleted at {}",
        status
            .expires_at
            .as_deref()
            .unwrap_or("the end of the release grace")
    );
    ctx.event(ds, EventType::Normal, "Released", message).await;
}

/// The newest version (or the empty resource) expired: say so, then delete the resource;
/// the finalizer removes the objects.
async fn expire(
    ctx: &Context,
    api: &Api<ArrowDataset>,
    ds: &ArrowDataset,
    mut status: ArrowDatasetStatus,
    plan: &gc::Plan,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let message = format!("expired at {}", ttl::format_instant(plan.expires_at));
    status.phase = DatasetPhase::Expired;
    status.message = Some(message.clone());
    status.expires_at = Some(ttl::format_instant(plan.expires_at));
    set_condition(
        &mut status.conditions,
        NewCondition {
            type_: condition::READY,
            status: false,
            reason: "Expired",
            message: message.clone(),
        },
        ds.metadata.generation,
        now,
    );
    write_status(api, ds, &status).await?;
    ctx.event(ds, EventType::Normal, "Expired", message).await;
    let name = ds.name_any();
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(source) => {
            return Err(Error::Delete {
                what: format!("expired ArrowDataset {name}"),
                source,
            })
        }
    }
    Ok(Action::await_change())
}

/// Finalizer: remove the dataset's objects from storage, then evict node caches.
async fn cleanup(
    ds: &ArrowDataset,
    ctx: &Context,
    api: &Api<ArrowDataset>,
) -> Result<Action, Error> {
    let namespace = ds.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = ds.name_any();
    if ds
        .annotations()
        .get(SKIP_CLEANUP_ANNOTATION)
        .map(String::as_str)
        == Some("true")
    {
        let note = format!("{SKIP_CLEANUP_ANNOTATION} is set: the objects in storage are kept");
        ctx.event(ds, EventType::Warning, "CleanupSkipped", note)
            .await;
        return Ok(Action::await_change());
    }
    let Ok(id) = DatasetId::new(namespace.as_str(), name.as_str()) else {
        // A name the node refuses cannot have objects in storage.
        return Ok(Action::await_change());
    };
    let pools: Api<FlightPool> = Api::namespaced(ctx.client.clone(), &namespace);
    let pool = pools
        .get_opt(&ds.spec.pool)
        .await
        .map_err(|source| Error::Read {
            what: format!("FlightPool {namespace}/{}", ds.spec.pool),
            source,
        })?;
    let Some(pool) = pool else {
        let reason = format!("FlightPool {:?} does not exist", ds.spec.pool);
        return blocked(ctx, api, ds, reason).await;
    };
    let storage = match ctx.storage_for(&pool).await {
        Ok(s) => s,
        Err(e) => return blocked(ctx, api, ds, e.to_string()).await,
    };
    let deleted = match Versions::new(storage.clone()).delete_dataset(&id).await {
        Ok(v) => v,
        Err(e) => {
            let reason = format!("failed to delete the objects in {}: {e}", storage.url());
            return blocked(ctx, api, ds, reason).await;
        }
    };
    ctx.metrics.gc_deleted("dataset", 1);
    tracing::info!(
        versions = deleted.len(),
        "deleted dataset objects from storage"
    );

    // Best effort: a node that is down has nothing cached anyway.
    let token = operator_token(ctx, &pool).await.unwrap_or(None);
    let evictions = build::peers(&pool.name_any(), &namespace, &pool.spec)
        .into_iter()
        .map(|uri| {
            ctx.nodes.evict(
                NodeTarget {
                    uri,
                    token: token.clone(),
                },
                id.clone(),
            )
        });
    for result in join_all(evictions).await {
        if let Err(e) = result {
            tracing::info!(error = %e, "eviction skipped");
        }
    }
    ctx.event(
        ds,
        EventType::Normal,
        "Deleted",
        format!("removed {} version(s) from storage", deleted.len()),
    )
    .await;
    Ok(Action::await_change())
}

/// Clean-up cannot proceed: a condition and an Event naming the way out, and a retry.
async fn blocked(
    ctx: &Context,
    api: &Api<ArrowDataset>,
    ds: &ArrowDataset,
    reason: String,
) -> Result<Action, Error> {
    let message = format!(
        "{reason}; the objects stay in storage until this is fixed, or annotate the \
         ArrowDataset with {SKIP_CLEANUP_ANNOTATION}=true to delete it without removing them"
    );
    let mut status = ds.status.clone().unwrap_or_default();
    set_condition(
        &mut status.conditions,
        NewCondition {
            type_: condition::CLEANUP_BLOCKED,
            status: true,
            reason: "StorageUnavailable",
            message: message.clone(),
        },
        ds.metadata.generation,
        ctx.clock.now(),
    );
    if ds.status.as_ref() != Some(&status) {
        ctx.event(ds, EventType::Warning, "CleanupBlocked", message)
            .await;
        apply_status(api, ds, &status).await?;
    }
    Err(Error::CleanupBlocked {
        dataset: format!("{}/{}", ds.namespace().unwrap_or_default(), ds.name_any()),
        reason,
    })
}

#[cfg(test)]
mod reconcile_tests;
