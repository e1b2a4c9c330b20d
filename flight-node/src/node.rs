//! The node's domain logic, shared by the Flight service and the HTTP side port: ingest,
//! resolve, serve, list, delete, evict, load, renew and stats. Nothing here knows gRPC.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::FlightData;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt, TryStreamExt};
use lru::LruCache;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::auth::Principal;
use crate::cache::{Cache, CacheKey, CacheStats, EncodedPart, EncodedTable, Message};
use crate::config::Config;
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
}

/// Body of the `load` action: ingest an object from the node's storage as a new version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadRequest {
    pub namespace: String,
    pub name: String,
    /// Object path relative to the storage root, or a URL under the storage URL.
    pub source: String,
    /// `csv` or `parquet`; guessed from the extension when absent.
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub contract: Option<String>,
    /// CSV field delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<char>,
}

/// Body of the `delete` and `evict` actions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasetRef {
    #[serde(default = "default_ns")]
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub version: Option<u64>,
}

fn default_ns() -> String {
    crate::name::DEFAULT_NAMESPACE.to_string()
}

/// The `stats` action's answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node: Option<String>,
    pub storage_url: String,
    /// Node-wide memory and cache counters; only for a token of every namespace.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStats>,
    /// The versions held in memory (what the operator reports as tier `Memory`).
    pub tables: Vec<CachedTableInfo>,
}

/// One version held in memory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CachedTableInfo {
    pub namespace: String,
    pub name: String,
    pub version: u64,
    pub bytes: u64,
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
    metrics: Metrics,
    /// Manifests read, with the ETag of their record (checked before each use).
    manifests: Mutex<LruCache<CacheKey, KnownManifest>>,
    loading: Mutex<HashMap<CacheKey, watch::Receiver<LoadProgress>>>,
}

/// A version being read from storage into memory. Parts are published in order as they
/// are decoded, so readers stream the first part while later ones are still loading; the
/// table enters the cache when its last part is in.
#[derive(Debug, Clone, Default)]
pub struct LoadProgress {
    parts: Vec<Arc<EncodedPart>>,
    outcome: Option<std::result::Result<(), Arc<Error>>>,
}

/// What a reader of a version that is not in memory gets.
enum Loaded {
    Cached(Arc<EncodedTable>),
    Loading(watch::Receiver<LoadProgress>),
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
            metrics: Metrics::new(),
            manifests: Mutex::new(LruCache::new(
                NonZeroUsize::new(16_384).unwrap_or(NonZeroUsize::MIN),
            )),
            loading: Mutex::new(HashMap::new()),
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
        let cache_limit = usize::try_from(c.memory_limit).unwrap_or(usize::MAX);
        Ok(Self::new(
            storage,
            cache_limit,
            contracts,
            signer,
            placement,
            Limits::from_config(c),
        ))
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
        };
        // From here on the commit owns the parts: it runs to completion on its own task even
        // if this call goes away, and only it may remove them.
        w.committed = true;
        let manifest = self.versions.commit(upload, manifest).await?;
        let key = (id, manifest.version);
        self.remember(key.clone(), manifest.clone(), None);
        if let Some(parts) = w.encoded.take() {
            let head = manifest.schema_flight_data()?;
            match EncodedTable::new(
                schema,
                Some(head),
                parts.into_iter().map(Arc::new).collect(),
            ) {
                Ok(t) => {
                    self.cache.insert(key, Arc::new(t));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "failed to cache an upload; it will load on first read")
                }
            }
        }
        drop(w);
        crate::memory::release_after(manifest.bytes);
        self.metrics.record_upload(manifest.rows, manifest.bytes);
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

    /// The Flight messages of a version (or one part), schema first. Served from memory;
    /// on a miss the version is loaded from Parquet once (concurrent readers wait for that
    /// one load) and cached, or streamed part by part when it cannot fit the cache.
    pub async fn stream(
        self: &Arc<Self>,
        manifest: &Manifest,
        part: Option<u32>,
    ) -> Result<BoxStream<'static, Result<Message>>> {
        let id = manifest.dataset()?;
        let key = (id, manifest.version);
        let part = part.map(|p| p as usize);
        if let Some(t) = self.cache.get(&key) {
            return Ok(stream::iter(t.messages(part).map(Ok)).boxed());
        }
        let estimate = usize::try_from(manifest.bytes).unwrap_or(usize::MAX);
        if self.cache.fits(estimate) {
            match self.start_load(manifest)? {
                Loaded::Cached(t) => return Ok(stream::iter(t.messages(part).map(Ok)).boxed()),
                Loaded::Loading(progress) => {
                    let head = Message::from(manifest.schema_flight_data()?);
                    let range = match part {
                        Some(p) => p..p + 1,
                        None => 0..manifest.parts.len(),
                    };
                    return Ok(stream::once(async { Ok(head) })
                        .chain(stream_loading(progress, range))
                        .boxed());
                }
            }
        }
        // Too large for memory: stream part by part, one part resident at a time.
        let schema = manifest.arrow_schema()?;
        let head = Message::from(manifest.schema_flight_data()?);
        let parts: Vec<PartInfo> = match part {
            Some(p) => vec![manifest.parts[p].clone()],
            None => manifest.parts.clone(),
        };
        let storage = self.storage.clone();
        let versions = self.versions.clone();
        let manifest = Arc::new(manifest.clone());
        let target = self.limits.message_target();
        let body = stream::iter(parts)
            .then(move |p| {
                let storage = storage.clone();
                let versions = versions.clone();
                let manifest = Arc::clone(&manifest);
                let schema = schema.clone();
                async move {
                    let loaded = storage.load_part(&p, READ_BATCH_ROWS, schema, target).await;
                    let mut encoded = match loaded {
                        Ok(e) => e,
                        Err(e) => return Err(deleted_or(&versions, &manifest, e).await),
                    };
                    let messages = std::mem::take(&mut encoded.messages);
                    Ok::<_, Error>(stream::iter(messages.into_iter().map(Ok)))
                }
            })
            .try_flatten();
        Ok(stream::once(async { Ok(head) }).chain(body).boxed())
    }

    /// The cached table of a version, loading it from storage once if it is missing (other
    /// readers of the same version share that load). `None` when it cannot fit in memory.
    pub async fn ensure_cached(
        self: &Arc<Self>,
        manifest: &Manifest,
    ) -> Result<Option<Arc<EncodedTable>>> {
        let key = (manifest.dataset()?, manifest.version);
        if let Some(t) = self.cache.peek(&key) {
            return Ok(Some(t));
        }
        let estimate = usize::try_from(manifest.bytes).unwrap_or(usize::MAX);
        if !self.cache.fits(estimate) {
            return Ok(None);
        }
        match self.start_load(manifest)? {
            Loaded::Cached(t) => Ok(Some(t)),
            Loaded::Loading(mut progress) => {
                let outcome = progress
                    .wait_for(|p| p.outcome.is_some())
                    .await
                    .map_err(|_| Error::Internal("loading the version stopped".into()))?
                    .outcome
                    .clone();
                match outcome {
                    Some(Err(e)) => Err(Error::Shared(e)),
                    _ => Ok(self.cache.peek(&key)),
                }
            }
        }
    }

    /// Starts loading a version into memory, or joins the load in progress. The load runs
    /// in its own task: a reader that goes away does not stop it.
    fn start_load(self: &Arc<Self>, manifest: &Manifest) -> Result<Loaded> {
        let key = (manifest.dataset()?, manifest.version);
        let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock the finished load takes to leave the map.
        if let Some(t) = self.cache.peek(&key) {
            return Ok(Loaded::Cached(t));
        }
        if let Some(progress) = loading.get(&key) {
            return Ok(Loaded::Loading(progress.clone()));
        }
        let (tx, rx) = watch::channel(LoadProgress::default());
        loading.insert(key.clone(), rx.clone());
        drop(loading);
        let node = Arc::clone(self);
        let manifest = manifest.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = node.load_table(&manifest, &tx).await;
            let outcome = {
                let mut loading = node.loading.lock().unwrap_or_else(|p| p.into_inner());
                let secs = started.elapsed().as_secs_f64();
                node.metrics
                    .record_load(secs, result.as_ref().ok().map(|t| t.bytes as u64));
                let outcome = match result {
                    Ok(table) => {
                        tracing::info!(
                            dataset = %key.0, version = key.1, bytes = table.bytes,
                            parts = table.parts.len(), seconds = secs,
                            mb_per_s = table.bytes as f64 / secs.max(1e-9) / 1e6,
                            "loaded from storage into memory"
                        );
                        node.cache.insert(key.clone(), Arc::new(table));
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(dataset = %key.0, version = key.1, error = %e, "failed to load a version from storage");
                        Err(Arc::new(e))
                    }
                };
                loading.remove(&key);
                outcome
            };
            crate::memory::release_after(manifest.bytes);
            tx.send_modify(|p| p.outcome = Some(outcome));
        });
        Ok(Loaded::Loading(rx))
    }

    /// The `preload` action: brings a version (the newest by default) into memory ahead of
    /// its first read. Returns the manifest and whether it is now cached.
    pub async fn preload(
        self: &Arc<Self>,
        id: &DatasetId,
        version: Option<u64>,
    ) -> Result<(Arc<Manifest>, bool)> {
        let manifest = match version {
            Some(v) => self.resolve(&Ticket::new(id.clone(), v)).await?,
            None => self.latest(id).await?,
        };
        let cached = self.ensure_cached(&manifest).await?.is_some()
            && self.cache.contains(&(id.clone(), manifest.version));
        Ok((manifest, cached))
    }

    /// Reads every part of a version, publishing each (in order) as soon as it is ready.
    async fn load_table(
        &self,
        manifest: &Manifest,
        progress: &watch::Sender<LoadProgress>,
    ) -> Result<EncodedTable> {
        let schema = manifest.arrow_schema()?;
        let target = self.limits.message_target();
        let mut parts = stream::iter(manifest.parts.clone())
            .map(|p| {
                let storage = self.storage.clone();
                let schema = schema.clone();
                async move {
                    match storage.load_part(&p, READ_BATCH_ROWS, schema, target).await {
                        Ok(part) => Ok(part),
                        Err(e) => Err(deleted_or(&self.versions, manifest, e).await),
                    }
                }
            })
            .buffered(LOAD_PARALLELISM);
        let mut loaded = Vec::with_capacity(manifest.parts.len());
        while let Some(part) = parts.next().await {
            let part = Arc::new(part?);
            progress.send_modify(|p| p.parts.push(Arc::clone(&part)));
            loaded.push(part);
        }
        drop(parts);
        EncodedTable::new(schema, Some(manifest.schema_flight_data()?), loaded)
    }

    /// Record batches of a version (for the HTTP export), part by part.
    pub fn batches(&self, manifest: &Manifest) -> BoxStream<'static, Result<RecordBatch>> {
        let storage = self.storage.clone();
        let cached = manifest
            .dataset()
            .ok()
            .and_then(|id| self.cache.get(&(id, manifest.version)));
        match cached {
            Some(t) => {
                let msgs: Vec<FlightData> = t.messages(None).map(|m| m.data).collect();
                let decoded =
                    arrow_flight::utils::flight_data_to_batches(&msgs).map_err(Error::from);
                stream::iter(match decoded {
                    Ok(b) => b.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(e) => vec![Err(e)],
                })
                .boxed()
            }
            None => stream::iter(manifest.parts.clone())
                .then(move |p| {
                    let storage = storage.clone();
                    async move { storage.read_part(&p, READ_BATCH_ROWS).await }
                })
                .map_ok(|b| stream::iter(b.into_iter().map(Ok)))
                .try_flatten()
                .boxed(),
        }
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

    /// The node's figures as `principal` may see them: the versions in memory of its
    /// namespaces only, and the node-wide counters (which sum over every namespace) only
    /// for a principal of every namespace.
    pub fn stats(&self, principal: &Principal) -> NodeStats {
        let everything = matches!(principal, Principal::Everything);
        NodeStats {
            node: self.placement.advertise_uri().map(str::to_string),
            storage_url: self.storage.url().to_string(),
            cache: everything.then(|| self.cache.stats()),
            tables: self
                .cache
                .entries()
                .into_iter()
                .filter(|((id, _), _)| principal.allows(id.namespace()))
                .map(|((id, version), bytes)| CachedTableInfo {
                    namespace: id.namespace().to_string(),
                    name: id.name().to_string(),
                    version,
                    bytes: bytes as u64,
                })
                .collect(),
        }
    }
}

/// Bytes of Arrow data a batch references. Unlike `get_array_memory_size`, a buffer shared
/// by several columns (as after decoding one IPC message) is not counted once per column,
/// and a slice counts only its rows.
pub fn batch_size(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
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

/// The messages of parts `range` of a version being loaded, each part sent as soon as the
/// load publishes it.
fn stream_loading(
    progress: watch::Receiver<LoadProgress>,
    range: std::ops::Range<usize>,
) -> impl Stream<Item = Result<Message>> + Send + 'static {
    let end = range.end;
    stream::unfold((progress, range.start), move |(mut rx, i)| async move {
        if i >= end {
            return None;
        }
        let next = match rx
            .wait_for(|p| p.parts.len() > i || p.outcome.is_some())
            .await
        {
            Err(_) => Err(Error::Internal("loading the version stopped".into())),
            Ok(p) => match (p.parts.get(i), &p.outcome) {
                (Some(part), _) => Ok(Arc::clone(part)),
                (None, Some(Err(e))) => Err(Error::Shared(Arc::clone(e))),
                (None, _) => Err(Error::Internal(format!(
                    "the version was loaded without its part {i}"
                ))),
            },
        };
        let after = if next.is_ok() { i + 1 } else { end };
        Some((next, (rx, after)))
    })
    .map_ok(|part| stream::iter(EncodedPart::messages(part).map(Ok)))
    .try_flatten()
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
    encoded_bytes: usize,
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
            format: PartFormat::for_schema(&schema),
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
            encoded_bytes: 0,
            committed: false,
            in_flight: None,
        }
    }

    /// Accepts one batch; a batch larger than a part is cut (without copying) so that
    /// parts, and the endpoints clients fetch in parallel, stay near the part size.
    async fn push(&mut self, batch: RecordBatch) -> Result<()> {
        let size = batch_size(&batch);
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
        let size = batch_size(&batch);
        self.arrow_bytes += size as u64;
        if self.arrow_bytes > limits.max_upload_size {
            return Err(Error::ResourceExhausted(format!(
                "upload exceeds the maximum upload size of {} bytes",
                limits.max_upload_size
            )));
        }
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
        let (info, encoded) =
            joined.map_err(|e| Error::Internal(format!("part writer task failed: {e}")))??;
        self.parts.push(info);
        if let (Some(list), Some(part)) = (self.encoded.as_mut(), encoded) {
            self.encoded_bytes += part.bytes;
            if self.node.cache.fits(self.encoded_bytes) {
                list.push(part);
            } else {
                // Too large to cache: it will be served from storage.
                self.encoded = None;
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

    /// A cold read streams the first part while later parts are still being read (a GET
    /// takes 400 ms, two at a time, four parts), then the version is cached.
    #[tokio::test]
    async fn a_cold_read_streams_parts_as_they_load() {
        let node = node(Arc::new(InMemory::new()), Duration::from_millis(400));
        let m = upload(&node).await;
        let key = (m.dataset().unwrap(), m.version);
        let mut s = node.stream(&m, None).await.unwrap();
        let mut got = vec![s.next().await.unwrap().unwrap()]; // the schema
        got.push(s.next().await.unwrap().unwrap()); // part 0
        assert!(
            node.cache().peek(&key).is_none(),
            "the first part came only after the whole version was loaded"
        );
        while let Some(m) = s.next().await {
            got.push(m.unwrap());
        }
        assert_eq!(rows(&got), (0..40_000).collect::<Vec<_>>());
        assert!(node.cache().peek(&key).is_some());
        let metrics = node.metrics().render(&node.cache().stats());
        assert!(
            metrics.contains("flight_storage_loads_total{result=\"ok\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("flight_storage_load_seconds_count 1"),
            "{metrics}"
        );
        // A single part of a version in memory.
        let part: Vec<Message> = node
            .stream(&m, Some(2))
            .await
            .unwrap()
            .map(|m| m.unwrap())
            .collect()
            .await;
        assert_eq!(rows(&part), (20_000..30_000).collect::<Vec<_>>());
    }

    /// Readers that arrive during a load share it; a reader that goes away does not stop it.
    #[tokio::test]
    async fn readers_share_one_load_that_outlives_them() {
        let node = node(Arc::new(InMemory::new()), Duration::from_millis(100));
        let m = upload(&node).await;
        let key = (m.dataset().unwrap(), m.version);
        let mut first = node.stream(&m, None).await.unwrap();
        first.next().await.unwrap().unwrap();
        let second = node.stream(&m, Some(3)).await.unwrap();
        assert_eq!(node.loading.lock().unwrap().len(), 1);
        drop(first);
        let part: Vec<Message> = second.map(|m| m.unwrap()).collect().await;
        assert_eq!(rows(&part), (30_000..40_000).collect::<Vec<_>>());
        for _ in 0..100 {
            if node.cache().peek(&key).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(node.cache().peek(&key).is_some());
        assert!(node.loading.lock().unwrap().is_empty());
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
        }
        let err = node.ensure_cached(&m).await.unwrap_err();
        assert!(err.to_string().contains("missing from storage"), "{err}");
        let metrics = node.metrics().render(&node.cache().stats());
        assert!(
            metrics.contains("flight_storage_loads_total{result=\"error\"} 3"),
            "{metrics}"
        );
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
        let key = (m.dataset().unwrap(), m.version);
        assert!(node.cache().peek(&key).is_none());
    }
}
