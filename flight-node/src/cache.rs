//! The memory tier: parts of versions held as the exact `FlightData` messages `DoGet` sends.
//!
//! The unit is one part of a version (see [`crate::placement`]: each part has its own
//! owner in a pool, so a node may hold some parts of a version and not others). A part is
//! encoded to Arrow IPC once, when it enters the cache; every `DoGet` afterwards streams
//! clones of the same reference-counted buffers, so serving a cached part never encodes or
//! copies it again. The schema message is the version's (from its manifest), sent first.
//! The cache is bounded by bytes and evicts the least recently used parts that no request
//! is streaming. Data is durable before it is cached, so eviction never loses anything.

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

/// One version of one dataset.
pub type CacheKey = (DatasetId, u64);

/// Cache key: one part of one version.
pub type PartKey = (DatasetId, u64, u32);

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
    let first = encode_stream(schema, std::iter::empty())
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
    encode(schema, batches, max_message, true)
}

/// Encodes batches for one stream only (a selected read): the messages are not laid out
/// as cached frames, which would copy every body once more.
pub fn encode_for_stream(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    max_message: usize,
) -> Result<EncodedPart> {
    encode(schema, batches.into_iter().map(Ok), max_message, false)
}

fn encode<I>(
    schema: &SchemaRef,
    batches: I,
    max_message: usize,
    framed: bool,
) -> Result<EncodedPart>
where
    I: Iterator<Item = Result<RecordBatch>> + Send + 'static,
{
    let rows = Arc::new(AtomicU64::new(0));
    let failed: Arc<Mutex<Option<Error>>> = Arc::default();
    let input = {
        let (schema, rows, failed) = (schema.clone(), Arc::clone(&rows), Arc::clone(&failed));
        batches
            .map(move |b| {
                let b = b.and_then(|b| with_schema(&schema, b)).map_err(|e| {
                    let msg = e.to_string();
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    FlightError::ProtocolError(msg)
                })?;
                rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                Ok(b)
            })
            .flat_map(
                move |b: std::result::Result<RecordBatch, FlightError>| match b {
                    Ok(b) => split(b, max_message).into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                },
            )
    };
    let encoded = encode_stream(schema, input);
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
            if !framed {
                return Message::from(m);
            }
            let (frame, data) = crate::wire::contiguous(m);
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

/// Slices a batch (without copying) into pieces of about `max` bytes of data each. The
/// Flight encoder's own split counts every buffer a column shares whole (after an IPC
/// decode, all columns of a message share its body), which cut messages many times smaller
/// than asked.
fn split(batch: RecordBatch, max: usize) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    let size = batch_size(&batch);
    if rows <= 1 || size <= max {
        return vec![batch];
    }
    let step = rows.div_ceil(size.div_ceil(max.max(1))).max(1);
    (0..rows)
        .step_by(step)
        .map(|at| batch.slice(at, step.min(rows - at)))
        .collect()
}

/// The messages of a stream: the schema, then dictionaries and batches, each batch as it
/// comes (the input is already split to the message size).
fn encode_stream<I>(
    schema: &SchemaRef,
    batches: I,
) -> std::result::Result<Vec<FlightData>, FlightError>
where
    I: Iterator<Item = std::result::Result<RecordBatch, FlightError>> + Send + 'static,
{
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema.clone())
        .with_max_flight_data_size(usize::MAX)
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
    /// Room held for uploads that will enter the cache when committed.
    pub memory_reserved: u64,
    pub memory_limit: u64,
    /// Versions of which at least one part is held.
    pub datasets_cached: u64,
    pub parts_cached: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// Byte-bounded LRU of encoded parts.
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
    parts: LruCache<PartKey, Arc<EncodedPart>>,
    used: usize,
    /// Room held for parts being built (uploads keeping their messages for the cache).
    reserved: usize,
}

/// Room in the cache held for parts being built; given back when dropped, or turned into
/// the parts by [`Cache::insert_reserved`].
#[derive(Debug)]
pub struct Reservation<'a> {
    cache: &'a Cache,
    bytes: usize,
}

impl Reservation<'_> {
    /// Holds `more` bytes as well, evicting least recently used parts no request is
    /// streaming; false (and nothing more held) when they cannot be made to fit.
    pub fn grow(&mut self, more: usize) -> bool {
        let mut st = self.cache.state();
        if !self.cache.make_room(&mut st, more) {
            return false;
        }
        st.reserved += more;
        self.bytes += more;
        true
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut st = self.cache.state();
        st.reserved = st.reserved.saturating_sub(self.bytes);
    }
}

impl Cache {
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            limit: limit_bytes,
            state: Mutex::new(State {
                parts: LruCache::unbounded(),
                used: 0,
                reserved: 0,
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

    /// Looks a part up, counting a hit or a miss.
    pub fn get(&self, key: &PartKey) -> Option<Arc<EncodedPart>> {
        let found = self.state().parts.get(key).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Looks a part up without counting a hit or miss (for a second look under a lock).
    pub fn peek(&self, key: &PartKey) -> Option<Arc<EncodedPart>> {
        self.state().parts.get(key).cloned()
    }

    /// Whether a part of this size could ever be cached.
    pub fn fits(&self, bytes: usize) -> bool {
        bytes <= self.limit
    }

    /// Empty room to hold for parts being built ([`Reservation::grow`] adds to it).
    pub fn reserve(&self) -> Reservation<'_> {
        Reservation {
            cache: self,
            bytes: 0,
        }
    }

    /// Inserts a part, evicting least recently used parts that no request is streaming.
    /// Returns false (and caches nothing) when it cannot be made to fit.
    pub fn insert(&self, key: PartKey, part: Arc<EncodedPart>) -> bool {
        self.insert_reserved(vec![(key, part)], self.reserve()) == 1
    }

    /// Inserts parts into room reserved for them (and whatever else they need); returns
    /// how many went in (each needs its room: the others are left out).
    pub fn insert_reserved(
        &self,
        parts: Vec<(PartKey, Arc<EncodedPart>)>,
        mut room: Reservation<'_>,
    ) -> usize {
        let mut st = self.state();
        // The reservation becomes the parts.
        st.reserved = st.reserved.saturating_sub(room.bytes);
        room.bytes = 0;
        let mut inserted = 0;
        for (key, part) in parts {
            if !self.fits(part.bytes) {
                continue;
            }
            if let Some(old) = st.parts.pop(&key) {
                st.used -= old.bytes;
            }
            if !self.make_room(&mut st, part.bytes) {
                continue;
            }
            st.used += part.bytes;
            st.parts.put(key, part);
            inserted += 1;
        }
        inserted
    }

    /// Evicts least recently used parts that no request is streaming until `need` more
    /// bytes fit; false (nothing evicted) when they cannot.
    fn make_room(&self, st: &mut State, need: usize) -> bool {
        let held = st.used + st.reserved;
        if held + need <= self.limit {
            return true;
        }
        // Oldest first; skip parts a DoGet still holds (evicting them frees nothing).
        let victims: Vec<PartKey> = st
            .parts
            .iter()
            .rev()
            .filter(|(_, t)| Arc::strong_count(t) == 1)
            .scan(held + need, |want, (k, t)| {
                if *want <= self.limit {
                    return None;
                }
                *want -= t.bytes;
                Some(k.clone())
            })
            .collect();
        let freed: usize = victims
            .iter()
            .filter_map(|k| st.parts.peek(k).map(|t| t.bytes))
            .sum();
        if held + need - freed > self.limit {
            return false;
        }
        for k in victims {
            if let Some(t) = st.parts.pop(&k) {
                st.used -= t.bytes;
                self.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(dataset = %k.0, version = k.1, part = k.2, bytes = t.bytes, "evicted from memory");
            }
        }
        true
    }

    /// Drops one version (or all versions when `version` is None) of a dataset, every part
    /// of it; returns how many versions had parts dropped.
    pub fn evict(&self, id: &DatasetId, version: Option<u64>) -> usize {
        let mut st = self.state();
        let keys: Vec<PartKey> = st
            .parts
            .iter()
            .map(|(k, _)| k)
            .filter(|(d, v, _)| d == id && version.is_none_or(|want| *v == want))
            .cloned()
            .collect();
        let mut versions = std::collections::HashSet::new();
        for k in &keys {
            if let Some(t) = st.parts.pop(k) {
                st.used -= t.bytes;
                self.evictions.fetch_add(1, Ordering::Relaxed);
                versions.insert(k.1);
            }
        }
        versions.len()
    }

    /// Every cached part with its size, most recently used first.
    pub fn entries(&self) -> Vec<(PartKey, usize)> {
        self.state()
            .parts
            .iter()
            .map(|(k, t)| (k.clone(), t.bytes))
            .collect()
    }

    pub fn contains(&self, key: &PartKey) -> bool {
        self.state().parts.contains(key)
    }

    pub fn stats(&self) -> CacheStats {
        let st = self.state();
        let versions: std::collections::HashSet<(&DatasetId, u64)> =
            st.parts.iter().map(|((d, v, _), _)| (d, *v)).collect();
        CacheStats {
            memory_used: st.used as u64,
            memory_reserved: st.reserved as u64,
            memory_limit: self.limit as u64,
            datasets_cached: versions.len() as u64,
            parts_cached: st.parts.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]))
    }

    fn table(rows: usize) -> Arc<EncodedPart> {
        let batch = RecordBatch::try_new(
            schema(),
            vec![Arc::new(Int64Array::from_iter_values(0..rows as i64))],
        )
        .unwrap();
        Arc::new(encode_part(&schema(), &[batch], 1 << 20).unwrap())
    }

    fn key(name: &str, v: u64) -> PartKey {
        part(name, v, 0)
    }

    fn part(name: &str, v: u64, p: u32) -> PartKey {
        (DatasetId::new("ns", name).unwrap(), v, p)
    }

    #[test]
    fn encodes_batches_that_decode_after_the_schema() {
        let t = table(1000);
        assert_eq!(t.messages.len(), 1);
        assert!(t.bytes >= 8000, "{}", t.bytes);
        assert_eq!(t.rows, 1000);
        let mut msgs = vec![schema_message(&schema()).unwrap()];
        msgs.extend(EncodedPart::messages(t).map(|m| m.data));
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
        cache.insert(part("a", 1, 0), table(10));
        cache.insert(part("a", 1, 1), table(10));
        cache.insert(part("a", 2, 0), table(10));
        cache.insert(part("b", 1, 0), table(10));
        let s = cache.stats();
        assert_eq!((s.datasets_cached, s.parts_cached), (3, 4));
        assert_eq!(cache.evict(&key("a", 0).0, Some(2)), 1);
        // Both parts of version 1 go.
        assert_eq!(cache.evict(&key("a", 0).0, None), 1);
        let s = cache.stats();
        assert_eq!((s.datasets_cached, s.parts_cached), (1, 1));
    }

    #[test]
    fn reserved_room_counts_against_the_limit_and_becomes_the_table() {
        let one = table(1000).bytes;
        let cache = Cache::new(one * 2 + one / 2);
        assert!(cache.insert(key("a", 1), table(1000)));
        assert!(cache.insert(key("b", 1), table(1000)));
        let mut room = cache.reserve();
        // Room for one more table: the least recently used one is evicted to make it.
        assert!(room.grow(one));
        assert!(!cache.contains(&key("a", 1)) && cache.contains(&key("b", 1)));
        assert_eq!(cache.stats().memory_reserved, one as u64);
        // More than the cache can hold: refused, and what was held stays held.
        assert!(!room.grow(one * 2));
        assert_eq!(room.bytes(), one);
        // Nothing else can use the reserved room meanwhile.
        let pinned = cache.get(&key("b", 1)).unwrap();
        assert!(!cache.insert(key("c", 1), table(1000)));
        drop(pinned);
        assert_eq!(
            cache.insert_reserved(vec![(key("d", 1), table(1000))], room),
            1
        );
        let s = cache.stats();
        assert_eq!((s.memory_reserved, s.memory_used), (0, 2 * one as u64));
        // A reservation dropped unused gives its room back.
        let mut room = cache.reserve();
        assert!(room.grow(one / 4));
        drop(room);
        assert_eq!(cache.stats().memory_reserved, 0);
    }
}
