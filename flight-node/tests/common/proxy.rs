//! A fault-injection TCP proxy for HTTP/1.1, to put between a node and its S3 server.
//!
//! Traffic passes through unchanged until a test arms a fault for the nth request that
//! matches a predicate; the fault then fires once. Fault choices can be drawn from a
//! [`Seed`] that is printed, so a failing run can be repeated with the same choices.
//!
//! ```ignore
//! let proxy = FaultProxy::start("127.0.0.1:9000").await; // the S3 server
//! // ... give the client `proxy.endpoint()` as its S3 endpoint ...
//! let mut seed = Seed::from_env_or_random("FAULT_SEED");
//! proxy.arm(
//!     |r| r.method == "PUT" && r.path.ends_with(".manifest.json"),
//!     seed.pick(0..3),
//!     Fault::ResetAfterResponse,
//! );
//! ```
//!
//! Per client connection the proxy opens one upstream connection. Requests are read from
//! the client (head, then a body framed by Content-Length or chunked transfer-encoding) and
//! forwarded as they arrive; the upstream's bytes are copied back. HTTP clients such as
//! reqwest do not pipeline, so the first bytes the upstream sends after a request was
//! forwarded whole are the start of that request's response: that is where response
//! faults apply. (A server answering before it has read the whole request, or a client
//! sending `Expect: 100-continue`, would break that assumption.)
//!
//! object_store (0.14) retries a request that failed on a reset or a timeout if it is
//! idempotent (GET, HEAD, an overwriting PUT), up to 10 times by default: such a fault
//! shows as a retry, which after `ResetAfterResponse` the server sees twice. A create-only
//! PUT (`PutMode::Create`) is not retried and returns the error. With
//! `RetryConfig { max_retries: 0, .. }` every fault returns an error.

use std::fmt;
use std::future::pending;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// What happens to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward the request, hold the response for this long once it starts to arrive,
    /// then deliver it.
    DelayResponse(Duration),
    /// Forward the request whole, wait until the server has answered (its first bytes
    /// arrive), then reset the client's connection (RST) without delivering the answer:
    /// the request took effect but the client never learns it.
    ResetAfterResponse,
    /// Reset the client's connection once the request head has arrived, before forwarding
    /// anything: the request never reaches the server.
    ResetBeforeRequest,
    /// Forward the request and never answer: the connection stays open and silent until
    /// the proxy is dropped.
    Blackhole,
}

/// A request as the proxy saw it, for matching faults to requests.
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: String,
    /// The request target up to `?`, as sent (percent-encoded), e.g. `/bucket/a/b.parquet`.
    pub path: String,
    /// The request target after `?`, empty if none, e.g. `uploads` or `partNumber=1&uploadId=x`.
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for RequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// A TCP proxy on 127.0.0.1 in front of one upstream address. Dropping it aborts its
/// tasks, which closes the listener and every connection through it (at the runtime's
/// next turn).
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on an ephemeral port of 127.0.0.1 and relays every connection to `upstream`
    /// (a `SocketAddr`, or a `"host:port"` resolved once, now).
    pub async fn start(upstream: impl ToSocketAddrs) -> FaultProxy {
        let upstream = upstream
            .to_socket_addrs()
            .expect("fault proxy: resolve the upstream address")
            .next()
            .expect("fault proxy: the upstream address resolves to nothing");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("fault proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fault proxy: local address");
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept(listener, upstream, shared.clone()));
        FaultProxy { addr, shared, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, to use as the client's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Arms `fault` for the `nth` (0-based) request from now on for which `matches` is
    /// true. Each armed fault fires once. If several would fire on the same request, the
    /// one armed first does and the others stay armed for the next request they match.
    pub fn arm(
        &self,
        matches: impl Fn(&RequestHead) -> bool + Send + Sync + 'static,
        nth: usize,
        fault: Fault,
    ) {
        lock(&self.shared.rules).push(Rule {
            matches: Box::new(matches),
            skip: nth,
            fault: Some(fault),
        });
    }

    /// Forgets every armed fault that has not fired yet.
    #[allow(dead_code)] // the proxy's own tests include this file without using it
    pub fn disarm_all(&self) {
        lock(&self.shared.rules).clear();
    }

    /// How many armed faults have fired (counted when their request arrives).
    pub fn fired(&self) -> usize {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// `METHOD /path` of every request seen, in the order they arrived.
    pub fn log(&self) -> Vec<String> {
        lock(&self.shared.log).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the listener and the connection tasks.
        self.task.abort();
    }
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<String>>,
    fired: AtomicUsize,
}

struct Rule {
    matches: Box<dyn Fn(&RequestHead) -> bool + Send + Sync>,
    /// Matching requests still to let through before firing.
    skip: usize,
    /// `None` once fired.
    fault: Option<Fault>,
}

impl Shared {
    /// Records `head` and returns the fault that fires on it, if any.
    fn on_request(&self, head: &RequestHead) -> Option<Fault> {
        let index = {
            let mut log = lock(&self.log);
            log.push(head.to_string());
            log.len() - 1
        };
        let mut chosen = None;
        for rule in lock(&self.rules).iter_mut() {
            if rule.fault.is_none() || !(rule.matches)(head) {
                continue;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
            } else if chosen.is_none() {
                chosen = rule.fault.take();
            }
        }
        if let Some(fault) = &chosen {
            self.fired.fetch_add(1, Ordering::SeqCst);
            eprintln!("fault proxy: {fault:?} on request {index}: {head}");
        }
        chosen
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    // Dropped with this task when the proxy is dropped, which aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    connections.spawn(relay(client, upstream, shared.clone()));
                }
                Err(e) => {
                    eprintln!("fault proxy: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Relays one client connection. Any failure on either side, or a reset fault, ends it
/// with a reset of the client's connection.
async fn relay(mut client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let outcome = match TcpStream::connect(upstream).await {
        Ok(mut server) => {
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.split();
            let (server_read, server_write) = server.split();
            // Faults for the responses of requests forwarded whole, in request order.
            let (armed_tx, armed_rx) = mpsc::unbounded_channel();
            // Both directions run in this one task, so a fault is queued before the
            // response direction can next look at the upstream's bytes.
            tokio::try_join!(
                requests(client_read, server_write, &shared, armed_tx),
                responses(server_read, client_write, armed_rx),
            )
            .map(|_| ())
        }
        Err(e) => Err(e),
    };
    if outcome.is_err() {
        // An abortive close: dropping the socket now sends RST rather than FIN.
        let _ = client.set_zero_linger();
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "fault proxy: reset")
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("fault proxy: {what}"))
}

/// Client → upstream: forwards requests one at a time, consulting the armed faults.
async fn requests(
    client: ReadHalf<'_>,
    mut server: WriteHalf<'_>,
    shared: &Shared,
    armed: mpsc::UnboundedSender<Fault>,
) -> io::Result<()> {
    let mut client = BufReader::with_capacity(64 * 1024, client);
    while let Some(raw) = read_head(&mut client).await? {
        let head = parse_head(&raw)?;
        let body = body_of(&head)?;
        let fault = shared.on_request(&head);
        if fault == Some(Fault::ResetBeforeRequest) {
            return Err(reset());
        }
        server.write_all(&raw).await?;
        forward_body(&mut client, &mut server, body).await?;
        if let Some(fault) = fault {
            // The receiver lives as long as this function runs.
            let _ = armed.send(fault);
        }
    }
    // The client has finished sending: pass the half-close on.
    let _ = server.shutdown().await;
    Ok(())
}

/// Upstream → client: copies bytes, applying a queued fault to the first bytes that
/// arrive after it was queued.
async fn responses(
    mut server: ReadHalf<'_>,
    mut client: WriteHalf<'_>,
    mut armed: mpsc::UnboundedReceiver<Fault>,
) -> io::Result<()> {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = server.read(&mut buf).await?;
        if n == 0 {
            let _ = client.shutdown().await;
            return Ok(());
        }
        if let Ok(fault) = armed.try_recv() {
            match fault {
                Fault::DelayResponse(delay) => tokio::time::sleep(delay).await,
                Fault::ResetAfterResponse | Fault::ResetBeforeRequest => return Err(reset()),
                Fault::Blackhole => pending::<()>().await,
            }
        }
        client.write_all(&buf[..n]).await?;
    }
}

/// The bytes of the next request head up to and including its empty line, or `None` if
/// the client closed the connection between requests.
async fn read_head<R: AsyncBufRead + Unpin>(from: &mut R) -> io::Result<Option<Vec<u8>>> {
    const MAX_HEAD: usize = 1 << 20;
    let mut raw = Vec::new();
    // Empty lines before the request line are allowed (and forwarded as they came).
    let mut started = false;
    loop {
        let start = raw.len();
        if from.read_until(b'\n', &mut raw).await? == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(invalid("connection closed inside a request head"))
            };
        }
        let empty = matches!(&raw[start..], b"\r\n" | b"\n");
        if empty && started {
            return Ok(Some(raw));
        }
        started |= !empty;
        if raw.len() > MAX_HEAD {
            return Err(invalid("request head larger than 1 MiB"));
        }
    }
}

fn parse_head(raw: &[u8]) -> io::Result<RequestHead> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.lines().skip_while(|l| l.is_empty());
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(invalid(&format!("bad request line {request_line:?}")));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(RequestHead {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
    })
}

enum Body {
    Length(u64),
    Chunked,
}

fn body_of(head: &RequestHead) -> io::Result<Body> {
    if let Some(te) = head.header("transfer-encoding") {
        let last = te.rsplit(',').next().unwrap_or_default().trim();
        return if last.eq_ignore_ascii_case("chunked") {
            Ok(Body::Chunked)
        } else {
            Err(invalid(&format!(
                "transfer-encoding {te:?} without chunked"
            )))
        };
    }
    match head.header("content-length") {
        Some(v) => v
            .parse()
            .map(Body::Length)
            .map_err(|_| invalid(&format!("bad content-length {v:?}"))),
        None => Ok(Body::Length(0)),
    }
}

async fn forward_body<R, W>(from: &mut R, to: &mut W, body: Body) -> io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match body {
        Body::Length(n) => forward_exact(from, to, n).await,
        Body::Chunked => loop {
            let line = forward_line(from, to).await?;
            let size = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.split(';').next())
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .ok_or_else(|| invalid("bad chunk size line"))?;
            if size == 0 {
                // Trailer fields, then an empty line.
                while !matches!(&forward_line(from, to).await?[..], b"\r\n" | b"\n") {}
                return Ok(());
            }
            // The chunk's data and the CRLF after it.
            forward_exact(from, to, size.saturating_add(2)).await?;
        },
    }
}

async fn forward_exact<R, W>(from: &mut R, to: &mut W, n: u64) -> io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let copied = tokio::io::copy_buf(&mut from.take(n), to).await?;
    if copied < n {
        return Err(invalid("connection closed inside a request body"));
    }
    Ok(())
}

async fn forward_line<R, W>(from: &mut R, to: &mut W) -> io::Result<Vec<u8>>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut line = Vec::new();
    from.read_until(b'\n', &mut line).await?;
    if !line.ends_with(b"\n") {
        return Err(invalid("connection closed inside a chunked body"));
    }
    to.write_all(&line).await?;
    Ok(line)
}

/// Seeded choices for fault tests. The seed is printed when it is made, so a failing
/// run's output says how to repeat its choices.
pub struct Seed {
    seed: u64,
    state: u64,
}

impl Seed {
    pub fn new(seed: u64) -> Seed {
        Seed { seed, state: seed }
    }

    /// The seed in environment variable `var` if set, else a random one; prints
    /// `fault seed: N (rerun with VAR=N)`.
    pub fn from_env_or_random(var: &str) -> Seed {
        let seed = match std::env::var(var) {
            Ok(v) => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{var}={v:?} is not a seed (an unsigned integer)")),
            Err(_) => RandomState::new().hash_one(SystemTime::now()),
        };
        eprintln!("fault seed: {seed} (rerun with {var}={seed})");
        Seed::new(seed)
    }

    pub fn value(&self) -> u64 {
        self.seed
    }

    /// A number in `range`, which must not be empty.
    pub fn pick(&mut self, range: Range<usize>) -> usize {
        assert!(
            !range.is_empty(),
            "Seed::pick from the empty range {range:?}"
        );
        let span = (range.end - range.start) as u128;
        range.start + ((u128::from(self.next_u64()) * span) >> 64) as usize
    }

    /// One of `items`, which must not be empty.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.pick(0..items.len())]
    }

    /// SplitMix64.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
