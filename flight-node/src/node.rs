//! The node's domain logic, shared by the Flight service and the HTTP side port: ingest,
//! resolve, serve, list, delete, evict, load, renew and stats. Nothing here knows gRPC.

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

    // ----- ingest -------------------------------------------------------------------

    /// Stores a stream of batches as a new version: Parquet parts written as the batches
    /// arrive (memory bounded by the part size), then the manifest committed create-only,
    /// then the table cached. Returns only after the version is durable. On any error the
    /// parts already written are removed and nothing is visible.
    pub async fn put<S>(
        &self,
        id: DatasetId,
        opts: PutOptions,
        schema: SchemaRef,
        batches: S,
    ) -> Result<Manifest>
    where
        S: Stream<Item = Result<RecordBatch>> + Send,
    {
        let contract = opts
            .contract
            .as_deref()
            .map(|c| self.contracts.get(c))
            .transpose()?;
        if let Some(c) = &contract {
            c.check_schema(&schema)?;
        }
        let started = std::time::Instant::now();
        let upload = self.versions.begin(&id, self.limits.marker_refresh());
        let upload_id = upload.upload_id().to_string();
        let mut w = PartWriter::new(
            self,
            id.clone(),
            upload_id.clone(),
            schema.clone(),
            contract.clone(),
        );
        let written = async {
            futures::pin_mut!(batches);
            while let Some(batch) = batches.next().await {
                w.push(batch?).await?;
            }
            w.finish().await
        }
        .await;
        written?;

        let created_at = Utc::now();
        let ttl = opts.ttl.or(self.limits.default_ttl);
        let expires_at = match ttl {
            Some(ttl) => Some(crate::ttl::expires_at(created_at, ttl).ok_or_else(|| {
                Error::invalid("the TTL is too long to represent an expiry time")
            })?),
            None => None,
        };
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            namespace: id.namespace().into(),
            name: id.name().into(),
            version: 0,
            upload_id,
            schema: match opts
                .schema_message
                .as_deref()
                .and_then(manifest::encode_schema_message)
            {
                Some(sent) => sent,
                None => manifest::encode_schema(&schema)?,
            },
            columns: manifest::columns(&schema),
            rows: w.rows,
            bytes: w.parts.iter().map(|p| p.bytes).sum(),
            stored_bytes: w.parts.iter().map(|p| p.stored_bytes).sum(),
            parts: std::mem::take(&mut w.parts),
            part_format: w.format,
            contract: contract.map(|c| c.name.clone()),
            created_at,
            ttl_seconds: ttl.map(|t| t.as_secs()),
            expires_at,
            source: opts.source,
            consumers: opts.consumers.clone(),
        };
        // From here on the commit owns the parts: it runs to completion on its own task even
        // if this call goes away, and only it may remove them.
        w.committed = true;
        let manifest = self.versions.commit(upload, manifest).await?;
        let key = (id, manifest.version);
        self.remember(key.clone(), manifest.clone(), None);
        if let (Some(parts), Some(room)) = (w.encoded.take(), w.cache_room.take()) {
            // The parts this node owns stay in memory; their owners load the others on
            // first read (or preload).
            let owned: Vec<(PartKey, Arc<EncodedPart>)> = (0u32..)
                .zip(parts)
                .filter(|(p, _)| self.placement.owns(&key.0, key.1, *p))
                .map(|(p, part)| ((key.0.clone(), key.1, p), Arc::new(part)))
                .collect();
            self.cache.insert_reserved(owned, room);
        }
        drop(w);
        crate::memory::release_after(manifest.bytes);
        self.metrics.record_upload(
            manifest.rows,
            manifest.bytes,
            started.elapsed().as_secs_f64(),
        );
        tracing::info!(
            dataset = %manifest.dataset()?, version = manifest.version, rows = manifest.rows,
            bytes = manifest.bytes, parts = manifest.parts.len(), "committed upload"
        );
        Ok(manifest)
    }

    /// Ingests CSV bytes (header row first) as a new version. Parsing runs on a blocking
    /// thread fed by the stream, so the body is never held whole in memory. With a
    /// contract, its schema is used to parse; otherwise the schema is inferred from the
    /// first megabyte.
    pub async fn put_csv<S, E>(
        &self,
        id: DatasetId,
        opts: PutOptions,
        delimiter: u8,
        body: S,
    ) -> Result<Manifest>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let contract_schema = match &opts.contract {
            Some(c) => Some(Arc::new(self.contracts.get(c)?.schema())),
            None => None,
        };
        let (schema_tx, schema_rx) = tokio::sync::oneshot::channel();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
        let reader =
            tokio_util::io::StreamReader::new(Box::pin(body.map_err(std::io::Error::other)));
        let parser = tokio::task::spawn_blocking(move || {
            crate::csv::parse(reader, contract_schema, delimiter, schema_tx, tx)
        });
        let schema = match schema_rx.await {
            Ok(schema) => schema?,
            Err(_) => {
                return Err(match parser.await {
                    Ok(Err(e)) => e,
                    _ => Error::Internal("the CSV parser stopped without a schema".into()),
                })
            }
        };
        // The batches end when the parser's sender is dropped, which a panic also does: the
        // stream ends with the parser's outcome, so a parser that died never commits a
        // truncated table.
        let outcome = stream::once(async move {
            match parser.await {
                Err(e) => Some(Err(Error::Internal(format!("the CSV parser failed: {e}")))),
                Ok(_) => None,
            }
        })
        .filter_map(|failed| async move { failed });
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx).chain(outcome);
        self.put(id, opts, schema, batches).await
    }

    /// The `load` action: ingests a CSV or Parquet object from the node's storage.
    pub async fn load(&self, req: LoadRequest) -> Result<Manifest> {
        let id = DatasetId::new(req.namespace.as_str(), req.name.as_str())?;
        let path = self.source_path(id.namespace(), &req.source)?;
        let format = match req.format.as_deref() {
            Some(f) => f.to_ascii_lowercase(),
            None if path.as_ref().ends_with(".parquet") => "parquet".into(),
            None if path.as_ref().ends_with(".csv") => "csv".into(),
            None => {
                return Err(Error::invalid(format!(
                    "cannot tell the format of {path}; set format to csv or parquet"
                )))
            }
        };
        let size = self.storage.object_size(&path).await?;
        if size > self.limits.max_upload_size {
            return Err(Error::ResourceExhausted(format!(
                "source {path} is {size} bytes, above the upload limit of {} bytes",
                self.limits.max_upload_size
            )));
        }
        let opts = PutOptions {
            ttl: req.ttl.as_deref().map(crate::ttl::parse_ttl).transpose()?,
            contract: req.contract.clone(),
            source: req.source.clone(),
            schema_message: None,
            consumers: req
                .consumers
                .as_ref()
                .map(crate::consumers::ConsumersSpec::to_consumers)
                .transpose()?,
        };
        match format.as_str() {
            "csv" => {
                let delimiter = req.delimiter.unwrap_or(',');
                if !delimiter.is_ascii() {
                    return Err(Error::invalid(
                        "the CSV delimiter must be one ASCII character",
                    ));
                }
                let body = self
                    .storage
                    .object_store()
                    .get_opts(&path, Default::default())
                    .await
                    .map_err(|e| Error::storage(format!("read {path}"), e))?
                    .into_stream();
                self.put_csv(id, opts, delimiter as u8, body).await
            }
            "parquet" => {
                let bytes = self.storage.get_object(&path).await?;
                let builder =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                        .map_err(|e| {
                        Error::invalid(format!("source {path} is not a readable Parquet file: {e}"))
                    })?;
                let schema = builder.schema().clone();
                let reader = builder
                    .with_batch_size(READ_BATCH_ROWS)
                    .build()
                    .map_err(|e| {
                        Error::invalid(format!("failed to read Parquet source {path}: {e}"))
                    })?;
                let batches = stream::iter(reader.map(|r| {
                    r.map_err(|e| Error::invalid(format!("failed to decode Parquet source: {e}")))
                }));
                self.put(id, opts, schema, batches).await
            }
            other => Err(Error::invalid(format!(
                "unknown source format {other:?}; use csv or parquet"
            ))),
        }
    }

    /// The object a `load` reads: relative to the storage root, inside the destination's
    /// own namespace prefix (`<namespace>/...`) or one of the shared prefixes the node was
    /// given (`--load-source-prefix`). Anything else is refused, so a token for one
    /// namespace cannot read another's objects through a load.
    fn source_path(&self, namespace: &str, source: &str) -> Result<Path> {
        let path = self.source_object(source)?;
        let mut parts = path.parts();
        let first = parts.next();
        if first.as_ref().map(|p| p.as_ref()) == Some(namespace) && parts.next().is_some() {
            return Ok(path);
        }
        let allowed = self.limits.load_source_prefixes.iter().any(|prefix| {
            let prefix = Path::from(prefix.as_str());
            path.prefix_matches(&prefix) && path != prefix
        });
        if allowed {
            return Ok(path);
        }
        let shared = if self.limits.load_source_prefixes.is_empty() {
            String::new()
        } else {
            format!(
                " or one of the shared prefixes {:?}",
                self.limits.load_source_prefixes
            )
        };
        Err(Error::PermissionDenied(format!(
            "source {source:?} is outside namespace {namespace:?}: a load reads objects under \"{namespace}/\" in the storage{shared}"
        )))
    }

    fn source_object(&self, source: &str) -> Result<Path> {
        let base = self.storage.url().trim_end_matches('/');
        let rel = if let Some(rest) = source.strip_prefix(base) {
            rest.trim_start_matches('/')
        } else if source.contains("://") {
            return Err(Error::invalid(format!(
                "source {source:?} is outside this node's storage {base:?}; give a path relative to it"
            )));
        } else {
            source.trim_start_matches('/')
        };
        Path::parse(rel).map_err(|e| Error::invalid(format!("invalid source path {source:?}: {e}")))
    }

    // ----- read ---------------------------------------------------------------------

    fn remember(&self, key: CacheKey, manifest: Manifest, etag: Option<String>) -> Arc<Manifest> {
        let m = Arc::new(manifest);
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, (Arc::clone(&m), etag));
        m
    }

    /// The manifest a ticket pins; `NotFound` when it does not exist, was deleted or has
    /// expired. A manifest held in memory is checked against its record in storage first
    /// (one HEAD), so a version deleted or renewed through another node is seen at once;
    /// when storage cannot be reached, the copy in memory is used.
    pub async fn resolve(&self, ticket: &Ticket) -> Result<Arc<Manifest>> {
        let key = (ticket.dataset.clone(), ticket.version);
        let known = self
            .manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let manifest = match known {
            Some((m, etag)) => match self.versions.current(&key.0, key.1, etag.as_deref()).await {
                Ok(Current::Unchanged) => m,
                Ok(Current::Changed(m, etag)) => self.remember(key.clone(), *m, etag),
                Ok(Current::Gone(why)) => {
                    self.evict(&key.0, Some(key.1));
                    return Err(Error::NotFound(why));
                }
                Err(e) => {
                    tracing::debug!(dataset = %key.0, version = key.1, error = %e, "storage unreachable; serving the version from memory");
                    m
                }
            },
            None => {
                let (m, etag) = self.versions.read(&key.0, key.1).await?;
                self.remember(key.clone(), m, etag)
            }
        };
        if manifest.is_expired(Utc::now()) {
            return Err(Error::not_found(format!(
                "version {} of dataset {} expired at {}",
                key.1,
                key.0,
                manifest
                    .expires_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            )));
        }
        if let Some(part) = ticket.part {
            if part as usize >= manifest.parts.len() {
                return Err(Error::not_found(format!(
                    "version {} of dataset {} has no part {part}",
                    key.1, key.0
                )));
            }
        }
        Ok(manifest)
    }

    /// The newest unexpired version of a dataset.
    pub async fn latest(&self, id: &DatasetId) -> Result<Arc<Manifest>> {
        let (m, etag) = self.versions.latest(id, Utc::now()).await?;
        Ok(self.remember((id.clone(), m.version), m, etag))
    }

    /// The Flight messages of a version (or one part), schema first. Each part is served
    /// from memory; on a miss it is loaded from storage once (concurrent readers wait for
    /// that one load, which outlives them) and cached, the next parts loading while the
    /// first is sent. A whole version too large for the cache (or a part too large) streams
    /// from storage one part at a time, under the request-memory budget, and is not cached.
    pub async fn stream(
        self: &Arc<Self>,
        manifest: &Manifest,
        part: Option<u32>,
    ) -> Result<BoxStream<'static, Result<Message>>> {
        // Counted as a read in flight until the stream is dropped.
        let guard = self.read_guard((manifest.dataset()?, manifest.version));
        let messages = self.stream_messages(manifest, part)?;
        Ok(holding(messages, guard).boxed())
    }

    fn stream_messages(
        self: &Arc<Self>,
        manifest: &Manifest,
        part: Option<u32>,
    ) -> Result<BoxStream<'static, Result<Message>>> {
        let head = Message::from(manifest.schema_flight_data()?);
        let range = match part {
            Some(p) => p..p + 1,
            None => 0..u32::try_from(manifest.parts.len()).unwrap_or(u32::MAX),
        };
        // A whole version larger than the cache would only push out everything else.
        let cold = part.is_none()
            && !self
                .cache
                .fits(usize::try_from(manifest.bytes).unwrap_or(usize::MAX));
        let node = Arc::clone(self);
        let manifest = Arc::new(manifest.clone());
        let body = stream::iter(range)
            .map(move |p| {
                let node = Arc::clone(&node);
                let manifest = Arc::clone(&manifest);
                async move { node.part_messages(&manifest, p, cold).await }
            })
            .buffered(if cold { 1 } else { LOAD_PARALLELISM })
            .try_flatten();
        Ok(stream::once(async { Ok(head) }).chain(body).boxed())
    }

    /// The messages of one part: from memory, or loaded into it, or (`cold`, or a part
    /// larger than the cache) read from storage for this stream alone.
    async fn part_messages(
        self: &Arc<Self>,
        manifest: &Arc<Manifest>,
        part: u32,
        cold: bool,
    ) -> Result<BoxStream<'static, Result<Message>>> {
        let info = manifest
            .parts
            .get(part as usize)
            .ok_or_else(|| Error::Internal(format!("the manifest has no part {part}")))?;
        let bytes = usize::try_from(info.bytes).unwrap_or(usize::MAX);
        if !cold && self.cache.fits(bytes) {
            let cached = self.cached_part(manifest, part, true).await?;
            return Ok(stream::iter(EncodedPart::messages(cached).map(Ok)).boxed());
        }
        // Reading takes about twice the part (its file and its messages); the messages are
        // held until sent.
        let mut permit = self
            .budgets
            .reserve(
                bytes.saturating_mul(2),
                "a cold read of a version larger than the cache",
            )
            .await?;
        let schema = manifest.arrow_schema()?;
        let target = self.limits.message_target();
        let loaded =
            crate::parts::load_part(&self.storage, info, READ_BATCH_ROWS, schema, target).await;
        let mut encoded = match loaded {
            Ok(e) => e,
            Err(e) => return Err(deleted_or(&self.versions, manifest, e).await),
        };
        permit.shrink_to(encoded.bytes);
        let messages = std::mem::take(&mut encoded.messages);
        // The reservation lives as long as the part's messages are unsent.
        Ok(holding(stream::iter(messages.into_iter().map(Ok)), permit).boxed())
    }

    /// One part of a version in memory, loading it from storage once if it is missing
    /// (other readers of the part share that load, which runs on its own task: a reader
    /// that goes away does not stop it). `count` says whether the look-up counts as a cache
    /// hit or miss (reads do, preloads do not).
    async fn cached_part(
        self: &Arc<Self>,
        manifest: &Arc<Manifest>,
        part: u32,
        count: bool,
    ) -> Result<Arc<EncodedPart>> {
        let key = (manifest.dataset()?, manifest.version, part);
        let found = if count {
            self.cache.get(&key)
        } else {
            self.cache.peek(&key)
        };
        if let Some(p) = found {
            return Ok(p);
        }
        let mut progress = self.start_load(manifest, key)?;
        let outcome = progress
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Internal("loading the part stopped".into()))?
            .clone();
        match outcome {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => Err(Error::Shared(e)),
            None => Err(Error::Internal("loading the part stopped".into())),
        }
    }

    /// Starts loading a part into memory, or joins the load in progress.
    fn start_load(self: &Arc<Self>, manifest: &Arc<Manifest>, key: PartKey) -> Result<LoadWatch> {
        let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock the finished load takes to leave the map.
        if let Some(p) = self.cache.peek(&key) {
            return Ok(watch::channel(Some(Ok(p))).1);
        }
        if let Some(progress) = loading.get(&key) {
            return Ok(progress.clone());
        }
        let info = manifest
            .parts
            .get(key.2 as usize)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("the manifest has no part {}", key.2)))?;
        let (tx, rx) = watch::channel(None);
        loading.insert(key.clone(), rx.clone());
        drop(loading);
        let node = Arc::clone(self);
        let manifest = Arc::clone(manifest);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            // What a load holds until its part is in the cache.
            let bytes = usize::try_from(info.bytes).unwrap_or(usize::MAX);
            let result = match node
                .budgets
                .reserve(bytes, "loading a version from storage")
                .await
            {
                Ok(permit) => {
                    let r = node.load_part(&manifest, &info).await;
                    drop(permit);
                    r
                }
                Err(e) => Err(e),
            };
            let outcome = {
                let mut loading = node.loading.lock().unwrap_or_else(|p| p.into_inner());
                let secs = started.elapsed().as_secs_f64();
                node.metrics
                    .record_load(secs, result.as_ref().ok().map(|p| p.bytes as u64));
                let outcome = match result {
                    Ok(part) => {
                        tracing::debug!(
                            dataset = %key.0, version = key.1, part = key.2, bytes = part.bytes,
                            seconds = secs, "loaded a part from storage into memory"
                        );
                        let part = Arc::new(part);
                        node.cache.insert(key.clone(), Arc::clone(&part));
                        Ok(part)
                    }
                    Err(e) => {
                        tracing::warn!(dataset = %key.0, version = key.1, part = key.2, error = %e, "failed to load a part from storage");
                        Err(Arc::new(e))
                    }
                };
                loading.remove(&key);
                outcome
            };
            crate::memory::release_after(info.bytes);
            tx.send_replace(Some(outcome));
        });
        Ok(rx)
    }

    async fn load_part(&self, manifest: &Manifest, info: &PartInfo) -> Result<EncodedPart> {
        let schema = manifest.arrow_schema()?;
        let target = self.limits.message_target();
        match crate::parts::load_part(&self.storage, info, READ_BATCH_ROWS, schema, target).await {
            Ok(part) => Ok(part),
            Err(e) => Err(deleted_or(&self.versions, manifest, e).await),
        }
    }

    /// One version of a dataset, or its newest unexpired one.
    pub async fn version(&self, id: &DatasetId, version: Option<u64>) -> Result<Arc<Manifest>> {
        match version {
            Some(v) => self.resolve(&Ticket::new(id.clone(), v)).await,
            None => self.latest(id).await,
        }
    }

    /// The `preload` action: brings a version (the newest by default) into memory ahead of
    /// its first read: the given parts, or every part this node owns (all of them on a
    /// standalone node). Returns the manifest and how many of those parts are now cached
    /// (parts larger than the cache are not).
    pub async fn preload(
        self: &Arc<Self>,
        id: &DatasetId,
        version: Option<u64>,
        parts: Option<&[u32]>,
    ) -> Result<(Arc<Manifest>, Preloaded)> {
        let manifest = self.version(id, version).await?;
        let count = u32::try_from(manifest.parts.len()).unwrap_or(u32::MAX);
        let wanted: Vec<u32> = match parts {
            Some(list) => {
                if let Some(p) = list.iter().find(|p| **p >= count) {
                    return Err(Error::not_found(format!(
                        "version {} of dataset {id} has no part {p}",
                        manifest.version
                    )));
                }
                list.to_vec()
            }
            None => (0..count)
                .filter(|p| self.placement.owns(id, manifest.version, *p))
                .collect(),
        };
        let node = Arc::clone(self);
        let m = Arc::clone(&manifest);
        let cached = stream::iter(wanted.clone())
            .map(move |p| {
                let node = Arc::clone(&node);
                let m = Arc::clone(&m);
                async move {
                    let bytes = usize::try_from(m.parts[p as usize].bytes).unwrap_or(usize::MAX);
                    if !node.cache.fits(bytes) {
                        return Ok(false);
                    }
                    node.cached_part(&m, p, false).await?;
                    Ok::<_, Error>(node.cache.contains(&(m.dataset()?, m.version, p)))
                }
            })
            .buffered(LOAD_PARALLELISM)
            .try_fold(0u32, |n, ok| async move { Ok(n + u32::from(ok)) })
            .await?;
        Ok((
            manifest,
            Preloaded {
                parts: u32::try_from(wanted.len()).unwrap_or(u32::MAX),
                cached,
            },
        ))
    }

    /// Record batches of a version (for the HTTP export), part by part.
    pub fn batches(&self, manifest: &Manifest) -> BoxStream<'static, Result<RecordBatch>> {
        let guard = manifest
            .dataset()
            .ok()
            .map(|id| self.read_guard((id, manifest.version)));
        holding(self.batches_of(manifest), guard).boxed()
    }

    fn batches_of(&self, manifest: &Manifest) -> BoxStream<'static, Result<RecordBatch>> {
        let storage = self.storage.clone();
        let budgets = Arc::clone(&self.budgets);
        let head = manifest.schema_flight_data().map_err(Arc::new);
        // The parts held in memory now; the others are read from storage as they come.
        let id = manifest.dataset().ok();
        let parts: Vec<(PartInfo, Option<Arc<EncodedPart>>)> = manifest
            .parts
            .iter()
            .enumerate()
            .map(|(i, info)| {
                let cached = id.as_ref().and_then(|id| {
                    let p = u32::try_from(i).ok()?;
                    self.cache.get(&(id.clone(), manifest.version, p))
                });
                (info.clone(), cached)
            })
            .collect();
        stream::iter(parts)
            .then(move |(info, cached)| {
                let storage = storage.clone();
                let budgets = Arc::clone(&budgets);
                let head = head.clone();
                async move {
                    if let Some(part) = cached {
                        // Decoded one message at a time as the consumer asks: the batches
                        // are views of the cached buffers, not copies.
                        let head = head.map_err(Error::Shared)?;
                        let messages = stream::iter(
                            std::iter::once(head)
                                .chain(EncodedPart::messages(part).map(|m| m.data)),
                        )
                        .map(Ok);
                        return Ok::<_, Error>(
                            FlightDataDecoder::new(messages)
                                .filter_map(|d| {
                                    futures::future::ready(match d {
                                        Ok(d) => match d.payload {
                                            DecodedPayload::RecordBatch(b) => Some(Ok(b)),
                                            _ => None,
                                        },
                                        Err(e) => Some(Err(Error::from(e))),
                                    })
                                })
                                .boxed(),
                        );
                    }
                    // Reading holds the file and its decoded batches; the batches stay until
                    // written out.
                    let bytes = usize::try_from(info.bytes).unwrap_or(usize::MAX);
                    let mut permit = budgets
                        .reserve(
                            bytes.saturating_mul(2),
                            "an export of a version not in memory",
                        )
                        .await?;
                    let batches = crate::parts::read_part(&storage, &info, READ_BATCH_ROWS).await?;
                    permit.shrink_to(batches.iter().map(batch_size).sum());
                    // Held until the part's batches are written out.
                    Ok(holding(stream::iter(batches.into_iter().map(Ok)), permit).boxed())
                }
            })
            .try_flatten()
            .boxed()
    }

    /// Newest unexpired version of every dataset, of the given namespaces or of all. A
    /// dataset whose records cannot be read is left out (and logged), so one damaged
    /// dataset does not hide the others.
    pub async fn list(&self, namespaces: Option<&[String]>) -> Result<Vec<Arc<Manifest>>> {
        let ids = match namespaces {
            None => self.versions.datasets(None).await?,
            Some(list) => {
                let mut ids = Vec::new();
                for ns in list {
                    ids.extend(self.versions.datasets(Some(ns)).await?);
                }
                ids
            }
        };
        let mut out = Vec::new();
        for id in ids {
            match self.latest(&id).await {
                Ok(m) => out.push(m),
                Err(Error::NotFound(_)) => {}
                Err(e @ (Error::Storage { .. } | Error::Shared(_))) => return Err(e),
                Err(e) => {
                    tracing::warn!(dataset = %id, error = %e, "left out of the listing: its records cannot be read")
                }
            }
        }
        Ok(out)
    }

    // ----- lifecycle ----------------------------------------------------------------

    /// Deletes one version or the whole dataset from storage and memory.
    pub async fn delete(&self, id: &DatasetId, version: Option<u64>) -> Result<Vec<u64>> {
        let deleted = match version {
            Some(v) => {
                if !self.versions.delete_version(id, v).await? {
                    self.evict(id, version);
                    return Err(Error::not_found(format!(
                        "version {v} of dataset {id} was already deleted"
                    )));
                }
                vec![v]
            }
            None => self.versions.delete_dataset(id).await?,
        };
        self.evict(id, version);
        tracing::info!(dataset = %id, versions = ?deleted, "deleted");
        Ok(deleted)
    }

    /// Drops a dataset (or one version) from memory only.
    pub fn evict(&self, id: &DatasetId, version: Option<u64>) -> usize {
        let mut manifests = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<CacheKey> = manifests
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|(d, v)| d == id && version.is_none_or(|want| *v == want))
            .collect();
        for k in keys {
            manifests.pop(&k);
        }
        drop(manifests);
        self.cache.evict(id, version)
    }

    /// Extends the lease of a version to `expires_at`; refused once it has expired.
    pub async fn renew(&self, ticket: &Ticket, expires_at: DateTime<Utc>) -> Result<Arc<Manifest>> {
        let current = self.resolve(ticket).await?;
        if expires_at <= Utc::now() {
            return Err(Error::invalid(
                "the new expiration time must be in the future",
            ));
        }
        let (m, etag) = self
            .versions
            .renew(&ticket.dataset, current.version, expires_at, Utc::now())
            .await?;
        tracing::info!(dataset = %ticket.dataset, version = ticket.version, %expires_at, "renewed lease");
        Ok(self.remember((ticket.dataset.clone(), ticket.version), m, etag))
    }

    /// The `release` action: a consumer is done with a version. The release that
    /// completes its consumers schedules its deletion after `--release-grace`.
    pub async fn release(
        self: &Arc<Self>,
        ticket: &Ticket,
        consumer: Option<&str>,
    ) -> Result<Arc<Manifest>> {
        let current = self.resolve(ticket).await?;
        let grace = self.limits.release_grace;
        let (m, completed) = self
            .versions
            .release(
                &ticket.dataset,
                current.version,
                consumer,
                grace,
                Utc::now(),
            )
            .await?;
        let key = (ticket.dataset.clone(), current.version);
        let m = self.remember(key.clone(), m, None);
        self.metrics.record_release(completed);
        if completed {
            tracing::info!(dataset = %key.0, version = key.1, grace_seconds = grace.as_secs_f64(), "released by every consumer; deleting after the grace period");
            let node = Arc::clone(self);
            tokio::spawn(async move { node.delete_released(key, grace).await });
        }
        Ok(m)
    }

    /// Deletes a version released by all its consumers once `grace` has passed and no read
    /// of it is in flight on this node. (Its record already expires then, so other nodes
    /// refuse new reads of it, and a node that stops before this runs leaves it to the TTL
    /// clean-up.)
    async fn delete_released(&self, key: CacheKey, grace: Duration) {
        tokio::time::sleep(grace).await;
        let started = std::time::Instant::now();
        let mut logged = false;
        while self.reading(&key) {
            if !logged && started.elapsed() > Duration::from_secs(5) {
                tracing::info!(dataset = %key.0, version = key.1, "waiting for reads in flight before deleting a released version");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match self.versions.delete_version(&key.0, key.1).await {
            Ok(deleted) => {
                if deleted {
                    self.metrics.record_release_delete();
                }
                tracing::info!(dataset = %key.0, version = key.1, "deleted a version released by every consumer");
            }
            Err(e) => {
                tracing::warn!(dataset = %key.0, version = key.1, error = %e, "failed to delete a released version; its expiry leaves it to the TTL clean-up")
            }
        }
        self.cache.evict(&key.0, Some(key.1));
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop(&key);
    }

    /// Whether a read of this version is in flight on this node.
    pub fn reading(&self, key: &CacheKey) -> bool {
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Counts a read of `key` until the guard is dropped.
    fn read_guard(&self, key: CacheKey) -> ReadGuard {
        *self
            .reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_insert(0) += 1;
        ReadGuard {
            reads: Arc::clone(&self.reads),
            key,
        }
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

/// Refuses an upload's schema unless every column has a type Arrow can hold arrays of. The
/// IPC decoder accepts some types no array can have (a map whose entries are not a struct
/// of key and value, for one); a batch of such a column would fail validation, but an
/// upload of no batches would be stored and then break every read of it.
pub fn check_schema(schema: &arrow::datatypes::Schema) -> Result<()> {
    for field in schema.fields() {
        check_type(field.name(), field.data_type())?;
        // What a read of an empty version makes of the column; anything else arrow's
        // array constructors refuse (by panicking) is caught here rather than later.
        let data_type = field.data_type().clone();
        let made = std::panic::catch_unwind(move || {
            arrow::array::new_empty_array(&data_type)
                .to_data()
                .validate_full()
        });
        let problem = match made {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => crate::error::panic_message(&panic),
        };
        return Err(Error::invalid(format!(
            "column {:?} has a type no Arrow array can have ({}): {problem}",
            field.name(),
            field.data_type()
        )));
    }
    Ok(())
}

fn check_type(name: &str, data_type: &arrow::datatypes::DataType) -> Result<()> {
    use arrow::datatypes::DataType;
    if let DataType::Map(entries, _) = data_type {
        let two = matches!(entries.data_type(), DataType::Struct(f) if f.len() == 2);
        if !two {
            return Err(Error::invalid(format!(
                "column {name:?} is a map whose entries are {} instead of a struct of key and value",
                entries.data_type()
            )));
        }
    }
    let children: Vec<&arrow::datatypes::Field> = match data_type {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => vec![f.as_ref()],
        DataType::Struct(fields) => fields.iter().map(|f| f.as_ref()).collect(),
        DataType::Union(fields, _) => fields.iter().map(|(_, f)| f.as_ref()).collect(),
        DataType::RunEndEncoded(ends, values) => vec![ends.as_ref(), values.as_ref()],
        DataType::Dictionary(_, values) => return check_type(name, values),
        _ => Vec::new(),
    };
    for child in children {
        check_type(name, child.data_type())?;
    }
    Ok(())
}

/// The most rows one record batch of an upload may hold: Arrow's Java and C# readers index
/// rows with 32-bit integers, so a longer batch is unreadable to them.
pub const MAX_BATCH_ROWS: usize = i32::MAX as usize;

/// What a batch counts against `--max-upload-size`: its bytes, and at least one byte per
/// row. Columns that take no space (no columns at all, the null type, zero-width
/// fixed-size types) would otherwise let a few bytes claim any number of rows, and storing
/// and reading rows costs time and memory in proportion to their number.
pub fn upload_size(batch: &RecordBatch) -> usize {
    batch_size(batch).max(batch.num_rows())
}

/// Refuses a record batch longer than [`MAX_BATCH_ROWS`].
pub fn check_batch_rows(batch: &RecordBatch) -> Result<()> {
    if batch.num_rows() > MAX_BATCH_ROWS {
        return Err(Error::invalid(format!(
            "a record batch of {} rows; at most {MAX_BATCH_ROWS} rows per batch (send more, smaller batches)",
            batch.num_rows()
        )));
    }
    Ok(())
}

/// `items`, keeping `held` (a budget reservation, a read guard) until the stream is done or
/// dropped.
fn holding<S, H>(items: S, held: H) -> impl Stream<Item = S::Item> + Send + 'static
where
    S: Stream + Send + 'static,
    H: Send + 'static,
{
    items.map(move |item| {
        let _held = &held;
        item
    })
}

/// A part found missing while reading a version: `NotFound` when the version was deleted
/// meanwhile (a read racing a delete), otherwise the error as it is (the part is damaged).
async fn deleted_or(versions: &Versions, manifest: &Manifest, e: Error) -> Error {
    if !matches!(e, Error::MissingPart(_)) {
        return e;
    }
    let Ok(id) = manifest.dataset() else {
        return e;
    };
    match versions.current(&id, manifest.version, None).await {
        Ok(Current::Gone(why)) => Error::NotFound(why),
        _ => e,
    }
}

/// A part being encoded and stored: its description and, if cacheable, its messages.
type PartTask = tokio::task::JoinHandle<Result<(PartInfo, Option<EncodedPart>)>>;

/// Rows (or bytes) of an upload handed to the part's encoder at a time: one row group.
const STREAM_GROUP_ROWS: usize = 128 * 1024;
const STREAM_GROUP_BYTES: usize = 16 << 20;

/// The encoder of the part being received, on a blocking thread. Each message is a row
/// group; `true` marks the part's last batches, cut into one row group per core.
struct EncoderTask {
    tx: tokio::sync::mpsc::Sender<(Vec<RecordBatch>, bool)>,
    handle: tokio::task::JoinHandle<Result<EncodedForStorage>>,
}

/// Accumulates an upload into Parquet parts.
struct PartWriter<'a> {
    node: &'a Node,
    id: DatasetId,
    upload_id: String,
    schema: SchemaRef,
    /// How the parts are stored, chosen from the schema.
    format: PartFormat,
    contract: Option<Arc<Contract>>,
    /// Batches not yet handed to the encoder.
    pending: Vec<RecordBatch>,
    pending_bytes: usize,
    pending_rows: usize,
    /// Arrow bytes of the part being received.
    part_bytes: usize,
    encoder: Option<EncoderTask>,
    batches: u64,
    rows: u64,
    arrow_bytes: u64,
    parts: Vec<PartInfo>,
    written: Vec<Path>,
    /// Encoded parts for the cache while the upload still fits it.
    encoded: Option<Vec<EncodedPart>>,
    /// Cache room held for the encoded parts (they count against `--memory-limit`).
    cache_room: Option<Reservation<'a>>,
    /// Request memory held for the part being received, and for the part being stored.
    receiving: Option<MemoryPermit>,
    storing: Option<MemoryPermit>,
    /// Set once the manifest references the parts; until then dropping the writer (an
    /// error, or the client cancelling the call) removes them.
    committed: bool,
    /// The part being encoded and stored in the background.
    in_flight: Option<PartTask>,
}

impl Drop for PartWriter<'_> {
    fn drop(&mut self) {
        let in_flight = self.in_flight.take();
        if self.committed || (self.written.is_empty() && in_flight.is_none()) {
            return;
        }
        let storage = self.node.storage.clone();
        let mut paths = std::mem::take(&mut self.written);
        paths.push(Storage::upload_marker_path(&self.id, &self.upload_id));
        tracing::info!(dataset = %self.id, parts = paths.len(), "upload not committed; removing its parts");
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    // Let a part still being written land first, or it would outlive the
                    // clean-up as an orphan.
                    if let Some(task) = in_flight {
                        let _ = task.await;
                    }
                    storage.delete_quietly(&paths).await
                });
            }
            Err(_) => tracing::warn!("no runtime to remove parts; the orphan sweep will"),
        }
    }
}

impl<'a> PartWriter<'a> {
    fn new(
        node: &'a Node,
        id: DatasetId,
        upload_id: String,
        schema: SchemaRef,
        contract: Option<Arc<Contract>>,
    ) -> Self {
        Self {
            node,
            id,
            upload_id,
            format: crate::encode::format_for(&schema),
            schema,
            contract,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_rows: 0,
            part_bytes: 0,
            encoder: None,
            batches: 0,
            rows: 0,
            arrow_bytes: 0,
            parts: Vec::new(),
            written: Vec::new(),
            encoded: Some(Vec::new()),
            cache_room: Some(node.cache.reserve()),
            receiving: None,
            storing: None,
            committed: false,
            in_flight: None,
        }
    }

    /// Accepts one batch; a batch larger than a part is cut (without copying) so that
    /// parts, and the endpoints clients fetch in parallel, stay near the part size.
    async fn push(&mut self, batch: RecordBatch) -> Result<()> {
        check_batch_rows(&batch)?;
        let size = upload_size(&batch);
        self.check_upload_size(size)?;
        let part_size = self.node.limits.part_size;
        if size > part_size && batch.num_rows() > 1 {
            let pieces = size.div_ceil(part_size);
            let rows = batch.num_rows().div_ceil(pieces).max(1);
            let mut offset = 0;
            while offset < batch.num_rows() {
                let len = rows.min(batch.num_rows() - offset);
                self.push_one(batch.slice(offset, len)).await?;
                offset += len;
            }
            return Ok(());
        }
        self.push_one(batch).await
    }

    /// Refuses the upload if `more` bytes would take it past `--max-upload-size`.
    fn check_upload_size(&self, more: usize) -> Result<()> {
        let max = self.node.limits.max_upload_size;
        if self.arrow_bytes.saturating_add(more as u64) > max {
            return Err(Error::ResourceExhausted(format!(
                "upload exceeds the maximum upload size of {max} bytes (--max-upload-size; \
                 every row counts at least one byte)"
            )));
        }
        Ok(())
    }

    async fn push_one(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(Error::invalid(
                "a record batch's schema differs from the upload's schema; one upload has one schema",
            ));
        }
        if let Some(c) = &self.contract {
            c.check_batch(&batch)?;
        }
        self.batches += 1;
        let limits = &self.node.limits;
        if self.batches > limits.max_upload_batches {
            return Err(Error::ResourceExhausted(format!(
                "upload has more than {} record batches; send fewer, larger batches",
                limits.max_upload_batches
            )));
        }
        let size = upload_size(&batch);
        self.check_upload_size(size)?;
        self.hold(size).await?;
        self.arrow_bytes += size as u64;
        self.rows += batch.num_rows() as u64;
        self.pending_bytes += size;
        self.pending_rows += batch.num_rows();
        self.part_bytes += size;
        self.pending.push(batch);
        if self.part_bytes >= limits.part_size {
            self.flush().await?;
        } else if self.pending_rows >= STREAM_GROUP_ROWS || self.pending_bytes >= STREAM_GROUP_BYTES
        {
            self.send_group(false).await?;
        }
        Ok(())
    }

    /// Reserves request memory for a batch of `size` bytes until its part is stored (twice:
    /// the batch and its share of the encoded file). When the budget is in use, the upload
    /// first stores what it holds, then waits for the rest (`--budget-wait`).
    async fn hold(&mut self, size: usize) -> Result<()> {
        let bytes = size.saturating_mul(2);
        let budgets = Arc::clone(&self.node.budgets);
        let permit = match budgets.try_reserve_upload(bytes) {
            Some(p) => p,
            None => {
                if self.part_bytes > 0 {
                    self.flush().await?;
                }
                self.wait_for_part().await?;
                budgets.reserve_upload(bytes, "an upload").await?
            }
        };
        match &mut self.receiving {
            Some(held) => held.merge(permit),
            None => self.receiving = Some(permit),
        }
        Ok(())
    }

    /// Hands the pending batches to the part's encoder (started on the part's first group).
    async fn send_group(&mut self, last: bool) -> Result<()> {
        let batches = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.pending_rows = 0;
        if batches.is_empty() {
            return Ok(());
        }
        let encoder = match &mut self.encoder {
            Some(e) => e,
            None => self.encoder.insert(self.start_encoder()),
        };
        if encoder.tx.send((batches, last)).await.is_err() {
            // The encoder stopped on an error; report it.
            if let Some(e) = self.encoder.take() {
                e.handle
                    .await
                    .map_err(|e| Error::Internal(format!("part encoder failed: {e}")))??;
            }
            return Err(Error::Internal("the part encoder stopped".into()));
        }
        Ok(())
    }

    fn start_encoder(&self) -> EncoderTask {
        let schema = self.schema.clone();
        let format = self.format;
        let want_flight = self.encoded.is_some();
        let target = self.node.limits.message_target();
        let threads = std::thread::available_parallelism().map_or(2, NonZeroUsize::get);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<RecordBatch>, bool)>(1);
        let handle = tokio::task::spawn_blocking(move || {
            let mut encoder = PartEncoder::new(schema, format, want_flight, target, threads)?;
            while let Some((batches, last)) = rx.blocking_recv() {
                if last {
                    for group in encoder.groups(batches) {
                        encoder.add(group)?;
                    }
                } else {
                    encoder.add(batches)?;
                }
            }
            encoder.finish()
        });
        EncoderTask { tx, handle }
    }

    /// Ends the part being received: its last batches go to its encoder, and a background
    /// task waits for the encoding and stores the file while the upload goes on receiving
    /// the next part. At most one part is stored at a time, so memory stays bounded by
    /// about two parts.
    async fn flush(&mut self) -> Result<()> {
        self.send_group(true).await?;
        self.part_bytes = 0;
        let Some(EncoderTask { tx, handle }) = self.encoder.take() else {
            return Ok(());
        };
        drop(tx);
        self.wait_for_part().await?;
        self.storing = self.receiving.take();
        let path = Storage::part_path(&self.id, &self.upload_id, self.written.len(), self.format);
        self.written.push(path.clone());
        let storage = self.node.storage.clone();
        self.in_flight = Some(tokio::spawn(async move {
            let EncodedForStorage {
                file,
                rows,
                bytes,
                flight,
            } = handle
                .await
                .map_err(|e| Error::Internal(format!("part encoder failed: {e}")))??;
            let stored_bytes = file.content_length() as u64;
            storage.put(&path, file).await?;
            let info = PartInfo {
                path: path.to_string(),
                rows,
                bytes,
                stored_bytes,
            };
            Ok((info, flight))
        }));
        Ok(())
    }

    /// Waits for the part in flight, if any, and records it.
    async fn wait_for_part(&mut self) -> Result<()> {
        // Awaited in place: if this call is dropped (the client went away), the writer
        // still holds the task, and its clean-up waits for the part before deleting it.
        let Some(task) = self.in_flight.as_mut() else {
            return Ok(());
        };
        let joined = task.await;
        self.in_flight = None;
        self.storing = None;
        let (info, encoded) =
            joined.map_err(|e| Error::Internal(format!("part writer task failed: {e}")))??;
        self.parts.push(info);
        if let (Some(list), Some(part)) = (self.encoded.as_mut(), encoded) {
            // Kept for the cache only if the cache has room for it (evicting older tables);
            // otherwise the version is served from storage.
            if self.cache_room.as_mut().is_some_and(|r| r.grow(part.bytes)) {
                list.push(part);
            } else {
                self.encoded = None;
                self.cache_room = None;
            }
        }
        Ok(())
    }

    /// Writes what is pending and waits until every part is durable.
    async fn finish(&mut self) -> Result<()> {
        self.flush().await?;
        self.wait_for_part().await
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
    fn node(store: Arc<dyn ObjectStore>, get_delay: Duration) -> Arc<Node> {
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
            1 << 30,
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

    fn metric(node: &Node, line: &str) -> u64 {
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
