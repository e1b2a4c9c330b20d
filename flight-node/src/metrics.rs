//! Prometheus metrics, served on the HTTP port at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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
        Self {
            registry,
            requests,
            upload_rows,
            upload_bytes,
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

    pub fn record_upload(&self, rows: u64, bytes: u64) {
        self.upload_rows.inc_by(rows);
        self.upload_bytes.inc_by(bytes);
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

    /// Prometheus text exposition, with the cache figures read at scrape time.
    pub fn render(&self, cache: &CacheStats) -> String {
        self.cache_used.set(cache.memory_used);
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
