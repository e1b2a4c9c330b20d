//! Discovery: datasets that atoms uploaded with `DoPut` get an ArrowDataset, so every
//! dataset is visible to `kubectl get arrowdatasets` and every dataset expires.
//!
//! Each pool's storage is scanned for its own namespace; a dataset with committed versions
//! and no ArrowDataset gets one, with the upload's TTL (or none, meaning the pool default).

use std::collections::BTreeMap;
use std::time::Duration;

use flight_core::name::DatasetId;
use flight_core::versions::Versions;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use crate::controller::dataset::DISCOVERED_LABEL;
use crate::controller::{Context, Error};
use crate::crd::{ArrowDataset, ArrowDatasetSpec, FlightPool};

/// Writes a TTL in the compact form the CRD schema accepts (`90s`, `6h`, `7d`, `2w`).
pub fn compact_ttl(seconds: u64) -> Option<String> {
    if seconds == 0 {
        return None;
    }
    let units = [
        (604_800, "w"),
        (86_400, "d"),
        (3_600, "h"),
        (60, "m"),
        (1, "s"),
    ];
    units
        .iter()
        .find(|(size, _)| seconds.is_multiple_of(*size))
        .map(|(size, unit)| format!("{}{unit}", seconds / size))
}

/// The ArrowDataset describing an uploaded dataset.
pub fn discovered_resource(
    pool: &str,
    id: &DatasetId,
    ttl_seconds: Option<u64>,
    contract: Option<String>,
) -> ArrowDataset {
    let mut ds = ArrowDataset::new(
        id.name(),
        ArrowDatasetSpec {
            pool: pool.to_owned(),
            source: None,
            contract,
            ttl: ttl_seconds.and_then(compact_ttl),
            preload: false,
            // An upload's consumers live in its record; the status shows them.
            consumers: None,
            consumer_count: None,
        },
    );
    ds.metadata = ObjectMeta {
        name: Some(id.name().to_owned()),
        namespace: Some(id.namespace().to_owned()),
        labels: Some(BTreeMap::from([(
            DISCOVERED_LABEL.to_owned(),
            "true".to_owned(),
        )])),
        ..ObjectMeta::default()
    };
    ds
}

/// Scans one pool's storage and creates the missing ArrowDatasets; returns how many.
pub async fn discover_pool(ctx: &Context, pool: &FlightPool) -> Result<usize, Error> {
    let namespace = pool
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let storage = ctx.storage_for(pool).await?;
    let storage_error = |action: String| {
        let url = storage.url().to_owned();
        move |source| Error::Storage {
            action,
            url,
            source,
        }
    };
    let ids = Versions::new(storage.clone())
        .datasets(Some(&namespace))
        .await
        .map_err(storage_error(format!("list datasets of {namespace}")))?;
    let api: Api<ArrowDataset> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut created = 0;
    for id in ids {
        let key = ObjectRef::<ArrowDataset>::new(id.name()).within(id.namespace());
        if ctx.datasets.get(&key).is_some() {
            continue;
        }
        let manifests = Versions::new(storage.clone())
            .live(&id)
            .await
            .map_err(storage_error(format!("list versions of {id}")))?;
        let Some(newest) = manifests.iter().max_by_key(|m| m.version) else {
            continue;
        };
        let ds = discovered_resource(
            &pool.name_any(),
            &id,
            newest.ttl_seconds,
            newest.contract.clone(),
        );
        match api.create(&PostParams::default(), &ds).await {
            Ok(_) => {
                created += 1;
                ctx.metrics.discovered();
                tracing::info!(dataset = %id, pool = %pool.name_any(), "discovered uploaded dataset");
            }
            // Created meanwhile (by a user, or the cache was behind).
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(source) => {
                return Err(Error::Apply {
                    what: format!("discovered ArrowDataset {id}"),
                    source,
                })
            }
        }
    }
    Ok(created)
}

/// Scans every cached pool once; failures of one pool are logged and do not stop the rest.
pub async fn discover_all(ctx: &Context, pools: &Store<FlightPool>) -> usize {
    let mut created = 0;
    for pool in pools.state() {
        if pool.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match discover_pool(ctx, &pool).await {
            Ok(n) => created += n,
            Err(e) => {
                tracing::warn!(pool = %pool.name_any(), error = %e, "discovery failed");
                ctx.metrics.error("discovery", e.metric_label());
            }
        }
    }
    created
}

/// Runs discovery every `interval` until `shutdown` resolves.
pub async fn run(
    ctx: &Context,
    pools: Store<FlightPool>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Let the caches fill before the first scan, so existing resources are not recreated.
    tokio::select! {
        () = &mut shutdown => return,
        r = async { tokio::join!(pools.wait_until_ready(), ctx.datasets.wait_until_ready()) } => {
            if r.0.is_err() || r.1.is_err() {
                return;
            }
        }
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticker.tick() => {
                // A scan can wait on slow storage (retries); shutdown must not wait for it.
                // Stopping mid-scan is safe: each resource is created idempotently.
                tokio::select! {
                    () = &mut shutdown => return,
                    _ = discover_all(ctx, &pools) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_written_in_the_schema_form() {
        assert_eq!(compact_ttl(0), None);
        assert_eq!(compact_ttl(90), Some("90s".into()));
        assert_eq!(compact_ttl(1800), Some("30m".into()));
        assert_eq!(compact_ttl(6 * 3600), Some("6h".into()));
        assert_eq!(compact_ttl(7 * 86_400), Some("1w".into()));
        assert_eq!(compact_ttl(3 * 86_400), Some("3d".into()));
        assert_eq!(compact_ttl(3601), Some("3601s".into()));
        let re = regex::Regex::new(crate::crd::TTL_PATTERN).expect("regex");
        for s in [1, 59, 60, 3600, 86_400, 604_800, u64::MAX] {
            let text = compact_ttl(s).expect("non-zero");
            assert!(re.is_match(&text), "{text}");
        }
    }

    #[test]
    fn discovered_resources_are_labelled_and_carry_the_upload_ttl() {
        let id = DatasetId::new("data", "sales").expect("valid");
        let ds = discovered_resource("analytics", &id, Some(21_600), Some("sales".into()));
        assert_eq!(ds.metadata.namespace.as_deref(), Some("data"));
        assert_eq!(ds.name_any(), "sales");
        assert_eq!(ds.spec.pool, "analytics");
        assert_eq!(ds.spec.ttl.as_deref(), Some("6h"));
        assert_eq!(ds.spec.contract.as_deref(), Some("sales"));
        assert_eq!(
            ds.labels().get(DISCOVERED_LABEL).map(String::as_str),
            Some("true")
        );
        let none = discovered_resource("analytics", &id, None, None);
        assert_eq!(none.spec.ttl, None, "the pool default applies");
    }
}
