//! Prometheus metrics, served on the HTTP port at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::budget::BudgetStats;
use crate::cache::CacheStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    /// `ok` or `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub code: String,
}

/// All of the node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upload_rows: Counter,
    upload_bytes: Counter,
    upload_seconds: Histogram,
    sent_bytes: Counter,
    loads: Family<LoadLabels, Counter>,
    load_seconds: Histogram,
    load_bytes: Counter,
    cache_used: Gauge<u64, AtomicU64>,
    cache_limit: Gauge<u64, AtomicU64>,
    cache_tables: Gauge<u64, AtomicU64>,
    cache_hits: Gauge<u64, AtomicU64>,
    cache_misses: Gauge<u64, AtomicU64>,
    cache_evictions: Gauge<u64, AtomicU64>,
    cache_fill: Gauge<f64, AtomicU64>,
    request_memory: Gauge<u64, AtomicU64>,
    request_memory_limit: Gauge<u64, AtomicU64>,
    uploads_active: Gauge<u64, AtomicU64>,
    refused_memory: Gauge<u64, AtomicU64>,
    refused_uploads: Gauge<u64, AtomicU64>,
    stalled_streams: Gauge<u64, AtomicU64>,
    connections_open: Gauge<u64, AtomicU64>,
    connections_idle_closed: Counter,
    releases: Counter,
    released_versions: Counter,
    release_deletes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flight");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Flight and HTTP requests by method and result code",
            requests.clone(),
        );
        let upload_rows = Counter::default();
        registry.register(
            "upload_rows",
            "Rows committed by uploads",
            upload_rows.clone(),
        );
        let upload_bytes = Counter::default();
        registry.register(
            "upload_bytes",
            "Arrow bytes committed by uploads",
            upload_bytes.clone(),
        );
        // 5 ms to about 80 s.
        let upload_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register(
            "upload_seconds",
            "Time from an upload's start to its commit",
            upload_seconds.clone(),
        );
        let sent_bytes = Counter::default();
        registry.register(
            "sent_bytes",
            "Flight data bytes sent by DoGet",
            sent_bytes.clone(),
        );
        let loads = Family::<LoadLabels, Counter>::default();
        registry.register(
            "storage_loads",
            "Versions read from storage into memory, by result",
            loads.clone(),
        );
        // 10 ms to about 80 s.
        let load_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "storage_load_seconds",
            "Time to read a version from storage into memory",
            load_seconds.clone(),
        );
        let load_bytes = Counter::default();
        registry.register(
            "storage_load_bytes",
            "Arrow bytes read from storage into memory",
            load_bytes.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::<u64, AtomicU64>::default();
            registry.register(name, help, g.clone());
            g
        };
        let cache_used = gauge(
            &mut registry,
            "cache_bytes",
            "Bytes of tables held in memory",
        );
        let cache_limit = gauge(
            &mut registry,
            "cache_limit_bytes",
            "Byte budget of the memory cache",
        );
        let cache_tables = gauge(
            &mut registry,
            "cache_tables",
            "Dataset versions held in memory",
        );
        // Cumulative counts kept by the cache; exported as `_total` counters would need the
        // cache to own prometheus types, so they are gauges that only grow.
        let cache_hits = gauge(
            &mut registry,
            "cache_hits_total",
            "DoGet requests served from memory",
        );
        let cache_misses = gauge(
            &mut registry,
            "cache_misses_total",
            "DoGet requests that loaded from storage",
        );
        let cache_evictions = gauge(
            &mut registry,
            "cache_evictions_total",
            "Tables evicted from memory",
        );
        let cache_fill = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "cache_fill_ratio",
            "Bytes held in the cache over its capacity (what an autoscaler scales a pool on)",
            cache_fill.clone(),
        );
        let request_memory = gauge(
            &mut registry,
            "request_memory_bytes",
            "Request memory in use: loads from storage, cold reads and exports (--request-memory)",
        );
        let request_memory_limit = gauge(
            &mut registry,
            "request_memory_limit_bytes",
            "Byte budget of request memory",
        );
        let uploads_active = gauge(&mut registry, "uploads_active", "Uploads in progress");
        let refused_memory = gauge(
            &mut registry,
            "refused_request_memory_total",
            "Reads refused because request memory stayed in use for --budget-wait",
        );
        let refused_uploads = gauge(
            &mut registry,
            "refused_uploads_total",
            "Uploads refused at --max-uploads or --max-uploads-per-token",
        );
        let stalled_streams = gauge(
            &mut registry,
            "stalled_streams_total",
            "DoGet streams and exports ended because the client read nothing for --stream-stall-timeout",
        );
        let connections_open = gauge(
            &mut registry,
            "grpc_connections",
            "Open connections on the gRPC port",
        );
        let connections_idle_closed = Counter::default();
        registry.register(
            "grpc_connections_idle_closed",
            "Connections closed after --idle-connection-timeout without a request",
            connections_idle_closed.clone(),
        );
        let releases = Counter::default();
        registry.register(
            "releases",
            "Releases of versions by their consumers",
            releases.clone(),
        );
        let released_versions = Counter::default();
        registry.register(
            "released_versions",
            "Versions released by every declared consumer",
            released_versions.clone(),
        );
        let release_deletes = Counter::default();
        registry.register(
            "release_deletes",
            "Versions deleted because every consumer released them (not by TTL)",
            release_deletes.clone(),
        );
        Self {
            registry,
            releases,
            released_versions,
            release_deletes,
            cache_fill,
            request_memory,
            request_memory_limit,
            uploads_active,
            refused_memory,
            refused_uploads,
            stalled_streams,
            connections_open,
            connections_idle_closed,
            requests,
            upload_rows,
            upload_bytes,
            upload_seconds,
            sent_bytes,
            loads,
            load_seconds,
            load_bytes,
            cache_used,
            cache_limit,
            cache_tables,
            cache_hits,
            cache_misses,
            cache_evictions,
        }
    }

    pub fn record_request(&self, method: &str, code: tonic::Code) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// A committed upload: its rows, Arrow bytes, and seconds from its start to its commit.
    pub fn record_upload(&self, rows: u64, bytes: u64, seconds: f64) {
        self.upload_rows.inc_by(rows);
        self.upload_bytes.inc_by(bytes);
        self.upload_seconds.observe(seconds);
    }

    /// A load from storage ended: its duration, and its Arrow bytes when it succeeded.
    pub fn record_load(&self, seconds: f64, bytes: Option<u64>) {
        let result = if bytes.is_some() { "ok" } else { "error" };
        self.loads
            .get_or_create(&LoadLabels {
                result: result.into(),
            })
            .inc();
        self.load_seconds.observe(seconds);
        if let Some(b) = bytes {
            self.load_bytes.inc_by(b);
        }
    }

    pub fn record_sent(&self, bytes: u64) {
        self.sent_bytes.inc_by(bytes);
    }

    /// A connection on the gRPC port opened (`true`) or closed.
    pub fn record_connection(&self, opened: bool) {
        if opened {
            self.connections_open.inc();
        } else {
            self.connections_open.dec();
        }
    }

    /// A consumer released a version; `completed` when it was the last one.
    pub fn record_release(&self, completed: bool) {
        self.releases.inc();
        if completed {
            self.released_versions.inc();
        }
    }

    /// A version released by every consumer was deleted.
    pub fn record_release_delete(&self) {
        self.release_deletes.inc();
    }

    /// A connection was closed for being idle.
    pub fn record_idle_close(&self) {
        self.connections_idle_closed.inc();
    }

    /// Prometheus text exposition, with the cache and budget figures read at scrape time.
    pub fn render(&self, cache: &CacheStats, budget: &BudgetStats) -> String {
        self.request_memory.set(budget.request_memory_used);
        self.request_memory_limit.set(budget.request_memory_limit);
        self.uploads_active.set(budget.uploads_active);
        self.refused_memory.set(budget.refused_memory);
        self.refused_uploads.set(budget.refused_uploads);
        self.stalled_streams.set(budget.stalled_streams);
        self.cache_used.set(cache.memory_used);
        // Precision loss is irrelevant for a ratio.
        #[allow(clippy::cast_precision_loss)]
        self.cache_fill.set(if cache.memory_limit == 0 {
            0.0
        } else {
            cache.memory_used as f64 / cache.memory_limit as f64
        });
        self.cache_limit.set(cache.memory_limit);
        self.cache_tables.set(cache.datasets_cached);
        self.cache_hits.set(cache.hits);
        self.cache_misses.set(cache.misses);
        self.cache_evictions.set(cache.evictions);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
