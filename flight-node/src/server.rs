//! Starts the gRPC and HTTP servers of a node and stops them gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::auth::Auth;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::service::FlightNodeService;

/// How often the peers file is re-read and orphans are looked for.
const PEERS_RELOAD: Duration = Duration::from_secs(10);
const ORPHAN_SWEEP: Duration = Duration::from_secs(600);
/// HTTP/2 flow-control windows: large enough that a multi-megabyte Flight message is never
/// stalled waiting for window updates on loopback or a pod network.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;

/// A node serving on bound sockets.
pub struct RunningNode {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub node: Arc<Node>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<Result<()>>>,
}

impl RunningNode {
    /// Stops accepting, lets in-flight calls finish, and waits for the servers to end.
    pub async fn shutdown(mut self) -> Result<()> {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            t.await
                .map_err(|e| Error::Internal(format!("server task failed: {e}")))??;
        }
        Ok(())
    }

    /// The gRPC URI clients use (`grpc://127.0.0.1:port`).
    pub fn grpc_uri(&self) -> String {
        format!("grpc://{}", self.grpc_addr)
    }
}

/// Binds both ports and starts serving in background tasks.
pub async fn start(config: Config) -> Result<RunningNode> {
    start_with_clock(config, Arc::new(crate::clock::SystemClock)).await
}

/// [`start`] with another clock for expiry, leases and sweeps (tests set the time instead
/// of sleeping).
pub async fn start_with_clock(
    config: Config,
    clock: Arc<dyn crate::clock::Clock>,
) -> Result<RunningNode> {
    let auth = Arc::new(match &config.token_file {
        Some(p) => Auth::from_file(p)?,
        None => Auth::disabled(),
    });
    let node = Arc::new(Node::from_config(&config)?.with_clock(clock));
    if config.storage_check == "on" {
        node.storage().check(true).await?;
    }
    let mut peers = crate::fanout::Peers::default();
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            // Several TLS back-ends are linked in; choose one for the process. An error only
            // means one was installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let read = |p: &std::path::Path| {
                std::fs::read(p)
                    .map_err(|e| Error::Config(format!("failed to read {}: {e}", p.display())))
            };
            let cert = read(cert)?;
            // Peers present the pool's certificate too: it is what this node trusts.
            peers.ca_pem = Some(cert.clone());
            Some(ServerTlsConfig::new().identity(Identity::from_pem(cert, read(key)?)))
        }
        _ => None,
    };
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Config(format!("failed to bind the {what} port {addr}: {e}")))
    };
    let grpc = bind(config.listen, "gRPC").await?;
    let http = bind(config.http_listen, "HTTP").await?;
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    if let Some(path) = &config.ports_file {
        write_ports(path, grpc_addr, http_addr)?;
    }
    let shutdown = CancellationToken::new();

    let max_message = usize::try_from(config.max_message_size).unwrap_or(usize::MAX);
    let flight = FlightNodeService::new(Arc::clone(&node), Arc::clone(&auth)).with_peers(peers);
    let grpc_service = FlightServiceServer::new(flight.clone())
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    // DoGet is answered by the zero-copy path; every other method by tonic.
    let service = crate::zerocopy::FlightRouter::new(grpc_service, flight);
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(1 << 20)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .layer(crate::conn::TrackLayer)
        .layer(crate::request_metrics::RequestMetricsLayer::grpc(
            Arc::clone(&node),
        ))
        .layer(crate::cancel::layer());
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| Error::Config(format!("invalid TLS certificate or key: {e}")))?;
    }
    let incoming = {
        let node = Arc::clone(&node);
        let idle = config.idle_connection_timeout;
        tokio_stream::wrappers::TcpListenerStream::new(grpc).map(move |accepted| {
            accepted.map(|socket| {
                let _ = socket.set_nodelay(true);
                crate::conn::IdleIo::new(socket, idle, Arc::clone(&node))
            })
        })
    };
    let grpc_task = tokio::spawn({
        let stop = shutdown.clone();
        async move {
            builder
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
                .map_err(|e| Error::Internal(format!("gRPC server failed: {e}")))
        }
    });
    let app = crate::http::router(Arc::clone(&node), Arc::clone(&auth));
    let http_task = tokio::spawn(serve_http(
        http,
        app,
        config.http_header_timeout,
        shutdown.clone(),
    ));
    let housekeeping = tokio::spawn(housekeeping(
        Arc::clone(&node),
        config.orphan_grace,
        shutdown.clone(),
    ));
    tracing::info!(%grpc_addr, %http_addr, storage = node.storage().url(), "flight node serving");
    Ok(RunningNode {
        grpc_addr,
        http_addr,
        node,
        shutdown,
        tasks: vec![grpc_task, http_task, housekeeping],
    })
}

/// Writes the bound ports for whoever started the node (written aside, then renamed, so a
/// reader never sees half a file).
fn write_ports(path: &std::path::Path, grpc: SocketAddr, http: SocketAddr) -> Result<()> {
    let body = serde_json::json!({ "grpc": grpc.port(), "http": http.port() }).to_string();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            Error::Config(format!(
                "failed to write the ports file {}: {e}",
                path.display()
            ))
        })
}

/// Runs a node until `signal` resolves.
pub async fn run(config: Config, signal: impl Future<Output = ()>) -> Result<()> {
    let running = start(config).await?;
    signal.await;
    tracing::info!("shutting down");
    running.shutdown().await
}

/// Serves the HTTP port: HTTP/1 (headers within `header_timeout`) and HTTP/2, until `stop`;
/// then waits for requests in progress.
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    stop: CancellationToken,
) -> Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let socket = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then accept again.
                    tracing::warn!(error = %e, "failed to accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(socket), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Background upkeep: re-read the peers file, sweep orphaned parts.
async fn housekeeping(node: Arc<Node>, grace: Duration, stop: CancellationToken) -> Result<()> {
    let mut peers = tokio::time::interval(PEERS_RELOAD);
    let mut sweep = tokio::time::interval(ORPHAN_SWEEP);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = peers.tick() => {
                if let Err(e) = node.placement().reload() {
                    tracing::warn!(error = %e, "failed to reload the peers file; keeping the previous peers");
                }
            }
            _ = sweep.tick() => {
                match node.versions().sweep(grace, node.now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "removed orphaned part files"),
                    Err(e) => tracing::warn!(error = %e, "orphan sweep failed"),
                }
            }
        }
    }
}
