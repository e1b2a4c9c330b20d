//! `DoGet` without copying table data in the gRPC layer.
//!
//! tonic encodes every response message by copying it into one contiguous buffer. For
//! `DoGet` that buffer copy is most of the server's work: the table is already encoded as
//! Arrow IPC in the cache. This module answers `DoGet` itself: it writes the gRPC frame
//! prefix and the protobuf field headers of each `FlightData` into a small buffer and hands
//! the IPC body (a reference-counted slice of the cache) to HTTP/2 as its own chunk, which
//! h2 writes to the socket without copying it. Every other method goes to the generated
//! tonic service; `DoGet`'s logic (auth, ticket, cache, load) is shared with it through
//! [`FlightNodeService::do_get_stream`], only the encoding differs.
//!
//! Wire format, per message: `0x00`, a big-endian `u32` length, then the protobuf
//! `FlightData` with `data_header` (field 2), `app_metadata` (field 3, when set) and
//! `data_body` (field 1000); the stream ends with `grpc-status` trailers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use arrow_flight::flight_service_server::FlightServiceServer;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prost::Message as _;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;

use crate::cache::Message;
use crate::error::{Error, Result};
use crate::service::FlightNodeService;
use crate::wire::frame;

const DO_GET_PATH: &str = "/arrow.flight.protocol.FlightService/DoGet";
/// A `Ticket` request is a few hundred bytes; anything much larger is refused unread.
const MAX_REQUEST: usize = 64 * 1024;

/// The Flight service with the zero-copy `DoGet`.
#[derive(Clone)]
pub struct FlightRouter {
    grpc: FlightServiceServer<FlightNodeService>,
    service: FlightNodeService,
}

impl FlightRouter {
    pub fn new(grpc: FlightServiceServer<FlightNodeService>, service: FlightNodeService) -> Self {
        Self { grpc, service }
    }
}

impl NamedService for FlightRouter {
    const NAME: &'static str = "arrow.flight.protocol.FlightService";
}

impl tower::Service<http::Request<tonic::body::Body>> for FlightRouter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() == DO_GET_PATH {
            let service = self.service.clone();
            Box::pin(async move { Ok(do_get(service, req).await) })
        } else {
            let mut grpc = self.grpc.clone();
            Box::pin(async move { tower::Service::call(&mut grpc, req).await })
        }
    }
}

async fn do_get(
    service: FlightNodeService,
    req: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let (parts, body) = req.into_parts();
    let metadata = MetadataMap::from_headers(parts.headers);
    let result = async {
        let ticket = read_ticket(body).await?;
        service.do_get_stream(&metadata, &ticket).await
    }
    .await;
    match result {
        Ok(stream) => {
            let mut resp =
                http::Response::new(tonic::body::Body::new(GrpcBody::new(stream, service)));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            resp
        }
        Err(e) => Status::from(e).into_http(),
    }
}

/// Reads the single length-prefixed `Ticket` message of a `DoGet` request.
async fn read_ticket(body: tonic::body::Body) -> Result<Bytes> {
    let bytes = http_body_util::Limited::new(body, MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| Error::invalid(format!("failed to read the DoGet request: {e}")))?
        .to_bytes();
    if bytes.len() < 5 {
        return Err(Error::invalid("the DoGet request holds no message"));
    }
    if bytes[0] != 0 {
        return Err(Error::invalid(
            "compressed DoGet requests are not supported",
        ));
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let msg = bytes
        .get(5..5 + len)
        .ok_or_else(|| Error::invalid("the DoGet request message is truncated"))?;
    let ticket = arrow_flight::Ticket::decode(msg)
        .map_err(|e| Error::invalid(format!("malformed DoGet request: {e}")))?;
    Ok(ticket.ticket)
}

/// Response body: framed messages, then `grpc-status` trailers.
struct GrpcBody {
    messages: BoxStream<'static, Result<Message>>,
    queue: VecDeque<Bytes>,
    service: FlightNodeService,
    done: bool,
}

impl GrpcBody {
    fn new(messages: BoxStream<'static, Result<Message>>, service: FlightNodeService) -> Self {
        Self {
            messages,
            queue: VecDeque::with_capacity(2),
            service,
            done: false,
        }
    }

    fn trailers(status: &Status) -> HeaderMap {
        let mut map = HeaderMap::new();
        if status.add_header(&mut map).is_err() {
            map.insert("grpc-status", HeaderValue::from_static("13"));
        }
        map
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Status>>> {
        if let Some(chunk) = self.queue.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.messages.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(m))) => {
                self.service
                    .record_sent((m.data.data_header.len() + m.data.data_body.len()) as u64);
                if let Some(frame) = m.frame {
                    // One chunk: the client gets the message in as few DATA frames as the
                    // flow-control window allows (it reads such streams with fewer page
                    // faults than a small frame followed by the body).
                    return Poll::Ready(Some(Ok(Frame::data(frame))));
                }
                let (head, body) = frame(&m.data);
                if !body.is_empty() {
                    self.queue.push_back(body);
                }
                Poll::Ready(Some(Ok(Frame::data(head))))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                let status = Status::from(e);
                Poll::Ready(Some(Ok(Frame::trailers(Self::trailers(&status)))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(Self::trailers(&Status::ok(""))))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.queue.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow_flight::FlightData;

    use crate::auth::Auth;
    use crate::contract::Contracts;
    use crate::name::DatasetId;
    use crate::node::{Limits, Node, PutOptions};
    use crate::placement::Placement;
    use crate::storage::Storage;

    /// The response carries the cache's own frames (same addresses), each message one frame
    /// whose header and body the cache holds as slices, and decodes to the uploaded table:
    /// nothing was copied on the way out.
    #[tokio::test]
    async fn do_get_sends_the_cached_buffers_without_copying() {
        let limits = Limits {
            part_size: 1 << 20,
            max_message_size: 64 << 20,
            max_upload_size: 1 << 30,
            max_upload_batches: 1000,
            default_ttl: None,
            orphan_grace: std::time::Duration::from_secs(3600),
            load_source_prefixes: Vec::new(),
            upload_idle_timeout: std::time::Duration::from_secs(60),
            stream_stall_timeout: std::time::Duration::from_secs(60),
            release_grace: std::time::Duration::from_secs(30),
        };
        let placement = Placement::new(None, None).unwrap();
        let node = Arc::new(Node::new(
            Storage::in_memory(),
            1 << 30,
            Contracts::default(),
            None,
            placement,
            limits,
        ));
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..50_000)),
                Arc::new(StringArray::from_iter_values(
                    (0..50_000).map(|i| format!("v{i}")),
                )),
            ],
        )
        .unwrap();
        let id = DatasetId::new("ns", "t").unwrap();
        let stream = futures::stream::iter([Ok(batch.clone())]);
        node.put(id.clone(), PutOptions::default(), schema, stream)
            .await
            .unwrap();
        let cached = node.cache().peek(&(id, 1, 0)).unwrap();
        // Each cached message is one frame; its header and body are slices of it.
        let mut cached_frames: Vec<*const u8> = Vec::new();
        for m in &cached.messages {
            let frame = m.frame.as_ref().expect("cached messages are framed");
            let inside = |b: &Bytes| {
                let (start, end) = (
                    frame.as_ptr() as usize,
                    frame.as_ptr() as usize + frame.len(),
                );
                b.is_empty()
                    || (b.as_ptr() as usize >= start && b.as_ptr() as usize + b.len() <= end)
            };
            assert!(inside(&m.data.data_body) && inside(&m.data.data_header));
            cached_frames.push(frame.as_ptr());
        }
        assert!(!cached_frames.is_empty());

        let service = FlightNodeService::new(Arc::clone(&node), Arc::new(Auth::disabled()));
        let mut router = FlightRouter::new(FlightServiceServer::new(service.clone()), service);
        let ticket = arrow_flight::Ticket::new("ads1:ns/t@1");
        let mut request = vec![0u8];
        request.extend_from_slice(&(ticket.encoded_len() as u32).to_be_bytes());
        request.extend_from_slice(&ticket.encode_to_vec());
        let req = http::Request::builder()
            .method("POST")
            .uri("http://node/arrow.flight.protocol.FlightService/DoGet")
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                Bytes::from(request),
            )))
            .unwrap();
        let resp = tower::Service::call(&mut router, req).await.unwrap();
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let mut body = resp.into_body();
        let (mut wire, mut sent_ptrs, mut trailers) = (Vec::new(), Vec::new(), None);
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            if let Some(data) = frame.data_ref() {
                sent_ptrs.push(data.as_ptr());
                wire.extend_from_slice(data);
            } else {
                trailers = frame.into_trailers().ok();
            }
        }
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        for p in &cached_frames {
            assert!(
                sent_ptrs.contains(p),
                "a cached frame was copied instead of shared"
            );
        }
        let mut messages = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            messages.push(FlightData::decode(&rest[5..5 + len]).unwrap());
            rest = &rest[5 + len..];
        }
        let batches = arrow_flight::utils::flight_data_to_batches(&messages).unwrap();
        assert_eq!(
            arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap(),
            batch
        );
    }

    #[tokio::test]
    async fn bad_requests_get_a_status_not_a_stream() {
        let placement = Placement::new(None, None).unwrap();
        let limits = Limits {
            part_size: 1 << 20,
            max_message_size: 1 << 20,
            max_upload_size: 1 << 20,
            max_upload_batches: 10,
            default_ttl: None,
            orphan_grace: std::time::Duration::from_secs(3600),
            load_source_prefixes: Vec::new(),
            upload_idle_timeout: std::time::Duration::from_secs(60),
            stream_stall_timeout: std::time::Duration::from_secs(60),
            release_grace: std::time::Duration::from_secs(30),
        };
        let node = Arc::new(Node::new(
            Storage::in_memory(),
            1 << 20,
            Contracts::default(),
            None,
            placement,
            limits,
        ));
        let service = FlightNodeService::new(node, Arc::new(Auth::disabled()));
        let mut router = FlightRouter::new(FlightServiceServer::new(service.clone()), service);
        for (body, code) in [
            (vec![], "3"),
            (vec![1, 0, 0, 0, 0], "3"),
            (vec![0, 0, 0, 0, 9, 1], "3"),
            (vec![0, 0, 0, 0, 0], "3"),
        ] {
            let req = http::Request::builder()
                .uri("http://node/arrow.flight.protocol.FlightService/DoGet")
                .body(tonic::body::Body::new(http_body_util::Full::new(
                    Bytes::from(body.clone()),
                )))
                .unwrap();
            let resp = tower::Service::call(&mut router, req).await.unwrap();
            assert_eq!(resp.headers()["grpc-status"], code, "{body:?}");
        }
    }
}
