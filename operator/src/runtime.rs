//! Runs the operator: health and metrics server, leader election on a Lease, the two
//! controllers and discovery, until a shutdown signal or the loss of leadership.
//!
//! [`run`] takes any [`Client`], so tests can start the controllers against any API server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::controller::node::{FlightNodes, NodeApi};
use crate::controller::{dataset, pool, Context, ControllerConfig};
use crate::crd::{ArrowDataset, FlightPool};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;

/// Leader election settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// Seconds a lease stays valid without renewal.
    pub duration_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace_seconds: u64,
}

/// Everything [`run`] needs besides the client.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Controller settings.
    pub controllers: ControllerConfig,
    /// Address of `/healthz`, `/readyz` and `/metrics`; none when `None`.
    pub metrics_addr: Option<SocketAddr>,
    /// Leader election; the controllers start at once when `None`.
    pub leader_election: Option<LeaderElection>,
}

/// Why the operator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The Lease could not be set up.
    #[error("failed to set up leader election on Lease {namespace}/{name}: {source}")]
    Lease {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The cause.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    /// Leadership was lost while the controllers ran; restart to rejoin the election.
    #[error("failed to keep leadership: the Lease was lost, stopping the controllers")]
    LeadershipLost,
    /// The health and metrics server failed.
    #[error(transparent)]
    Http(#[from] http::ServeError),
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs both controllers and discovery until `stop` is cancelled.
pub async fn run_controllers(
    client: Client,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
    nodes: Arc<dyn NodeApi>,
    stop: CancellationToken,
    datasets_out: Option<Arc<OnceLock<kube::runtime::reflector::Store<ArrowDataset>>>>,
) {
    let ns = config.namespace.clone();
    let ns = ns.as_deref();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=flight-operator");

    let dataset_controller =
        Controller::new(api::<ArrowDataset>(&client, ns), watcher::Config::default());
    let datasets = dataset_controller.store();
    if let Some(slot) = datasets_out {
        // Set once per process; a second run keeps the first store, which is only a gauge.
        let _ = slot.set(datasets.clone());
    }
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        metrics,
        datasets,
        nodes,
    ));

    let pool_controller =
        Controller::new(api::<FlightPool>(&client, ns), watcher::Config::default())
            .owns(api::<StatefulSet>(&client, ns), owned.clone())
            .owns(api::<Service>(&client, ns), owned.clone())
            .owns(api::<ConfigMap>(&client, ns), owned.clone())
            .owns(api::<PodDisruptionBudget>(&client, ns), owned)
            // Pool status counts its datasets.
            .watches(
                api::<ArrowDataset>(&client, ns),
                watcher::Config::default(),
                |ds| {
                    ds.namespace()
                        .map(|ns| ObjectRef::<FlightPool>::new(&ds.spec.pool).within(&ns))
                },
            );
    let pools = pool_controller.store();

    let pools_done = pool_controller
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(pool::reconcile, pool::error_policy, Arc::clone(&ctx))
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "pool controller event");
            }
        });
    let datasets_done = dataset_controller
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(dataset::reconcile, dataset::error_policy, Arc::clone(&ctx))
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "dataset controller event");
            }
        });
    let discovery = crate::discovery::run(
        &ctx,
        pools,
        config.discovery_interval,
        stop.clone().cancelled_owned(),
    );
    tracing::info!(namespace = ns.unwrap_or("<all>"), "controllers started");
    let all = async {
        tokio::join!(pools_done, datasets_done, discovery);
    };
    // Reconciles in flight get a grace period once a stop is requested; after it they are
    // dropped (every reconcile is an idempotent apply, so the next leader redoes it).
    let deadline = async {
        stop.clone().cancelled_owned().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = all => tracing::info!("controllers stopped"),
        () = deadline => tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "controllers did not stop within the grace period; abandoning reconciles in flight"
        ),
    }
}

/// How long a stop waits for reconciles in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the operator until `shutdown` resolves (graceful) or leadership is lost (error).
pub async fn run(
    client: Client,
    config: OperatorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutdown requested");
            stop.cancel();
        });
    }

    let datasets = Arc::new(OnceLock::new());
    let http_task = config.metrics_addr.map(|addr| {
        let state = HttpState {
            metrics: Arc::clone(&metrics),
            datasets: Arc::clone(&datasets),
            ready: Arc::clone(&ready),
        };
        tokio::spawn(http::serve(addr, state, stop.clone().cancelled_owned()))
    });

    let mut leadership: Option<(watch::Receiver<bool>, tokio::task::JoinHandle<_>)> = None;
    if let Some(le) = &config.leader_election {
        let manager = LeaseManagerBuilder::new(client.clone(), &le.lease_name)
            .with_namespace(&le.namespace)
            .with_identity(&le.identity)
            .with_duration(le.duration_seconds)
            .with_grace(le.grace_seconds)
            .with_field_manager(crate::controller::FIELD_MANAGER)
            .build()
            .await
            .map_err(|source| RunError::Lease {
                namespace: le.namespace.clone(),
                name: le.lease_name.clone(),
                source,
            })?;
        let (mut is_leader, handle) = manager.watch().await;
        ready.store(true, Ordering::Release);
        tracing::info!(identity = %le.identity, lease = %le.lease_name, "waiting for leadership");
        loop {
            if *is_leader.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = is_leader.changed() => {
                    if changed.is_err() {
                        return Err(RunError::LeadershipLost);
                    }
                }
                _ = stop.cancelled() => {
                    drop(is_leader);
                    let _ = handle.await;
                    return Ok(());
                }
            }
        }
        tracing::info!(identity = %le.identity, "acquired leadership");
        leadership = Some((is_leader, handle));
    } else {
        ready.store(true, Ordering::Release);
    }

    // Lose leadership → stop the controllers at once.
    let lost = Arc::new(AtomicBool::new(false));
    let leader_guard = leadership.map(|(mut is_leader, handle)| {
        let lost = Arc::clone(&lost);
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = is_leader.changed() => {
                        if changed.is_err() || !*is_leader.borrow_and_update() {
                            tracing::error!("lost leadership");
                            lost.store(true, Ordering::Release);
                            stop.cancel();
                            break;
                        }
                    }
                    _ = stop.cancelled() => break,
                }
            }
            // Closing the channel releases the Lease.
            drop(is_leader);
            if let Ok(Err(e)) = handle.await {
                tracing::warn!(error = %e, "failed to release the Lease");
            }
        })
    });

    run_controllers(
        client,
        config.controllers.clone(),
        Arc::clone(&metrics),
        Arc::new(FlightNodes::default()),
        stop.clone(),
        Some(datasets),
    )
    .await;
    stop.cancel();
    if let Some(guard) = leader_guard {
        let _ = guard.await;
    }
    if let Some(task) = http_task {
        if let Ok(Err(e)) = task.await {
            return Err(e.into());
        }
    }
    if lost.load(Ordering::Acquire) {
        return Err(RunError::LeadershipLost);
    }
    Ok(())
}
