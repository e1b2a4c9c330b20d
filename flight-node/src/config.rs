//! Command-line flags, each also readable from a `FLIGHT_*` environment variable.
//!
//! The flags are part of the public interface: the operator's StatefulSet and users'
//! scripts pass them. `flight-node` with no arguments runs the embedded default: gRPC on
//! `0.0.0.0:8815`, HTTP on `0.0.0.0:8816`, data under `./data`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::Parser;

use crate::storage::StorageConfig;

/// Storage-backed Apache Arrow Flight node.
#[derive(Debug, Clone, Parser)]
#[command(name = "flight-node", version, about, long_about = None)]
pub struct Config {
    /// gRPC (Arrow Flight) listen address.
    #[arg(long, env = "FLIGHT_LISTEN", default_value = "0.0.0.0:8815")]
    pub listen: SocketAddr,

    /// HTTP listen address: /healthz, /readyz, /metrics and CSV upload/export.
    #[arg(long, env = "FLIGHT_HTTP_LISTEN", default_value = "0.0.0.0:8816")]
    pub http_listen: SocketAddr,

    /// Where datasets are stored: s3://bucket/prefix, file:///path, file://./relative, memory://.
    #[arg(long, env = "FLIGHT_STORAGE_URL", default_value = "file://./data")]
    pub storage_url: String,

    /// S3 endpoint for MinIO or another S3-compatible server, e.g. http://minio:9000
    /// (AWS_ENDPOINT_URL or AWS_ENDPOINT when not given).
    #[arg(long, env = "FLIGHT_STORAGE_ENDPOINT")]
    pub storage_endpoint: Option<String>,

    /// S3 region (AWS_REGION is also honoured).
    #[arg(long, env = "FLIGHT_STORAGE_REGION")]
    pub storage_region: Option<String>,

    /// S3 access key id (AWS_ACCESS_KEY_ID is also honoured).
    #[arg(long, env = "FLIGHT_STORAGE_ACCESS_KEY_ID", hide_env_values = true)]
    pub storage_access_key_id: Option<String>,

    /// S3 secret access key (AWS_SECRET_ACCESS_KEY is also honoured).
    #[arg(long, env = "FLIGHT_STORAGE_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub storage_secret_access_key: Option<String>,

    /// Allow plain-HTTP storage endpoints (typical for MinIO inside a cluster).
    /// AWS_ALLOW_HTTP=true does the same.
    #[arg(long = "allow-http", env = "FLIGHT_STORAGE_ALLOW_HTTP")]
    pub allow_http: bool,

    /// At start, check that the storage works (a listing, and writing and deleting a scratch
    /// object) and exit naming the setting to fix if it does not: on or off.
    #[arg(long, env = "FLIGHT_STORAGE_CHECK", default_value = "on", value_parser = ["on", "off"])]
    pub storage_check: String,

    /// Memory for data, e.g. 512MiB or 4GiB: the cache of tables plus --request-memory
    /// (what requests hold beyond the cache). Leave room above it for the process itself.
    #[arg(long, env = "FLIGHT_MEMORY_LIMIT", default_value = "1GiB", value_parser = parse_size)]
    pub memory_limit: u64,

    /// YAML file of data contracts (see the `contract` module).
    #[arg(long, env = "FLIGHT_CONTRACTS_FILE")]
    pub contracts_file: Option<PathBuf>,

    /// YAML file of bearer tokens and the namespaces each may use. Without it, no auth.
    #[arg(long, env = "FLIGHT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// File holding the secret key that signs tickets (HMAC-SHA256). Without it, tickets
    /// are unsigned.
    #[arg(long, env = "FLIGHT_TICKET_KEY_FILE")]
    pub ticket_key_file: Option<PathBuf>,

    /// PEM certificate chain for TLS on the gRPC port.
    #[arg(long, env = "FLIGHT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS on the gRPC port.
    #[arg(long, env = "FLIGHT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// URI other nodes and clients use to reach this node, e.g.
    /// grpc://pool-0.pool-headless.ns.svc:8815. Used for placement.
    #[arg(long, env = "FLIGHT_ADVERTISE_URI")]
    pub advertise_uri: Option<String>,

    /// YAML file listing the pool's nodes (`peers: [uri, ...]`); re-read when it changes.
    #[arg(long, env = "FLIGHT_PEERS_FILE")]
    pub peers_file: Option<PathBuf>,

    /// Largest gRPC message accepted or sent.
    #[arg(long, env = "FLIGHT_MAX_MESSAGE_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub max_message_size: u64,

    /// Largest upload (Arrow bytes received) accepted per DoPut or HTTP upload.
    #[arg(long, env = "FLIGHT_MAX_UPLOAD_SIZE", default_value = "16GiB", value_parser = parse_size)]
    pub max_upload_size: u64,

    /// Most messages (record batches) accepted per upload.
    #[arg(long, env = "FLIGHT_MAX_UPLOAD_BATCHES", default_value_t = 1_000_000)]
    pub max_upload_batches: u64,

    /// Arrow bytes per Parquet part: bounds an upload's memory and sets the unit of
    /// parallel download.
    #[arg(long, env = "FLIGHT_PART_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub part_size: u64,

    /// TTL for uploads that name none, e.g. 24h. Without it such uploads never expire.
    #[arg(long, env = "FLIGHT_DEFAULT_TTL", value_parser = parse_duration)]
    pub default_ttl: Option<Duration>,

    /// Objects of uploads that no version references are removed once nothing was written
    /// to them for this long (an upload in progress refreshes a marker four times per grace
    /// period). Every node and operator sharing one storage must use the same value.
    #[arg(long, env = "FLIGHT_ORPHAN_GRACE", default_value = "6h", value_parser = parse_duration)]
    pub orphan_grace: Duration,

    /// A storage prefix outside every namespace that the `load` action may read, such as a
    /// shared landing area (`raw/`); repeat the flag or separate with commas. Each
    /// namespace's own prefix (`<namespace>/`) is always allowed; nothing else is.
    #[arg(
        long = "load-source-prefix",
        env = "FLIGHT_LOAD_SOURCE_PREFIXES",
        value_delimiter = ','
    )]
    pub load_source_prefixes: Vec<String>,

    /// An upload (DoPut or HTTP CSV) that sends nothing for this long is abandoned: refused
    /// with DEADLINE_EXCEEDED, nothing stored.
    #[arg(long, env = "FLIGHT_UPLOAD_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub upload_idle_timeout: Duration,

    /// The part of --memory-limit for what requests hold beyond the cache: versions being
    /// loaded from storage, parts a cold read or export is sending, upload batches until
    /// stored. The cache gets the rest. Default: a quarter of --memory-limit.
    #[arg(long, env = "FLIGHT_REQUEST_MEMORY", value_parser = parse_size)]
    pub request_memory: Option<u64>,

    /// How long a read waits for request memory before it is refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "FLIGHT_BUDGET_WAIT", default_value = "10s", value_parser = parse_duration)]
    pub budget_wait: Duration,

    /// Uploads (DoPut, HTTP CSV, load) one node runs at once; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "FLIGHT_MAX_UPLOADS", default_value_t = 32)]
    pub max_uploads: usize,

    /// Uploads one token runs at once on a node (without authentication, only the node's cap
    /// applies).
    #[arg(long, env = "FLIGHT_MAX_UPLOADS_PER_TOKEN", default_value_t = 8)]
    pub max_uploads_per_token: usize,

    /// A DoGet or HTTP export whose client reads nothing for this long is ended and its
    /// memory released; the client gets DEADLINE_EXCEEDED.
    #[arg(long, env = "FLIGHT_STREAM_STALL_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub stream_stall_timeout: Duration,

    /// A connection with no request in progress for this long is closed (gRPC: GOAWAY; clients
    /// reconnect on their next call).
    #[arg(long, env = "FLIGHT_IDLE_CONNECTION_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_connection_timeout: Duration,

    /// HTTP/2 keepalive on the gRPC port: a ping after this long without traffic; a client
    /// that does not answer within --keepalive-timeout is disconnected.
    #[arg(long, env = "FLIGHT_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// How long a keepalive ping may go unanswered.
    #[arg(long, env = "FLIGHT_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// HTTP port: a request's headers must arrive within this long.
    #[arg(long, env = "FLIGHT_HTTP_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// A version released by all its consumers stays readable this long, then is deleted
    /// (see the `release` action).
    #[arg(long, env = "FLIGHT_RELEASE_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub release_grace: Duration,

    /// Once both ports are bound, write them here as JSON (`{"grpc": 8815, "http": 8816}`),
    /// so that whoever started the node with port 0 learns the ports it got.
    #[arg(long, env = "FLIGHT_PORTS_FILE")]
    pub ports_file: Option<PathBuf>,

    /// Log format: text or json.
    #[arg(long, env = "FLIGHT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    pub fn storage(&self) -> StorageConfig {
        StorageConfig {
            url: self.storage_url.clone(),
            endpoint: self.storage_endpoint.clone(),
            region: self.storage_region.clone(),
            access_key_id: self.storage_access_key_id.clone(),
            secret_access_key: self.storage_secret_access_key.clone(),
            allow_http: self.allow_http,
        }
    }

    /// Request memory: `--request-memory`, or a quarter of `--memory-limit`.
    pub fn request_memory(&self) -> u64 {
        self.request_memory.unwrap_or(self.memory_limit / 4)
    }

    /// The cache's share of `--memory-limit`: what request memory leaves.
    pub fn cache_limit(&self) -> std::result::Result<u64, String> {
        let request = self.request_memory();
        if request >= self.memory_limit {
            return Err(format!(
                "--request-memory ({request} bytes) must be smaller than --memory-limit ({} bytes): the cache gets the difference",
                self.memory_limit
            ));
        }
        Ok(self.memory_limit - request)
    }

    /// Parses flags only, ignoring the environment.
    pub fn parse_without_env<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let command = Self::command().mut_args(|a| a.env(None::<&'static str>));
        Self::from_arg_matches(&command.try_get_matches_from(args)?)
    }

    /// Defaults for tests: loopback on ephemeral ports, the given storage URL. Hermetic:
    /// the `FLIGHT_*` environment of whoever runs the tests is not read.
    pub fn for_tests(storage_url: &str) -> Self {
        let mut c = Self::parse_without_env(["flight-node"])
            .unwrap_or_else(|e| panic!("the defaults parse: {e}"));
        c.listen = ([127, 0, 0, 1], 0).into();
        c.http_listen = ([127, 0, 0, 1], 0).into();
        c.storage_url = storage_url.to_string();
        c
    }
}

/// Parses sizes such as `64MiB`, `4GiB`, `1G` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?}: {e} (examples: 512MiB, 4GiB)"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::ttl::parse_ttl(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_configs_ignore_the_environment() {
        // A variable no other test sets; read by the flag unless for_tests is hermetic.
        std::env::set_var("FLIGHT_TICKET_KEY_FILE", "/nonexistent/key");
        let c = Config::for_tests("memory://");
        assert_eq!(c.ticket_key_file, None);
        let parsed = Config::parse_from(["flight-node"]);
        std::env::remove_var("FLIGHT_TICKET_KEY_FILE");
        assert_eq!(
            parsed.ticket_key_file.as_deref(),
            Some(std::path::Path::new("/nonexistent/key"))
        );
    }

    #[test]
    fn no_arguments_is_the_embedded_default() {
        let c = Config::parse_without_env(["flight-node"]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8815");
        assert_eq!(c.http_listen.to_string(), "0.0.0.0:8816");
        assert_eq!(c.storage_url, "file://./data");
        assert_eq!(c.memory_limit, 1 << 30);
        assert_eq!(c.max_message_size, 64 << 20);
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        let c = Config::try_parse_from([
            "flight-node",
            "--default-ttl",
            "6h",
            "--memory-limit",
            "2GiB",
        ])
        .unwrap();
        assert_eq!(c.default_ttl, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(c.memory_limit, 2 << 30);
        assert!(Config::try_parse_from(["flight-node", "--default-ttl", "-5m"]).is_err());
        assert!(Config::try_parse_from(["flight-node", "--tls-cert", "x"]).is_err());
    }
}
