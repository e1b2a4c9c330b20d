//! The node's domain logic, shared by the Flight service and the HTTP side port. Nothing
//! here knows gRPC. This module holds the node's state, its limits and `stats`; the work is
//! in `ingest` (uploads, `load`, the checks of an upload), `writer` (parts encoded and
//! stored while the upload streams), `serve` (tickets to manifests, parts from memory or
//! storage, `preload`) and `lifecycle` (list, delete, evict, renew, release).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt, TryStreamExt};
use lru::LruCache;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::auth::Principal;
use crate::budget::{Budgets, MemoryPermit};
use crate::cache::{
    batch_size, Cache, CacheKey, CacheStats, EncodedPart, Message, PartKey, Reservation,
};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::consumers::Consumers;
use crate::contract::{Contract, Contracts};
use crate::encode::{EncodedForStorage, PartEncoder, PartFormat};
use crate::error::{Error, Result};
use crate::manifest::{self, Manifest, PartInfo, MANIFEST_FORMAT};
use crate::metrics::Metrics;
use crate::name::DatasetId;
use crate::placement::Placement;
use crate::storage::Storage;
use crate::ticket::{Ticket, TicketSigner};
use crate::versions::{Current, Versions};

mod ingest;
mod lifecycle;
mod select;
mod serve;
mod writer;

pub use ingest::{check_batch_rows, check_schema, upload_size, MAX_BATCH_ROWS};
pub use select::Plan;
use writer::*;

/// Target size of one Flight message sent by `DoGet`. Large messages mean fewer gRPC
/// frames per byte; it stays well below the default maximum message size.
pub const TARGET_MESSAGE_SIZE: usize = 4 << 20;
/// Rows per batch when decoding Parquet.
const READ_BATCH_ROWS: usize = 64 * 1024;
/// Parts fetched from storage at once when loading a version.
const LOAD_PARALLELISM: usize = 2;

/// Limits and defaults of the data path.
#[derive(Debug, Clone)]
pub struct Limits {
    pub part_size: usize,
    pub max_message_size: usize,
    pub max_upload_size: u64,
    pub max_upload_batches: u64,
    pub default_ttl: Option<Duration>,
    /// Uploads with nothing written for this long are taken for dead by the sweep; an
    /// upload in progress refreshes its marker four times per grace period.
    pub orphan_grace: Duration,
    /// Storage prefixes outside every namespace that `load` may read (shared areas the
    /// platform team allows); each namespace's own prefix is always allowed.
    pub load_source_prefixes: Vec<String>,
    /// How long an upload may send nothing before it is abandoned.
    pub upload_idle_timeout: Duration,
    /// How long a stream may go unread before it is ended.
    pub stream_stall_timeout: Duration,
    /// How long a version released by all its consumers stays readable.
    pub release_grace: Duration,
}

impl Limits {
    pub fn from_config(c: &Config) -> Self {
        Self {
            part_size: usize::try_from(c.part_size).unwrap_or(usize::MAX).max(1),
            max_message_size: usize::try_from(c.max_message_size).unwrap_or(usize::MAX),
            max_upload_size: c.max_upload_size,
            max_upload_batches: c.max_upload_batches,
            default_ttl: c.default_ttl,
            orphan_grace: c.orphan_grace,
            load_source_prefixes: c.load_source_prefixes.clone(),
            upload_idle_timeout: c.upload_idle_timeout,
            stream_stall_timeout: c.stream_stall_timeout,
            release_grace: c.release_grace,
        }
    }

    /// How often an upload in progress refreshes its marker.
    fn marker_refresh(&self) -> Duration {
        (self.orphan_grace / 4).clamp(Duration::from_millis(10), Duration::from_secs(60))
    }

    fn message_target(&self) -> usize {
        TARGET_MESSAGE_SIZE
            .min(self.max_message_size / 2)
            .max(64 * 1024)
    }
}

/// Options of one upload (from `x-flight-ttl` / `x-flight-contract` or query parameters).
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub ttl: Option<Duration>,
    pub contract: Option<String>,
    /// `flight`, `http` or the source object of a `load`.
    pub source: String,
    /// The schema message exactly as a Flight client sent it (its `data_header`), kept and
    /// served back instead of a re-encoding of the decoded schema.
    pub schema_message: Option<Bytes>,
    /// Who will read the version; it is deleted once they have all released it.
    pub consumers: Option<Consumers>,
}

pub use crate::protocol::{
    CachedTableInfo, DatasetRef, LoadRequest, NodePreload, PreloadRequest, PreloadResult,
};

/// The `stats` action's answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node: Option<String>,
    pub storage_url: String,
    /// Node-wide memory and cache counters; only for a token of every namespace.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStats>,
    /// Request memory, uploads and refusals; only for a token of every namespace.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::budget::BudgetStats>,
    /// The pool's nodes as this node sees them (its peers file, or only itself), sorted;
    /// only for a token of every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<String>>,
    /// The versions of which this node holds parts in memory.
    pub tables: Vec<CachedTableInfo>,
}

/// A manifest this node read, with the ETag of its record.
type KnownManifest = (Arc<Manifest>, Option<String>);

/// Shared state of a running node.
pub struct Node {
    storage: Storage,
    versions: Versions,
    cache: Cache,
    contracts: Contracts,
    signer: Option<TicketSigner>,
    placement: Placement,
    limits: Limits,
    budgets: Arc<Budgets>,
    metrics: Metrics,
    /// Manifests read, with the ETag of their record (checked before each use).
    manifests: Mutex<LruCache<CacheKey, KnownManifest>>,
    loading: Mutex<HashMap<PartKey, LoadWatch>>,
    /// Reads in flight per version (DoGet streams, exports): a version released by all its
    /// consumers is deleted only once none is left.
    reads: Arc<Mutex<HashMap<CacheKey, usize>>>,
    /// The time for expiry, leases and sweeps.
    clock: Arc<dyn Clock>,
}

/// A read in flight of one version; counted in `Node::reads` until dropped.
struct ReadGuard {
    reads: Arc<Mutex<HashMap<CacheKey, usize>>>,
    key: CacheKey,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = reads.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                reads.remove(&self.key);
            }
        }
    }
}

/// A part being read from storage into memory: `None` until the load ends.
type LoadWatch = watch::Receiver<Option<std::result::Result<Arc<EncodedPart>, Arc<Error>>>>;

/// What a `preload` did on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preloaded {
    /// Parts this node was asked to hold.
    pub parts: u32,
    /// Of those, the parts now in its memory.
    pub cached: u32,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("storage", &self.storage.url())
            .finish_non_exhaustive()
    }
}

impl Node {
    pub fn new(
        storage: Storage,
        cache_limit: usize,
        contracts: Contracts,
        signer: Option<TicketSigner>,
        placement: Placement,
        limits: Limits,
    ) -> Self {
        Self {
            versions: Versions::new(storage.clone()),
            storage,
            cache: Cache::new(cache_limit),
            contracts,
            signer,
            placement,
            limits,
            budgets: Arc::new(Budgets::new(
                (cache_limit / 4).max(64 << 20),
                Duration::from_secs(10),
                32,
                8,
            )),
            metrics: Metrics::new(),
            manifests: Mutex::new(LruCache::new(
                NonZeroUsize::new(16_384).unwrap_or(NonZeroUsize::MIN),
            )),
            loading: Mutex::new(HashMap::new()),
            reads: Arc::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Builds a node from its flags (reads the contracts, key and peers files).
    pub fn from_config(c: &Config) -> Result<Self> {
        let storage = Storage::open(&c.storage())?;
        let contracts = match &c.contracts_file {
            Some(p) => Contracts::from_file(p)?,
            None => Contracts::default(),
        };
        let signer = match &c.ticket_key_file {
            Some(p) => {
                let key = std::fs::read(p).map_err(|e| {
                    Error::Config(format!(
                        "failed to read ticket key file {}: {e}",
                        p.display()
                    ))
                })?;
                Some(TicketSigner::new(key.trim_ascii().to_vec())?)
            }
            None => None,
        };
        let placement = Placement::new(c.advertise_uri.clone(), c.peers_file.clone())?;
        let cache_limit =
            usize::try_from(c.cache_limit().map_err(Error::Config)?).unwrap_or(usize::MAX);
        let budgets = Budgets::new(
            usize::try_from(c.request_memory()).unwrap_or(usize::MAX),
            c.budget_wait,
            c.max_uploads,
            c.max_uploads_per_token,
        );
        Ok(Self::new(
            storage,
            cache_limit,
            contracts,
            signer,
            placement,
            Limits::from_config(c),
        )
        .with_budgets(budgets))
    }

    /// Replaces the default budgets (a quarter of the cache for request memory, 10 s wait,
    /// 32 uploads, 8 per token).
    pub fn with_budgets(mut self, budgets: Budgets) -> Self {
        self.budgets = Arc::new(budgets);
        self
    }

    /// Replaces the system clock (tests set the time instead of sleeping).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The current instant, from the node's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn budgets(&self) -> &Arc<Budgets> {
        &self.budgets
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn signer(&self) -> Option<&TicketSigner> {
        self.signer.as_ref()
    }

    pub fn contract(&self, name: &str) -> Result<Arc<Contract>> {
        self.contracts.get(name)
    }

    /// Keeps a manifest read from storage, with its record's ETag.
    fn remember(&self, key: CacheKey, manifest: Manifest, etag: Option<String>) -> Arc<Manifest> {
        let m = Arc::new(manifest);
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, (Arc::clone(&m), etag));
        m
    }

    /// The node's figures as `principal` may see them: the versions in memory of its
    /// namespaces only, and the node-wide counters (which sum over every namespace) only
    /// for a principal of every namespace.
    pub fn stats(&self, principal: &Principal) -> NodeStats {
        let everything = matches!(principal, Principal::Everything);
        // Parts grouped by version, most recently used version first.
        let mut tables: Vec<CachedTableInfo> = Vec::new();
        let mut index: HashMap<CacheKey, usize> = HashMap::new();
        for ((id, version, part), bytes) in self.cache.entries() {
            if !principal.allows(id.namespace()) {
                continue;
            }
            let i = *index.entry((id.clone(), version)).or_insert_with(|| {
                tables.push(CachedTableInfo {
                    namespace: id.namespace().to_string(),
                    name: id.name().to_string(),
                    version,
                    bytes: 0,
                    parts: Vec::new(),
                });
                tables.len() - 1
            });
            tables[i].bytes += bytes as u64;
            tables[i].parts.push(part);
        }
        for t in &mut tables {
            t.parts.sort_unstable();
        }
        NodeStats {
            node: self.placement.advertise_uri().map(str::to_string),
            storage_url: self.storage.url().to_string(),
            cache: everything.then(|| self.cache.stats()),
            budget: everything.then(|| self.budgets.stats()),
            peers: everything.then(|| {
                let mut nodes = self.placement.nodes();
                nodes.sort();
                nodes
            }),
            tables,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow_flight::FlightData;
    use object_store::memory::InMemory;
    use object_store::throttle::{ThrottleConfig, ThrottledStore};
    use object_store::{ObjectStore, ObjectStoreExt};

    /// A node whose storage answers every GET after `get_delay`, with parts of ~80 kB.
    pub(super) fn node(store: Arc<dyn ObjectStore>, get_delay: Duration) -> Arc<Node> {
        node_with_memory(store, get_delay, 1 << 30)
    }

    /// Like [`node`], with `memory` bytes of memory (the cache holds a share of it).
    pub(super) fn node_with_memory(
        store: Arc<dyn ObjectStore>,
        get_delay: Duration,
        memory: usize,
    ) -> Arc<Node> {
        let config = ThrottleConfig {
            wait_get_per_call: get_delay,
            ..ThrottleConfig::default()
        };
        let storage =
            Storage::from_store(Arc::new(ThrottledStore::new(store, config)), "memory://");
        let limits = Limits {
            part_size: 80_000,
            max_message_size: 64 << 20,
            max_upload_size: 1 << 30,
            max_upload_batches: 1000,
            default_ttl: None,
            orphan_grace: Duration::from_secs(3600),
            load_source_prefixes: Vec::new(),
            upload_idle_timeout: Duration::from_secs(60),
            stream_stall_timeout: Duration::from_secs(60),
            release_grace: Duration::from_secs(30),
        };
        let placement = Placement::new(None, None).unwrap();
        Arc::new(Node::new(
            storage,
            memory,
            Contracts::default(),
            None,
            placement,
            limits,
        ))
    }

    /// Uploads 4 parts of 10,000 rows and evicts them: the next read loads from storage.
    async fn upload(node: &Node) -> Manifest {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batches: Vec<Result<RecordBatch>> = (0..4)
            .map(|k| {
                let a = Int64Array::from_iter_values(k * 10_000..(k + 1) * 10_000);
                Ok(RecordBatch::try_new(schema.clone(), vec![Arc::new(a)]).unwrap())
            })
            .collect();
        let id = DatasetId::new("ns", "t").unwrap();
        let m = node
            .put(
                id.clone(),
                PutOptions::default(),
                schema,
                stream::iter(batches),
            )
            .await
            .unwrap();
        assert_eq!(m.parts.len(), 4);
        assert_eq!(node.evict(&id, None), 1);
        m
    }

    fn rows(messages: &[Message]) -> Vec<i64> {
        let data: Vec<FlightData> = messages.iter().map(|m| m.data.clone()).collect();
        arrow_flight::utils::flight_data_to_batches(&data)
            .unwrap()
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                a.values().to_vec()
            })
            .collect()
    }

    pub(super) fn metric(node: &Node, line: &str) -> u64 {
        let text = node
            .metrics()
            .render(&node.cache().stats(), &node.budgets().stats());
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {text}"))
    }

    /// A cold read streams the first part while later parts are still being read (a GET
    /// takes 400 ms, two at a time, four parts); each part is cached as it arrives.
    #[tokio::test]
    async fn a_cold_read_streams_parts_as_they_load() {
        let node = node(Arc::new(InMemory::new()), Duration::from_millis(400));
        let m = upload(&node).await;
        let part = |p: u32| (m.dataset().unwrap(), m.version, p);
        let mut s = node.stream(&m, None).await.unwrap();
        let mut got = vec![s.next().await.unwrap().unwrap()]; // the schema
        got.push(s.next().await.unwrap().unwrap()); // part 0
        assert!(node.cache().peek(&part(0)).is_some());
        assert!(
            node.cache().peek(&part(3)).is_none(),
            "the first part came only after the whole version was loaded"
        );
        while let Some(m) = s.next().await {
            got.push(m.unwrap());
        }
        assert_eq!(rows(&got), (0..40_000).collect::<Vec<_>>());
        assert!((0..4).all(|p| node.cache().peek(&part(p)).is_some()));
        assert_eq!(
            metric(&node, "flight_storage_loads_total{result=\"ok\"}"),
            4
        );
        assert_eq!(metric(&node, "flight_storage_load_seconds_count"), 4);
        // A single part of a version in memory.
        let one: Vec<Message> = node
            .stream(&m, Some(2))
            .await
            .unwrap()
            .map(|m| m.unwrap())
            .collect()
            .await;
        assert_eq!(rows(&one), (20_000..30_000).collect::<Vec<_>>());
        assert_eq!(
            metric(&node, "flight_storage_loads_total{result=\"ok\"}"),
            4
        );
    }

    /// Readers that arrive during a load of a part share it; a reader that goes away does
    /// not stop it.
    #[tokio::test]
    async fn readers_share_one_load_that_outlives_them() {
        let node = node(Arc::new(InMemory::new()), Duration::from_millis(200));
        let m = upload(&node).await;
        let key = (m.dataset().unwrap(), m.version, 3);
        let mut first = node.stream(&m, Some(3)).await.unwrap();
        first.next().await.unwrap().unwrap(); // the schema
        let reading = tokio::spawn(async move { first.next().await.map(|r| r.is_ok()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(node.loading.lock().unwrap().len(), 1);
        let second = node.stream(&m, Some(3)).await.unwrap();
        reading.abort();
        let part: Vec<Message> = second.map(|m| m.unwrap()).collect().await;
        assert_eq!(rows(&part), (30_000..40_000).collect::<Vec<_>>());
        assert!(node.cache().peek(&key).is_some());
        assert!(node.loading.lock().unwrap().is_empty());
        assert_eq!(
            metric(&node, "flight_storage_loads_total{result=\"ok\"}"),
            1
        );
    }

    /// A part missing from storage fails every waiting reader with the same error, and a
    /// later read tries again instead of waiting on the failed load.
    #[tokio::test]
    async fn a_failed_load_reaches_every_reader_and_is_not_kept() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let node = node(Arc::clone(&store), Duration::from_millis(50));
        let m = upload(&node).await;
        store
            .delete(&Path::from(m.parts[3].path.as_str()))
            .await
            .unwrap();
        let mut failed_loads = 0;
        for _ in 0..2 {
            let a = node.stream(&m, None).await.unwrap();
            let b = node.stream(&m, Some(3)).await.unwrap();
            let (a, b) = tokio::join!(a.collect::<Vec<_>>(), b.collect::<Vec<_>>());
            for got in [a, b] {
                let err = got.into_iter().find_map(|m| m.err()).expect("an error");
                assert_eq!(err.code(), tonic::Code::Internal);
                assert!(err.to_string().contains("missing from storage"), "{err}");
            }
            assert!(node.loading.lock().unwrap().is_empty());
            // Each round tries the part again.
            let now = metric(&node, "flight_storage_loads_total{result=\"error\"}");
            assert!(now > failed_loads, "{now}");
            failed_loads = now;
        }
        let id = m.dataset().unwrap();
        let err = node
            .preload(&id, Some(m.version), Some(&[3]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing from storage"), "{err}");
        // The other parts are in memory.
        let (_, done) = node
            .preload(&id, Some(m.version), Some(&[0, 1, 2]))
            .await
            .unwrap();
        assert_eq!((done.parts, done.cached), (3, 3));
    }

    /// A part whose footer is intact but whose first page is damaged fails while its
    /// batches are decoded (not when the file is opened): the reader gets the error, with
    /// the part named, and nothing half-read is cached.
    #[tokio::test]
    async fn a_damaged_part_fails_the_read_and_is_not_cached() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let node = node(Arc::clone(&store), Duration::ZERO);
        let m = upload(&node).await;
        let path = Path::from(m.parts[1].path.as_str());
        let mut bytes = store
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        // Past the magic number, the first page header.
        bytes[4..40].fill(0xff);
        store.put(&path, bytes.into()).await.unwrap();
        let got: Vec<_> = node.stream(&m, None).await.unwrap().collect().await;
        let err = got.into_iter().find_map(|m| m.err()).expect("an error");
        assert_eq!(err.code(), tonic::Code::Internal);
        let text = err.to_string();
        assert!(
            text.contains("decode Parquet part") && text.contains(path.as_ref()),
            "{text}"
        );
        let key = (m.dataset().unwrap(), m.version, 1);
        assert!(node.cache().peek(&key).is_none());
    }

    /// A map column whose entries are not a struct of key and value is refused up front,
    /// also nested, with a sentence naming the column; valid maps pass.
    #[test]
    fn schemas_with_types_no_array_can_have_are_refused() {
        use arrow::datatypes::Fields;
        let entries = |n: usize| {
            let fields: Vec<Field> = (0..n)
                .map(|i| Field::new(format!("f{i}"), DataType::Utf8, i > 0))
                .collect();
            Arc::new(Field::new(
                "entries",
                DataType::Struct(Fields::from(fields)),
                false,
            ))
        };
        let map = |n: usize| DataType::Map(entries(n), false);
        let ok = Schema::new(vec![Field::new("m", map(2), true)]);
        check_schema(&ok).unwrap();
        for bad in [
            Schema::new(vec![Field::new("m", map(1), true)]),
            Schema::new(vec![Field::new(
                "nested",
                DataType::List(Arc::new(Field::new("item", map(3), true))),
                true,
            )]),
        ] {
            let err = check_schema(&bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(
                err.to_string()
                    .contains("instead of a struct of key and value"),
                "{err}"
            );
        }
    }

    /// Batches whose columns take no space cannot claim rows for free: each row counts one
    /// byte against the upload size, and a batch is at most `MAX_BATCH_ROWS` long. Nothing
    /// of a refused upload is stored.
    #[tokio::test]
    async fn rows_without_bytes_count_against_the_upload_size() {
        use arrow::array::{NullArray, RecordBatchOptions};
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let node = node(Arc::clone(&store), Duration::ZERO);
        let nulls = Arc::new(Schema::new(vec![Field::new("n", DataType::Null, true)]));
        let none = Arc::new(Schema::empty());
        let no_columns = |rows: usize| {
            let options = RecordBatchOptions::new().with_row_count(Some(rows));
            RecordBatch::try_new_with_options(none.clone(), vec![], &options).unwrap()
        };
        let cases = [
            // 1.5e9 null rows in a few bytes: over the 1 GiB limit of this node.
            (
                nulls.clone(),
                RecordBatch::try_new(nulls.clone(), vec![Arc::new(NullArray::new(1_500_000_000))])
                    .unwrap(),
                "maximum upload size",
            ),
            (
                none.clone(),
                no_columns(6_600_000_000_000),
                "rows per batch",
            ),
        ];
        for (schema, batch, expect) in cases {
            let id = DatasetId::new("ns", "empty").unwrap();
            let err = node
                .put(id, PutOptions::default(), schema, stream::iter([Ok(batch)]))
                .await
                .unwrap_err();
            assert!(err.to_string().contains(expect), "{err}");
        }
        let stored = store.list(None).collect::<Vec<_>>().await;
        assert!(
            stored
                .iter()
                .all(|o| !o.as_ref().unwrap().location.as_ref().contains("/v")),
            "{stored:?}"
        );
        // Within the limits such a table is stored and read back cold with its rows.
        let id = DatasetId::new("ns", "nulls").unwrap();
        let batch =
            RecordBatch::try_new(nulls.clone(), vec![Arc::new(NullArray::new(3_000_000))]).unwrap();
        let m = node
            .put(
                id.clone(),
                PutOptions::default(),
                nulls,
                stream::iter([Ok(batch)]),
            )
            .await
            .unwrap();
        assert_eq!(m.rows, 3_000_000);
        node.evict(&id, None);
        let messages: Vec<Message> = node
            .stream(&m, None)
            .await
            .unwrap()
            .map(|m| m.unwrap())
            .collect()
            .await;
        let data: Vec<FlightData> = messages.iter().map(|m| m.data.clone()).collect();
        let back = arrow_flight::utils::flight_data_to_batches(&data).unwrap();
        assert_eq!(
            back.iter().map(RecordBatch::num_rows).sum::<usize>(),
            3_000_000
        );
    }

    /// Uploads hold request memory for their batches until stored; with a budget smaller
    /// than an upload, uploads store what they hold and go on (several at once, without
    /// waiting for each other for ever), and everything is given back at the end.
    #[tokio::test]
    async fn uploads_stay_within_request_memory_and_do_not_deadlock() {
        let storage = Storage::from_store(Arc::new(InMemory::new()), "memory://");
        let mut limits = Limits::from_config(&Config::for_tests("memory://"));
        limits.part_size = 16 << 20;
        let budgets = Budgets::new(3 << 20, Duration::from_secs(20), 8, 8);
        let node = Arc::new(
            Node::new(
                storage,
                64 << 20,
                Contracts::default(),
                None,
                Placement::new(None, None).unwrap(),
                limits,
            )
            .with_budgets(budgets),
        );
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let upload = |name: &'static str| {
            let node = Arc::clone(&node);
            let schema = schema.clone();
            async move {
                // 40 batches of 512 KiB: 20 MiB, seven times the budget.
                let batches: Vec<Result<RecordBatch>> = (0..40)
                    .map(|k| {
                        let a = Int64Array::from_iter_values(k * 65_536..(k + 1) * 65_536);
                        Ok(RecordBatch::try_new(schema.clone(), vec![Arc::new(a)]).unwrap())
                    })
                    .collect();
                let id = DatasetId::new("ns", name).unwrap();
                node.put(id, PutOptions::default(), schema, stream::iter(batches))
                    .await
            }
        };
        let (a, b, c) = tokio::join!(upload("a"), upload("b"), upload("c"));
        for m in [a, b, c] {
            let m = m.unwrap();
            assert_eq!(m.rows, 40 * 65_536);
            // The budget cut the upload into parts well below --part-size.
            assert!(m.parts.len() > 1, "{} parts", m.parts.len());
        }
        assert_eq!(node.budgets().stats().request_memory_used, 0);
    }
}
