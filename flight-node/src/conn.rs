//! Connections of the gRPC port: idle ones are closed.
//!
//! A connection with no request in progress for `--idle-connection-timeout` is closed,
//! including one that never sent a request; clients open a new one on their next call
//! (as with gRPC's `MAX_CONNECTION_IDLE`). HTTP/2 keepalive pings (configured on the
//! server) find dead peers; this finds live ones that only hold memory.
//!
//! [`IdleIo`] wraps each accepted socket and shares a [`Conn`] with the requests it carries
//! (through the connection info tonic puts into every request); [`TrackLayer`] counts each
//! request as active until its response body is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::node::Node;

/// One connection's requests in progress, and since when it has had none.
#[derive(Debug)]
pub struct Conn {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// The connection's reader, woken when its last request ends (to arm the timer).
    waker: AtomicWaker,
}

impl Conn {
    fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            waker: AtomicWaker::new(),
        }
    }

    fn begin(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        Active(Arc::clone(self))
    }
}

/// A request in progress; the connection is idle again once every one is dropped.
#[derive(Debug)]
pub struct Active(Arc<Conn>);

impl Drop for Active {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.waker.wake();
        }
    }
}

/// Connection info of an [`IdleIo`]: tonic's TCP info plus the shared [`Conn`].
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    conn: Arc<Conn>,
}

/// An accepted socket that fails its next read once idle for longer than the timeout,
/// which makes the server close it.
pub struct IdleIo {
    inner: TcpStream,
    conn: Arc<Conn>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    node: Arc<Node>,
}

impl IdleIo {
    pub fn new(inner: TcpStream, idle: Duration, node: Arc<Node>) -> Self {
        node.metrics().record_connection(true);
        Self {
            inner,
            conn: Arc::new(Conn::new()),
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            node,
        }
    }
}

impl Drop for IdleIo {
    fn drop(&mut self) {
        self.node.metrics().record_connection(false);
    }
}

impl Connected for IdleIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.inner.connect_info(),
            conn: Arc::clone(&self.conn),
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.conn.waker.register(cx.waker());
        if this.conn.active.load(Ordering::Acquire) == 0 {
            let since = *this
                .conn
                .idle_since
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let deadline = since + this.idle;
            if this.timer.deadline() != deadline {
                this.timer.as_mut().reset(deadline);
            }
            if this.timer.as_mut().poll(cx).is_ready() {
                this.node.metrics().record_idle_close();
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection idle for --idle-connection-timeout",
                )));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts each request of a connection as active until its response body is dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackLayer;

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Track<S> {
    inner: S,
}

fn conn_of<B>(req: &http::Request<B>) -> Option<Arc<Conn>> {
    let ext = req.extensions();
    ext.get::<ConnInfo>()
        .or_else(|| {
            ext.get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
                .map(|t| t.get_ref())
        })
        .map(|i| Arc::clone(&i.conn))
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Track<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let active = conn_of(&req).map(|c| c.begin());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(match active {
                Some(active) => resp.map(|b| {
                    tonic::body::Body::new(Tracked {
                        inner: b,
                        _active: active,
                    })
                }),
                None => resp,
            })
        })
    }
}

/// A response body that keeps its request counted as active.
struct Tracked {
    inner: tonic::body::Body,
    _active: Active,
}

impl Body for Tracked {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
