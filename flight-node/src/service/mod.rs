//! The Arrow Flight service: parses requests, checks tokens, delegates to [`Node`] and
//! encodes answers. Errors become gRPC codes in one place ([`crate::error`]).
//!
//! # Upload options
//!
//! `DoPut` reads two optional gRPC headers:
//!
//! * `x-flight-ttl` — how long the new version lives, e.g. `30m`, `6h`, `7d`
//!   (default: the node's `--default-ttl`, or no expiry);
//! * `x-flight-contract` — the name of a data contract the upload must match.
//!
//! pyarrow: `client.do_put(descriptor, schema, options=flight.FlightCallOptions(
//! headers=[(b"x-flight-ttl", b"6h"), (b"x-flight-contract", b"sales-v1")]))`.
//!
//! The single `PutResult` carries JSON in `app_metadata`:
//! `{"ticket": "ads1:ns/name@3", "namespace": "ns", "name": "name", "version": 3,
//! "rows": N, "bytes": M, "expiresAt": "..."}`.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, Location, PollInfo, PutResult, RenewFlightEndpointRequest,
    SchemaResult, Ticket as FlightTicket,
};
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream;
use futures::{Stream, StreamExt};
use prost::Message;
use serde::Deserialize;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Auth, Principal};
use crate::consumers::Consumers;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::name::DatasetId;
use crate::node::{
    DatasetRef, LoadRequest, Node, NodePreload, PreloadRequest, PreloadResult, PutOptions,
};
use crate::ticket::Ticket;

pub use crate::protocol::{CONSUMERS_HEADER, CONTRACT_HEADER, TTL_HEADER};

mod actions;
mod info;
pub use actions::ACTIONS;

/// Location that tells a client to reuse the connection it already has.
pub const REUSE_CONNECTION: &str = "arrow-flight-reuse-connection://?";

type Stream_<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

/// `FlightService` over a [`Node`].
#[derive(Debug, Clone)]
pub struct FlightNodeService {
    node: Arc<Node>,
    auth: Arc<Auth>,
    peers: Arc<crate::fanout::Peers>,
}

impl FlightNodeService {
    pub fn new(node: Arc<Node>, auth: Arc<Auth>) -> Self {
        Self {
            node,
            auth,
            peers: Arc::default(),
        }
    }

    /// How this node reaches its peers (certificates for TLS pools).
    pub fn with_peers(mut self, peers: crate::fanout::Peers) -> Self {
        self.peers = Arc::new(peers);
        self
    }

    /// An upload slot for the caller (see [`crate::budget`]).
    fn upload_slot(&self, caller: Option<String>) -> Result<crate::budget::UploadSlot> {
        self.node.budgets().upload_slot(caller.as_deref())
    }

    fn principal(&self, metadata: &MetadataMap) -> Result<Principal> {
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
        self.auth.authenticate(header)
    }

    /// The answer of a call (counted by `request_metrics` from its status).
    fn finish<T>(&self, result: Result<T>) -> std::result::Result<Response<T>, Status> {
        result.map(Response::new).map_err(Status::from)
    }

    fn descriptor_id(descriptor: &FlightDescriptor) -> Result<DatasetId> {
        if descriptor.r#type != DescriptorType::Path as i32 {
            return Err(Error::invalid(
                "datasets are addressed by path descriptors: [namespace, name] or [name] \
                 (GetFlightInfo also takes a command descriptor holding a ticket)",
            ));
        }
        DatasetId::from_path(&descriptor.path)
    }

    async fn get_flight_info_inner(&self, req: Request<FlightDescriptor>) -> Result<FlightInfo> {
        let principal = self.principal(req.metadata())?;
        let descriptor = req.get_ref();
        if descriptor.r#type == DescriptorType::Cmd as i32 {
            let ticket = self.command_ticket(&descriptor.cmd)?;
            principal.check(ticket.dataset.namespace())?;
            let m = self.node.resolve(&ticket).await?;
            return self.flight_info_of(&m, &ticket, descriptor.clone());
        }
        let id = Self::descriptor_id(descriptor)?;
        principal.check(id.namespace())?;
        let m = self.node.latest(&id).await?;
        self.flight_info(&m)
    }

    /// `DoGet`'s logic, shared by the tonic method and the zero-copy path
    /// ([`crate::zerocopy`]): authenticate, parse the ticket, resolve the version and open
    /// its messages.
    pub async fn do_get_stream(
        &self,
        metadata: &MetadataMap,
        ticket: &[u8],
    ) -> Result<futures::stream::BoxStream<'static, Result<crate::cache::Message>>> {
        let principal = self.principal(metadata)?;
        let ticket = Ticket::decode(ticket, self.node.signer())?;
        principal.check(ticket.dataset.namespace())?;
        let manifest = self.node.resolve(&ticket).await?;
        let stream = self
            .node
            .read(&manifest, ticket.part, &ticket.select)
            .await?;
        // A client that stops reading does not hold the version (or a part read for it)
        // for ever.
        let node = Arc::clone(&self.node);
        Ok(crate::cancel::end_when_stalled(
            stream,
            self.node.limits().stream_stall_timeout,
            |d| {
                Err(Error::DeadlineExceeded(format!(
                    "the client read nothing for {}s; the stream was ended (--stream-stall-timeout)",
                    d.as_secs_f64()
                )))
            },
            move || node.budgets().record_stall(),
        ))
    }

    /// Counts Flight bytes sent.
    pub fn record_sent(&self, bytes: u64) {
        self.node.metrics().record_sent(bytes);
    }

    async fn do_get_inner(&self, req: Request<FlightTicket>) -> Result<Stream_<FlightData>> {
        let stream = self
            .do_get_stream(req.metadata(), &req.get_ref().ticket)
            .await?;
        let node = Arc::clone(&self.node);
        Ok(stream
            .map(move |r| match r {
                Ok(m) => {
                    let m = m.data;
                    node.metrics()
                        .record_sent((m.data_header.len() + m.data_body.len()) as u64);
                    Ok(m)
                }
                Err(e) => Err(Status::from(e)),
            })
            .boxed())
    }

    async fn do_put_inner(&self, req: Request<Streaming<FlightData>>) -> Result<PutResult> {
        let principal = self.principal(req.metadata())?;
        let caller = self.auth.caller_key(
            req.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        );
        let ttl = match header(req.metadata(), TTL_HEADER)? {
            Some(t) => Some(crate::ttl::parse_ttl(&t)?),
            None => None,
        };
        let contract = header(req.metadata(), CONTRACT_HEADER)?;
        let consumers = header(req.metadata(), CONSUMERS_HEADER)?
            .map(|c| Consumers::parse(&c))
            .transpose()?;
        let idle = self.node.limits().upload_idle_timeout;
        let mut inbound = crate::cancel::idle_timeout(req.into_inner(), idle, |d| {
            Status::deadline_exceeded(format!(
                "the upload sent nothing for {}s; it is abandoned and nothing was stored \
                     (--upload-idle-timeout)",
                d.as_secs_f64()
            ))
        });
        let first = inbound
            .next()
            .await
            .transpose()
            .map_err(Error::from_inbound)?
            .ok_or_else(|| {
                Error::invalid("empty DoPut stream: expected a schema message with a descriptor")
            })?;
        let descriptor = first.flight_descriptor.as_ref().ok_or_else(|| {
            Error::invalid("the first DoPut message carries no flight descriptor")
        })?;
        let id = Self::descriptor_id(descriptor)?;
        principal.check(id.namespace())?;
        let _slot = self.upload_slot(caller)?;

        let limits = self.node.limits().clone();
        let limited = stream::once(async { Ok(first) })
            .chain(inbound)
            .scan((0u64, 0u64), move |(bytes, count), item| {
                let item = item.and_then(|m| {
                    *bytes += (m.data_header.len() + m.data_body.len()) as u64;
                    *count += 1;
                    if *bytes > limits.max_upload_size {
                        Err(Status::resource_exhausted(format!(
                            "upload exceeds the maximum upload size of {} bytes",
                            limits.max_upload_size
                        )))
                    } else if *count
                        > limits
                            .max_upload_batches
                            .saturating_mul(2)
                            .saturating_add(16)
                    {
                        // Dictionary messages count too, hence the headroom.
                        Err(Status::resource_exhausted(format!(
                            "upload has more than {} messages; send fewer, larger batches",
                            limits.max_upload_batches
                        )))
                    } else {
                        Ok(m)
                    }
                });
                futures::future::ready(Some(item))
            })
            .map(|r| r.map_err(|s| FlightError::Tonic(Box::new(s))));
        // The decoder is the one place client bytes become Arrow arrays. A panic inside it
        // (arrow's IPC reader trusts some lengths) becomes INVALID_ARGUMENT and ends the
        // upload, rather than a cancelled call; nothing is committed.
        let mut decoder = std::panic::AssertUnwindSafe(FlightDataDecoder::new(limited))
            .catch_unwind()
            .map(|r| match r {
                Ok(item) => item,
                Err(panic) => Err(FlightError::DecodeError(format!(
                    "the IPC message could not be decoded ({})",
                    crate::error::panic_message(&panic)
                ))),
            })
            .take_while_inclusive_ok();
        let (schema, schema_message) = loop {
            match decoder.next().await {
                Some(Ok(d)) => match d.payload {
                    DecodedPayload::Schema(s) => break (s, d.inner.data_header),
                    DecodedPayload::None => continue,
                    DecodedPayload::RecordBatch(_) => {
                        return Err(Error::invalid("record batch before the schema message"))
                    }
                },
                Some(Err(e)) => return Err(e.into()),
                None => return Err(Error::invalid("DoPut stream ended before a schema message")),
            }
        };
        crate::node::check_schema(&schema)?;
        let batches = decoder.filter_map(|r| {
            futures::future::ready(match r {
                Ok(d) => match d.payload {
                    // Full validation (offsets, UTF-8, dictionary keys in range): an array
                    // that lies about its buffers is refused here, before anything reads it.
                    DecodedPayload::RecordBatch(b) => Some(validate(b)),
                    DecodedPayload::None => None,
                    DecodedPayload::Schema(_) => Some(Err(Error::invalid(
                        "the schema changed mid-stream; one upload has one schema",
                    ))),
                },
                Err(e) => Some(Err(Error::from(e))),
            })
        });
        let opts = PutOptions {
            ttl,
            contract,
            source: "flight".into(),
            schema_message: Some(schema_message),
            consumers,
        };
        let manifest = self.node.put(id, opts, schema, batches).await?;
        let result = manifest.put_result(self.node.signer())?;
        let json = serde_json::to_vec(&result)
            .map_err(|e| Error::Internal(format!("failed to encode PutResult: {e}")))?;
        Ok(PutResult {
            app_metadata: Bytes::from(json),
        })
    }

    async fn handshake_inner(
        &self,
        req: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Stream_<HandshakeResponse>>> {
        // Either a Basic/Bearer header (pyarrow's authenticate_basic_token) or a token in
        // the payload of the first handshake message.
        let header_token = match req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            Some(h) => Some(token_from_header(h)?),
            None => None,
        };
        let token = match header_token {
            Some(t) => t,
            None => {
                let mut inbound = req.into_inner();
                let first = inbound.message().await.map_err(Error::from_inbound)?;
                let payload = first.map(|m| m.payload).unwrap_or_default();
                String::from_utf8(payload.to_vec()).map_err(|_| {
                    Error::Unauthenticated("the handshake payload must be a UTF-8 token".into())
                })?
            }
        };
        if self.auth.is_enabled() {
            self.auth.authenticate_token(&token)?;
        }
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: Bytes::from(token.clone()),
        };
        let mut resp: Response<Stream_<HandshakeResponse>> =
            Response::new(stream::iter([Ok(reply)]).boxed());
        if let Ok(v) = format!("Bearer {token}").parse() {
            resp.metadata_mut().insert("authorization", v);
        }
        Ok(resp)
    }
}

/// Checks every column of a batch a client sent against its declared layout and values.
fn validate(batch: arrow::array::RecordBatch) -> Result<arrow::array::RecordBatch> {
    for (i, c) in batch.columns().iter().enumerate() {
        c.to_data().validate_full().map_err(|e| {
            Error::invalid(format!(
                "malformed Arrow data in column {i} ({:?}): {e}",
                batch.schema().field(i).name()
            ))
        })?;
    }
    Ok(batch)
}

/// Ends a stream after its first error (a decoder that panicked is not polled again).
trait TakeWhileOk: Stream + Sized {
    fn take_while_inclusive_ok(self) -> futures::stream::BoxStream<'static, Self::Item>;
}

impl<S, T, E> TakeWhileOk for S
where
    S: Stream<Item = std::result::Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    fn take_while_inclusive_ok(self) -> futures::stream::BoxStream<'static, Self::Item> {
        let mut failed = false;
        self.take_while(move |r| {
            let go = !failed;
            failed = failed || r.is_err();
            futures::future::ready(go)
        })
        .boxed()
    }
}

fn token_from_header(h: &str) -> Result<String> {
    if let Some(t) = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
    {
        return Ok(t.trim().to_string());
    }
    if let Some(b) = h
        .strip_prefix("Basic ")
        .or_else(|| h.strip_prefix("basic "))
    {
        // With or without `=` padding: arrow-go's client leaves it out.
        let indifferent = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = indifferent
            .decode(b.trim())
            .map_err(|_| Error::Unauthenticated("malformed Basic authorization header".into()))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| Error::Unauthenticated("malformed Basic authorization header".into()))?;
        // The token is the password; a client with only a token may put it in the user.
        let (user, pass) = text.split_once(':').unwrap_or((text.as_str(), ""));
        return Ok(if pass.is_empty() { user } else { pass }.to_string());
    }
    Err(Error::Unauthenticated(
        "unsupported authorization scheme; use Bearer or Basic".into(),
    ))
}

fn header(md: &MetadataMap, name: &str) -> Result<Option<String>> {
    match md.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim().to_string()))
            .map_err(|_| Error::invalid(format!("header {name} is not valid text"))),
    }
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl FlightService for FlightNodeService {
    type HandshakeStream = Stream_<HandshakeResponse>;
    type ListFlightsStream = Stream_<FlightInfo>;
    type DoGetStream = Stream_<FlightData>;
    type DoPutStream = Stream_<PutResult>;
    type DoExchangeStream = Stream_<FlightData>;
    type DoActionStream = Stream_<arrow_flight::Result>;
    type ListActionsStream = Stream_<ActionType>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        self.handshake_inner(request).await.map_err(Status::from)
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        let r = async {
            let principal = self.principal(request.metadata())?;
            let expr = &request.get_ref().expression;
            let namespace = if expr.is_empty() {
                None
            } else {
                let ns = std::str::from_utf8(expr)
                    .map_err(|_| Error::invalid("ListFlights criteria must be a namespace name"))?
                    .trim()
                    .to_string();
                crate::name::validate_label("namespace", &ns)?;
                principal.check(&ns)?;
                Some(ns)
            };
            // A namespace token lists only its own namespaces: nothing of another namespace
            // is read, so nothing of it can show, not even in an error.
            let scope: Option<Vec<String>> = match (namespace, &principal) {
                (Some(ns), _) => Some(vec![ns]),
                (None, Principal::Namespaces(own)) => Some(own.clone()),
                (None, Principal::Everything) => None,
            };
            let mut infos = Vec::new();
            for m in self.node.list(scope.as_deref()).await? {
                if principal.allows(&m.namespace) {
                    infos.push(Ok(self.flight_info(&m)?));
                }
            }
            Ok::<_, Error>(stream::iter(infos).boxed() as Self::ListFlightsStream)
        }
        .await;
        self.finish(r)
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let r = self.get_flight_info_inner(request).await;
        self.finish(r)
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        // A dataset is complete once uploaded: the poll is answered as finished, with the
        // same FlightInfo as GetFlightInfo and no descriptor to poll again.
        let r = match self.get_flight_info_inner(request).await {
            Ok(info) => PollInfo::new()
                .with_info(info)
                .try_with_progress(1.0)
                .map_err(Error::from),
            Err(e) => Err(e),
        };
        self.finish(r)
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        let r = async {
            let principal = self.principal(request.metadata())?;
            let id = Self::descriptor_id(request.get_ref())?;
            principal.check(id.namespace())?;
            let m = self.node.latest(&id).await?;
            Ok(SchemaResult {
                schema: m.schema_ipc()?,
            })
        }
        .await;
        self.finish(r)
    }

    async fn do_get(
        &self,
        request: Request<FlightTicket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        let r = self.do_get_inner(request).await;
        self.finish(r)
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        // The token is checked before answering, so a refused caller learns it at once. The
        // response headers then go out immediately, before the upload is read: clients that
        // wait for the call to be established before they stream (arrow-rs's FlightClient
        // with a bounded channel) would otherwise wait for ever. The PutResult follows once
        // the version is committed; a failure arrives as the call's status.
        if let Err(e) = self.principal(request.metadata()) {
            return self.finish(Err(e));
        }
        let this = self.clone();
        let answer =
            stream::once(async move { this.do_put_inner(request).await.map_err(Status::from) });
        Ok(Response::new(answer.boxed()))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        if let Err(e) = self.principal(request.metadata()) {
            return self.finish(Err(e));
        }
        self.finish(Err(Error::Unimplemented(
            "DoExchange is not supported: upload with DoPut and download with DoGet".into(),
        )))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        let r = self.do_action_inner(request).await.map(|bodies| {
            stream::iter(
                bodies
                    .into_iter()
                    .map(|body| Ok(arrow_flight::Result { body })),
            )
            .boxed() as Self::DoActionStream
        });
        self.finish(r)
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        if let Err(e) = self.principal(request.metadata()) {
            return self.finish(Err(e));
        }
        let actions: Vec<_> = ACTIONS
            .iter()
            .map(|(t, d)| {
                Ok(ActionType {
                    r#type: (*t).to_string(),
                    description: (*d).to_string(),
                })
            })
            .collect();
        self.finish(Ok(stream::iter(actions).boxed() as Self::ListActionsStream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Basic credentials with and without base64 padding (arrow-go leaves it out).
    #[test]
    fn basic_tokens_decode_with_or_without_padding() {
        let padded = base64::engine::general_purpose::STANDARD.encode(":analytics-token");
        let unpadded = padded.trim_end_matches('=').to_string();
        assert_ne!(padded, unpadded);
        for h in [format!("Basic {padded}"), format!("Basic {unpadded}")] {
            assert_eq!(token_from_header(&h).unwrap(), "analytics-token");
        }
        assert_eq!(token_from_header("Bearer t").unwrap(), "t");
        assert!(token_from_header("Basic %%%").is_err());
    }

    /// The `FlightService` trait's DoGet (production routes DoGet to the zero-copy path;
    /// any other host of the service, such as a tonic server without the router, uses this
    /// one) serves the same table and the same errors.
    #[tokio::test]
    async fn do_get_through_the_trait_serves_the_table() {
        use arrow::array::{Int64Array, RecordBatch};
        use arrow::datatypes::{DataType, Field, Schema};
        use futures::TryStreamExt;

        let config = crate::config::Config::for_tests("memory://");
        let node = Arc::new(Node::from_config(&config).expect("node"));
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..10_000))],
        )
        .expect("batch");
        let id = DatasetId::new("ns", "t").expect("id");
        let m = node
            .put(
                id,
                crate::node::PutOptions::default(),
                schema,
                stream::iter([Ok(batch.clone())]),
            )
            .await
            .expect("put");
        let ticket = m.ticket().expect("ticket").to_string();
        let service = FlightNodeService::new(Arc::clone(&node), Arc::new(Auth::disabled()));

        let answer = FlightService::do_get(&service, Request::new(FlightTicket::new(ticket)))
            .await
            .expect("DoGet answers");
        let data = answer
            .into_inner()
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data)
                .try_collect()
                .await
                .expect("decodes");
        let got = arrow::compute::concat_batches(&batch.schema(), &batches).expect("concat");
        assert_eq!(got, batch);

        let missing =
            FlightService::do_get(&service, Request::new(FlightTicket::new("ads1:ns/other@1")))
                .await;
        assert_eq!(missing.err().map(|s| s.code()), Some(tonic::Code::NotFound));
    }
}
