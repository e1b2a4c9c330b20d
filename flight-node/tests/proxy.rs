//! The fault-injection proxy of `common/proxy.rs`, against a tiny in-test HTTP/1.1 object
//! server with keep-alive, driven by a raw HTTP/1.1 client and by object_store's S3 client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// Only the proxy: this test does not need the node fixture of `common/mod.rs`.
#[path = "common/proxy.rs"]
mod proxy;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStoreExt, RetryConfig};
use proxy::{Fault, FaultProxy, RequestHead, Seed};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

/// One HTTP/1.1 message as read off a connection.
struct Message {
    start_line: String,
    headers: Vec<(String, String)>,
    /// Every byte of the message as it came.
    raw: Vec<u8>,
    /// The body, de-chunked.
    body: Vec<u8>,
}

impl Message {
    fn status(&self) -> u16 {
        self.start_line.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        let found = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name));
        found.map(|(_, v)| v.as_str())
    }
}

async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, raw: &mut Vec<u8>) -> io::Result<String> {
    let start = raw.len();
    if r.read_until(b'\n', raw).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(String::from_utf8_lossy(&raw[start..])
        .trim_end()
        .to_string())
}

/// The next message, or `None` if the peer closed the connection between messages.
/// Bodies are framed by Content-Length or chunked transfer-encoding.
async fn read_message<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Message>> {
    let mut raw = Vec::new();
    if r.fill_buf().await?.is_empty() {
        return Ok(None);
    }
    let start_line = read_line(r, &mut raw).await?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r, &mut raw).await?;
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').unwrap();
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let mut message = Message {
        start_line,
        headers,
        raw,
        body: Vec::new(),
    };
    if message.header("transfer-encoding") == Some("chunked") {
        loop {
            let line = read_line(r, &mut message.raw).await?;
            let size = usize::from_str_radix(line.split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                while !read_line(r, &mut message.raw).await?.is_empty() {}
                break;
            }
            let chunk = read_exact(r, &mut message.raw, size + 2).await?;
            message.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = message.header("content-length") {
        let n = n.parse().unwrap();
        message.body = read_exact(r, &mut message.raw, n).await?;
    }
    Ok(Some(message))
}

async fn read_exact<R: AsyncBufRead + Unpin>(
    r: &mut R,
    raw: &mut Vec<u8>,
    n: usize,
) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; n];
    r.read_exact(&mut bytes).await?;
    raw.extend_from_slice(&bytes);
    Ok(bytes)
}

fn request_bytes(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A request the origin received.
#[derive(Clone, Debug)]
struct Seen {
    /// Which connection (in accept order) it came on.
    connection: usize,
    method: String,
    path: String,
    raw: Vec<u8>,
}

/// A tiny object server: PUT stores a body under its path, GET returns it (404 if absent),
/// any other method answers `METHOD target`. Keeps connections alive.
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let objects = Arc::new(Mutex::new(HashMap::new()));
        let recorder = seen.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            for connection in 0.. {
                let (stream, _) = listener.accept().await.unwrap();
                connections.spawn(serve(stream, connection, recorder.clone(), objects.clone()));
            }
        });
        Origin { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn seen_paths(&self) -> Vec<String> {
        let seen = self.seen();
        seen.iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }
}

async fn serve(
    stream: TcpStream,
    connection: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
    objects: Arc<Mutex<HashMap<String, Vec<u8>>>>,
) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    while let Ok(Some(request)) = read_message(&mut r).await {
        let mut parts = request.start_line.split(' ');
        let (method, target) = (parts.next().unwrap(), parts.next().unwrap());
        let path = target.split('?').next().unwrap();
        seen.lock().unwrap().push(Seen {
            connection,
            method: method.to_string(),
            path: path.to_string(),
            raw: request.raw.clone(),
        });
        let stored = objects.lock().unwrap().get(path).cloned();
        let (status, body) = match (method, stored) {
            ("PUT", _) => {
                objects
                    .lock()
                    .unwrap()
                    .insert(path.to_string(), request.body);
                ("200 OK", Vec::new())
            }
            ("GET", Some(body)) => ("200 OK", body),
            ("GET", None) => ("404 Not Found", Vec::new()),
            _ => ("200 OK", format!("{method} {target}").into_bytes()),
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"{}\"\r\n\
             Last-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n",
            body.len(),
            body.len(),
        )
        .into_bytes();
        response.extend_from_slice(&body);
        if w.write_all(&response).await.is_err() {
            return;
        }
    }
}

/// A raw HTTP/1.1 client on one keep-alive connection.
struct Client {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes).await
    }

    async fn response(&mut self) -> io::Result<Message> {
        read_message(&mut self.r)
            .await?
            .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }

    async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<Message> {
        self.send(&request_bytes(method, path, body)).await?;
        self.response().await
    }
}

fn big_body() -> Vec<u8> {
    (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect()
}

async fn origin_and_proxy() -> (Origin, FaultProxy) {
    let origin = Origin::start().await;
    let proxy = FaultProxy::start(origin.addr).await;
    (origin, proxy)
}

#[tokio::test]
async fn unarmed_requests_pass_through_unchanged_on_one_keep_alive_connection() {
    let (origin, proxy) = origin_and_proxy().await;
    assert_eq!(proxy.endpoint(), format!("http://{}", proxy.addr()));
    let big = big_body();
    let requests = [
        request_bytes("PUT", "/bucket/big.parquet", &big),
        request_bytes("GET", "/bucket/big.parquet", b""),
        request_bytes("POST", "/bucket/x?uploads", b"hello"),
        request_bytes("GET", "/bucket/missing", b""),
    ];
    let mut client = Client::connect(proxy.addr()).await;
    let mut responses = Vec::new();
    for request in &requests {
        client.send(request).await.unwrap();
        responses.push(client.response().await.unwrap());
    }

    assert_eq!(responses[0].status(), 200);
    assert_eq!(responses[1].status(), 200);
    assert!(responses[1].body == big, "the large body came back changed");
    assert_eq!(responses[2].body, b"POST /bucket/x?uploads");
    assert_eq!(responses[3].status(), 404);

    let seen = origin.seen();
    assert_eq!(seen.len(), requests.len());
    for (seen, sent) in seen.iter().zip(&requests) {
        assert_eq!(
            seen.connection, 0,
            "all requests on one upstream connection"
        );
        assert!(&seen.raw == sent, "the request bytes changed on the way");
    }
    assert_eq!(
        proxy.log(),
        [
            "PUT /bucket/big.parquet",
            "GET /bucket/big.parquet",
            "POST /bucket/x",
            "GET /bucket/missing"
        ]
    );
    assert_eq!(proxy.fired(), 0);
}

#[tokio::test]
async fn chunked_request_bodies_are_forwarded_unchanged() {
    let (origin, proxy) = origin_and_proxy().await;
    let chunked = b"PUT /bucket/c HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n";
    // A reset armed for the next GET shows the proxy found where the chunked body ended.
    proxy.arm(|r| r.method == "GET", 0, Fault::ResetBeforeRequest);
    let mut client = Client::connect(proxy.addr()).await;
    client.send(chunked).await.unwrap();
    assert_eq!(client.response().await.unwrap().status(), 200);
    assert!(client.request("GET", "/bucket/c", b"").await.is_err());
    let response = Client::connect(proxy.addr())
        .await
        .request("GET", "/bucket/c", b"")
        .await
        .unwrap();
    assert_eq!(response.body, b"hello world");
    assert_eq!(origin.seen()[0].raw, chunked);
    assert_eq!(
        proxy.log(),
        ["PUT /bucket/c", "GET /bucket/c", "GET /bucket/c"]
    );
}

#[tokio::test]
async fn delay_response_delivers_the_answer_late() {
    let (_origin, proxy) = origin_and_proxy().await;
    let delay = Duration::from_millis(300);
    proxy.arm(|r| r.method == "GET", 0, Fault::DelayResponse(delay));
    let mut client = Client::connect(proxy.addr()).await;
    client.request("PUT", "/bucket/k", b"v").await.unwrap();
    let started = Instant::now();
    let response = client.request("GET", "/bucket/k", b"").await.unwrap();
    assert!(
        started.elapsed() >= delay,
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(response.body, b"v");
    assert_eq!(proxy.fired(), 1);
    // The connection carries on normally.
    client.request("GET", "/bucket/k", b"").await.unwrap();
}

#[tokio::test]
async fn reset_after_response_lets_the_request_take_effect_unseen() {
    let (origin, proxy) = origin_and_proxy().await;
    proxy.arm(
        |r| r.method == "PUT" && r.path.ends_with(".manifest.json"),
        0,
        Fault::ResetAfterResponse,
    );
    let mut client = Client::connect(proxy.addr()).await;
    let err = client
        .request("PUT", "/bucket/v1.manifest.json", b"{}")
        .await
        .err()
        .expect("the client must not get the answer");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(origin.seen_paths(), ["PUT /bucket/v1.manifest.json"]);
    let mut client = Client::connect(proxy.addr()).await;
    let response = client
        .request("GET", "/bucket/v1.manifest.json", b"")
        .await
        .unwrap();
    assert_eq!(response.body, b"{}", "the PUT took effect");
    assert_eq!(proxy.fired(), 1);
}

#[tokio::test]
async fn reset_before_request_keeps_the_request_from_the_server() {
    let (origin, proxy) = origin_and_proxy().await;
    proxy.arm(|r| r.method == "PUT", 0, Fault::ResetBeforeRequest);
    let mut client = Client::connect(proxy.addr()).await;
    let err = client
        .request("PUT", "/bucket/k", b"v")
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let mut client = Client::connect(proxy.addr()).await;
    let response = client.request("GET", "/bucket/k", b"").await.unwrap();
    assert_eq!(response.status(), 404, "the PUT must not have taken effect");
    assert_eq!(origin.seen_paths(), ["GET /bucket/k"]);
    assert_eq!(proxy.log(), ["PUT /bucket/k", "GET /bucket/k"]);
}

#[tokio::test]
async fn blackhole_stays_silent_until_the_proxy_is_dropped() {
    let (origin, proxy) = origin_and_proxy().await;
    proxy.arm(|r| r.method == "GET", 0, Fault::Blackhole);
    let mut client = Client::connect(proxy.addr()).await;
    client.request("PUT", "/bucket/k", b"v").await.unwrap();
    client
        .send(&request_bytes("GET", "/bucket/k", b""))
        .await
        .unwrap();
    let waited = timeout(Duration::from_millis(500), client.response()).await;
    assert!(waited.is_err(), "the blackholed request was answered");
    assert_eq!(origin.seen_paths(), ["PUT /bucket/k", "GET /bucket/k"]);

    drop(proxy);
    let after_drop = timeout(Duration::from_secs(10), client.response()).await;
    assert!(
        matches!(after_drop, Ok(Err(_))),
        "dropping the proxy must close the connection"
    );
}

#[tokio::test]
async fn faults_fire_on_the_nth_matching_request_once() {
    let (origin, proxy) = origin_and_proxy().await;
    let is_put = |r: &RequestHead| r.method == "PUT";
    proxy.arm(is_put, 2, Fault::ResetAfterResponse);
    proxy.arm(
        |r| r.method == "GET" && r.header("host") == Some("test") && r.query.is_empty(),
        1,
        Fault::ResetBeforeRequest,
    );
    // A rule armed after another fires on a later match when both would fire at once.
    proxy.arm(is_put, 2, Fault::DelayResponse(Duration::from_millis(1)));

    let sequence = [
        ("PUT", "/bucket/p0"),
        ("GET", "/bucket/g0"),
        ("GET", "/bucket/g1?x=1"),
        ("GET", "/bucket/g2"), // second plain GET: reset before
        ("PUT", "/bucket/p1"),
        ("PUT", "/bucket/p2"), // third PUT: reset after
        ("PUT", "/bucket/p3"), // delayed
        ("PUT", "/bucket/p4"),
        ("GET", "/bucket/g3"),
    ];
    let mut client = Client::connect(proxy.addr()).await;
    let mut failed = Vec::new();
    for (method, path) in sequence {
        let ok = client.request(method, path, b"").await.is_ok();
        if !ok {
            failed.push(path);
            client = Client::connect(proxy.addr()).await;
        }
    }
    assert_eq!(failed, ["/bucket/g2", "/bucket/p2"]);
    assert_eq!(proxy.fired(), 3);
    let all: Vec<String> = sequence
        .iter()
        .map(|(m, p)| format!("{m} {}", p.split('?').next().unwrap()))
        .collect();
    assert_eq!(proxy.log(), all);
    let mut reached = all.clone();
    reached.retain(|r| r != "GET /bucket/g2");
    assert_eq!(origin.seen_paths(), reached);
    let headers = &origin.seen()[0].raw;
    assert!(headers.starts_with(b"PUT /bucket/p0 HTTP/1.1\r\n"));
}

#[tokio::test]
async fn object_store_client_sees_each_fault() {
    let (origin, proxy) = origin_and_proxy().await;
    let store = AmazonS3Builder::new()
        .with_endpoint(proxy.endpoint())
        .with_bucket_name("bucket")
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_retry(RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        })
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(true)
                .with_timeout(Duration::from_millis(1500)),
        )
        .build()
        .unwrap();
    let part = Path::from("ds/v1/part-0.parquet");
    let manifest = Path::from("ds/v1.manifest.json");
    let big = big_body();

    store.put(&part, big.clone().into()).await.unwrap();
    let got = store.get(&part).await.unwrap().bytes().await.unwrap();
    assert!(got == big, "the part came back changed");

    proxy.arm(
        |r| r.method == "PUT" && r.path.ends_with(".manifest.json"),
        0,
        Fault::ResetAfterResponse,
    );
    let err = store
        .put(&manifest, b"{}".to_vec().into())
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("ConnectionReset"), "{err:?}");
    assert_eq!(proxy.fired(), 1);
    assert!(origin
        .seen_paths()
        .contains(&"PUT /bucket/ds/v1.manifest.json".to_string()));
    let got = store.get(&manifest).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"{}", "the PUT took effect");

    proxy.arm(|r| r.method == "GET", 0, Fault::Blackhole);
    let started = Instant::now();
    let err = store.get(&part).await.unwrap_err();
    assert!(format!("{err:?}").contains("Timeout"), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));

    proxy.arm(|r| r.method == "GET", 0, Fault::ResetBeforeRequest);
    let before = origin.seen().len();
    let err = store.get(&part).await.unwrap_err();
    assert!(format!("{err:?}").contains("ConnectionReset"), "{err:?}");
    assert_eq!(origin.seen().len(), before, "the GET reached the server");
    assert_eq!(proxy.fired(), 3);
}

#[test]
fn seeds_repeat_their_choices() {
    let picks = |seed| {
        let mut seed = Seed::new(seed);
        (0..200).map(|_| seed.pick(3..10)).collect::<Vec<_>>()
    };
    assert_eq!(picks(7), picks(7));
    assert_ne!(picks(7), picks(8));
    assert!(picks(7).iter().all(|n| (3..10).contains(n)));
    assert!(
        (3..10).all(|n| picks(7).contains(&n)),
        "every value comes up"
    );

    let mut seed = Seed::from_env_or_random("FLIGHT_NODE_PROXY_TEST_SEED");
    let value = seed.value();
    let faults = [Fault::ResetAfterResponse, Fault::Blackhole];
    let first = seed.choose(&faults).clone();
    assert_eq!(Seed::new(value).choose(&faults), &first);
    assert_eq!(Seed::new(value).pick(5..6), 5);
}
