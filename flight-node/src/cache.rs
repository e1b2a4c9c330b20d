//! The memory tier: versions held as the exact `FlightData` messages `DoGet` sends.
//!
//! A table is encoded to Arrow IPC once, when it enters the cache; every `DoGet` afterwards
//! streams clones of the same reference-counted buffers, so serving a cached table never
//! encodes or copies it again. The cache is bounded by bytes and evicts the least recently
//! used tables that no request is streaming. Data is durable before it is cached, so
//! eviction never loses anything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::FlightData;
use bytes::Bytes;
use futures::TryStreamExt;
use lru::LruCache;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::name::DatasetId;

/// Cache key: one version of one dataset.
pub type CacheKey = (DatasetId, u64);

/// A message of a `DoGet` stream. Messages encoded when a table enters the cache also hold
/// their complete gRPC frame (prefix and protobuf fields): their header and body are slices
/// of it, and the zero-copy path sends it as one chunk.
#[derive(Debug, Clone)]
pub struct Message {
    pub data: FlightData,
    pub frame: Option<Bytes>,
}

impl From<FlightData> for Message {
    fn from(data: FlightData) -> Self {
        Self { data, frame: None }
    }
}

/// One part of a version, encoded: dictionary and record batch messages, no schema.
#[derive(Debug, Default)]
pub struct EncodedPart {
    pub messages: Vec<Message>,
    pub rows: u64,
    /// Header plus body bytes of all messages.
    pub bytes: usize,
}

impl Drop for EncodedPart {
    fn drop(&mut self) {
        if !self.messages.is_empty() {
            // Freed before the memory is given back.
            drop(std::mem::take(&mut self.messages));
            crate::memory::release_after(self.bytes as u64);
        }
    }
}

/// A whole version, ready to send.
#[derive(Debug)]
pub struct EncodedTable {
    pub schema: SchemaRef,
    /// The schema message every stream starts with.
    pub schema_message: Message,
    pub parts: Vec<Arc<EncodedPart>>,
    pub bytes: usize,
}

impl EncodedTable {
    /// A table whose stream starts with `head`, the schema message (as the uploader sent
    /// it; see `Manifest::schema_flight_data`), or one encoded from `schema`.
    pub fn new(
        schema: SchemaRef,
        head: Option<FlightData>,
        parts: Vec<Arc<EncodedPart>>,
    ) -> Result<Self> {
        let schema_message = Message::from(match head {
            Some(h) => h,
            None => schema_message(&schema)?,
        });
        let bytes =
            parts.iter().map(|p| p.bytes).sum::<usize>() + message_size(&schema_message.data);
        Ok(Self {
            schema,
            schema_message,
            parts,
            bytes,
        })
    }

    /// The messages for the whole table (`part = None`) or one part, schema first.
    /// Cloning a `FlightData` clones reference-counted buffers, not data.
    pub fn messages(
        self: &Arc<Self>,
        part: Option<usize>,
    ) -> impl Iterator<Item = Message> + Send + 'static {
        let this = Arc::clone(self);
        let parts = match part {
            Some(p) => p..p + 1,
            None => 0..this.parts.len(),
        };
        let schema = std::iter::once(this.schema_message.clone());
        let body = parts.flat_map(move |p| EncodedPart::messages(Arc::clone(&this.parts[p])));
        schema.chain(body)
    }
}

impl EncodedPart {
    /// The part's messages, as clones of reference-counted buffers.
    pub fn messages(part: Arc<Self>) -> impl Iterator<Item = Message> + Send + 'static {
        (0..part.messages.len()).map(move |i| part.messages[i].clone())
    }
}

fn message_size(m: &FlightData) -> usize {
    m.data_header.len() + m.data_body.len() + m.app_metadata.len()
}

/// Encodes the schema message for a stream.
pub fn schema_message(schema: &SchemaRef) -> Result<FlightData> {
    let first = encode_stream(schema, std::iter::empty(), usize::MAX)
        .map_err(|e| Error::data("encode the Flight schema", e))?;
    first
        .into_iter()
        .next()
        .ok_or_else(|| Error::Internal("the Flight encoder produced no schema message".into()))
}

/// Encodes record batches into Flight messages of at most about `max_message` bytes each,
/// keeping dictionaries (pandas categoricals survive). Returns the part without the schema
/// message. CPU-bound: call from a blocking thread.
pub fn encode_part(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    max_message: usize,
) -> Result<EncodedPart> {
    // The encoder owns its input: the batches are shared, not copied.
    let owned: Vec<RecordBatch> = batches.to_vec();
    encode_batches(schema, owned.into_iter().map(Ok), max_message)
}

/// Like [`encode_part`], pulling the batches one at a time as they are encoded: a batch
/// decoded from storage is dropped before the next is decoded. The first error of `batches`
/// is returned as it is.
pub fn encode_batches<I>(schema: &SchemaRef, batches: I, max_message: usize) -> Result<EncodedPart>
where
    I: Iterator<Item = Result<RecordBatch>> + Send + 'static,
{
    let rows = Arc::new(AtomicU64::new(0));
    let failed: Arc<Mutex<Option<Error>>> = Arc::default();
    let input = {
        let (schema, rows, failed) = (schema.clone(), Arc::clone(&rows), Arc::clone(&failed));
        batches.map(move |b| {
            let b = b.and_then(|b| with_schema(&schema, b)).map_err(|e| {
                let msg = e.to_string();
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                FlightError::ProtocolError(msg)
            })?;
            rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
            Ok(b)
        })
    };
    let encoded = encode_stream(schema, input, max_message);
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let mut encoded = encoded.map_err(|e| Error::data("encode Flight data", e))?;
    // The first message is the schema; the table keeps one copy of it.
    if !encoded.is_empty() {
        encoded.remove(0);
    }
    let bytes = encoded.iter().map(message_size).sum();
    // Each message becomes its own gRPC frame (the head goes in front of the body, in the
    // body's buffer): the cache keeps only the frames, and `DoGet` sends each as one chunk.
    let messages = encoded
        .into_iter()
        .map(|m| {
            let (frame, data) = crate::zerocopy::contiguous(m);
            Message {
                data,
                frame: Some(frame),
            }
        })
        .collect();
    Ok(EncodedPart {
        messages,
        rows: rows.load(Ordering::Relaxed),
        bytes,
    })
}

/// The messages of a stream: the schema, then dictionaries and batches.
fn encode_stream<I>(
    schema: &SchemaRef,
    batches: I,
    max_message: usize,
) -> std::result::Result<Vec<FlightData>, FlightError>
where
    I: Iterator<Item = std::result::Result<RecordBatch, FlightError>> + Send + 'static,
{
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema.clone())
        .with_max_flight_data_size(max_message)
        .with_dictionary_handling(DictionaryHandling::Resend)
        .build(futures::stream::iter(batches));
    futures::executor::block_on(stream.try_collect::<Vec<_>>())
}

/// Batches decoded from Parquet may carry different schema metadata than the version's
/// schema (pandas metadata, for one); the stream is sent with the version's schema.
fn with_schema(schema: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    if batch.schema_ref().as_ref() == schema.as_ref() {
        return Ok(batch);
    }
    RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
        .map_err(|e| Error::data("match batches to the stored schema", e))
}

/// Counters and sizes, reported by the `stats` action and `/metrics`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CacheStats {
    pub memory_used: u64,
    pub memory_limit: u64,
    pub datasets_cached: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// Byte-bounded LRU of encoded tables.
#[derive(Debug)]
pub struct Cache {
    limit: usize,
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Debug)]
struct State {
    tables: LruCache<CacheKey, Arc<EncodedTable>>,
    used: usize,
}

impl Cache {
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            limit: limit_bytes,
            state: Mutex::new(State {
                tables: LruCache::unbounded(),
                used: 0,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map inconsistent (every update is
        // a single call), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks a version up, counting a hit or a miss.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<EncodedTable>> {
        let found = self.state().tables.get(key).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Looks a version up without counting a hit or miss (for a second look under a lock).
    pub fn peek(&self, key: &CacheKey) -> Option<Arc<EncodedTable>> {
        self.state().tables.get(key).cloned()
    }

    /// Whether a table of this size could ever be cached.
    pub fn fits(&self, bytes: usize) -> bool {
        bytes <= self.limit
    }

    /// Inserts a table, evicting least recently used tables that no request is streaming.
    /// Returns false (and caches nothing) when it cannot be made to fit.
    pub fn insert(&self, key: CacheKey, table: Arc<EncodedTable>) -> bool {
        if !self.fits(table.bytes) {
            return false;
        }
        let mut st = self.state();
        if let Some(old) = st.tables.pop(&key) {
            st.used -= old.bytes;
        }
        if st.used + table.bytes > self.limit {
            // Oldest first; skip tables a DoGet still holds (evicting them frees nothing).
            let victims: Vec<CacheKey> = st
                .tables
                .iter()
                .rev()
                .filter(|(_, t)| Arc::strong_count(t) == 1)
                .scan(st.used + table.bytes, |need, (k, t)| {
                    if *need <= self.limit {
                        return None;
                    }
                    *need -= t.bytes;
                    Some(k.clone())
                })
                .collect();
            let freed: usize = victims
                .iter()
                .filter_map(|k| st.tables.peek(k).map(|t| t.bytes))
                .sum();
            if st.used + table.bytes - freed > self.limit {
                return false;
            }
            for k in victims {
                if let Some(t) = st.tables.pop(&k) {
                    st.used -= t.bytes;
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(dataset = %k.0, version = k.1, bytes = t.bytes, "evicted from memory");
                }
            }
        }
        st.used += table.bytes;
        st.tables.put(key, table);
        true
    }

    /// Drops one version (or all versions when `version` is None) of a dataset; returns
    /// how many tables were dropped.
    pub fn evict(&self, id: &DatasetId, version: Option<u64>) -> usize {
        let mut st = self.state();
        let keys: Vec<CacheKey> = st
            .tables
            .iter()
            .map(|(k, _)| k)
            .filter(|(d, v)| d == id && version.is_none_or(|want| *v == want))
            .cloned()
            .collect();
        for k in &keys {
            if let Some(t) = st.tables.pop(k) {
                st.used -= t.bytes;
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        keys.len()
    }

    /// Every cached version with its size, most recently used first.
    pub fn entries(&self) -> Vec<(CacheKey, usize)> {
        self.state()
            .tables
            .iter()
            .map(|(k, t)| (k.clone(), t.bytes))
            .collect()
    }

    pub fn contains(&self, key: &CacheKey) -> bool {
        self.state().tables.contains(key)
    }

    pub fn stats(&self) -> CacheStats {
        let st = self.state();
        CacheStats {
            memory_used: st.used as u64,
            memory_limit: self.limit as u64,
            datasets_cached: st.tables.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn table(rows: usize) -> Arc<EncodedTable> {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..rows as i64))],
        )
        .unwrap();
        let part = encode_part(&schema, &[batch], 1 << 20).unwrap();
        Arc::new(EncodedTable::new(schema, None, vec![Arc::new(part)]).unwrap())
    }

    fn key(name: &str, v: u64) -> CacheKey {
        (DatasetId::new("ns", name).unwrap(), v)
    }

    #[test]
    fn encodes_schema_then_batches() {
        let t = table(1000);
        let msgs: Vec<_> = t.messages(None).collect();
        assert_eq!(msgs.len(), 2);
        assert!(t.bytes >= 8000, "{}", t.bytes);
        assert_eq!(t.parts[0].rows, 1000);
        let msgs: Vec<FlightData> = msgs.into_iter().map(|m| m.data).collect();
        let batches = arrow_flight::utils::flight_data_to_batches(&msgs).unwrap();
        assert_eq!(batches[0].num_rows(), 1000);
    }

    #[test]
    fn accounts_bytes_and_evicts_lru() {
        let one = table(1000).bytes;
        let cache = Cache::new(one * 2 + one / 2);
        assert!(cache.insert(key("a", 1), table(1000)));
        assert!(cache.insert(key("b", 1), table(1000)));
        assert_eq!(cache.stats().memory_used, 2 * one as u64);
        // Touch a so that b is the least recently used.
        assert!(cache.get(&key("a", 1)).is_some());
        assert!(cache.insert(key("c", 1), table(1000)));
        assert!(cache.contains(&key("a", 1)));
        assert!(!cache.contains(&key("b", 1)));
        let s = cache.stats();
        assert_eq!(
            (s.datasets_cached, s.evictions, s.hits, s.misses),
            (2, 1, 1, 0)
        );
        assert!(cache.get(&key("b", 1)).is_none());
        assert_eq!(cache.stats().misses, 1);
        assert!(s.memory_used <= s.memory_limit);
    }

    #[test]
    fn tables_in_use_are_not_evicted() {
        let one = table(1000).bytes;
        let cache = Cache::new(one + one / 2);
        assert!(cache.insert(key("a", 1), table(1000)));
        let streaming = cache.get(&key("a", 1)).unwrap();
        // a is pinned by a reader: b cannot be made to fit.
        assert!(!cache.insert(key("b", 1), table(1000)));
        drop(streaming);
        assert!(cache.insert(key("b", 1), table(1000)));
        assert!(!cache.contains(&key("a", 1)));
    }

    #[test]
    fn too_large_is_refused_and_evict_by_dataset() {
        let cache = Cache::new(100);
        assert!(!cache.insert(key("a", 1), table(1000)));
        assert_eq!(cache.stats().memory_used, 0);
        let cache = Cache::new(1 << 20);
        cache.insert(key("a", 1), table(10));
        cache.insert(key("a", 2), table(10));
        cache.insert(key("b", 1), table(10));
        assert_eq!(cache.evict(&key("a", 0).0, Some(2)), 1);
        assert_eq!(cache.evict(&key("a", 0).0, None), 1);
        assert_eq!(cache.stats().datasets_cached, 1);
    }
}
