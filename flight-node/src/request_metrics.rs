//! One request-metrics layer for both ports: every Flight call and every dataset request on
//! the HTTP port is counted in `flight_requests_total{method, code}` once, when its outcome
//! is known.
//!
//! On the gRPC port that is the `grpc-status` of the response: in its headers for a call
//! that failed before answering, otherwise in the trailers after the last message, so a
//! `DoGet` that fails half-way counts with the code its client saw. A call whose response
//! is dropped before its trailers (the client went away) counts as `Cancelled`. On the HTTP
//! port the status code of the response counts, mapped back to the gRPC code it stands for.
//! Method labels come from a fixed list, never from what a client sends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Code;

use crate::node::Node;

/// The Flight methods, as labels.
const FLIGHT_METHODS: &[&str] = &[
    "Handshake",
    "ListFlights",
    "GetFlightInfo",
    "PollFlightInfo",
    "GetSchema",
    "DoGet",
    "DoPut",
    "DoExchange",
    "DoAction",
    "ListActions",
];

/// Which port a layer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Grpc,
    Http,
}

/// Counts the requests of the service it wraps; see the module docs.
#[derive(Clone)]
pub struct RequestMetricsLayer {
    node: Arc<Node>,
    port: Port,
}

impl RequestMetricsLayer {
    /// For the gRPC port (outcome from `grpc-status`).
    pub fn grpc(node: Arc<Node>) -> Self {
        Self {
            node,
            port: Port::Grpc,
        }
    }

    /// For the HTTP port (outcome from the status code; probes and `/metrics` not counted).
    pub fn http(node: Arc<Node>) -> Self {
        Self {
            node,
            port: Port::Http,
        }
    }
}

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            node: Arc::clone(&self.node),
            port: self.port,
        }
    }
}

/// The service of [`RequestMetricsLayer`].
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    node: Arc<Node>,
    port: Port,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RequestMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // tonic's server takes only its own body type from a layer; axum takes any body.
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = method_label(self.port, req.method(), req.uri().path());
        let port = self.port;
        let node = Arc::clone(&self.node);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            let Some(method) = method else {
                return Ok(resp.map(tonic::body::Body::new));
            };
            let known = match port {
                Port::Grpc => resp
                    .headers()
                    .get("grpc-status")
                    .map(|v| grpc_code(v.as_bytes())),
                Port::Http => Some(crate::error::code_of_http_status(resp.status().as_u16())),
            };
            Ok(match known {
                Some(code) => {
                    node.metrics().record_request(method, code);
                    resp.map(tonic::body::Body::new)
                }
                None => resp.map(|body| {
                    tonic::body::Body::new(Counted {
                        inner: body,
                        node,
                        pending: Some(method),
                    })
                }),
            })
        })
    }
}

/// The label of a request, or `None` for what is not counted.
fn method_label(port: Port, method: &http::Method, path: &str) -> Option<&'static str> {
    match port {
        Port::Grpc => {
            let name = path.rsplit('/').next().unwrap_or_default();
            Some(
                FLIGHT_METHODS
                    .iter()
                    .find(|m| **m == name)
                    .copied()
                    .unwrap_or("Unknown"),
            )
        }
        Port::Http if path.starts_with("/v1/datasets/") => match *method {
            http::Method::POST => Some("HttpUpload"),
            http::Method::GET => Some("HttpExport"),
            _ => Some("HttpOther"),
        },
        Port::Http => None,
    }
}

fn grpc_code(value: &[u8]) -> Code {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32)
}

/// A response body that counts its call when its trailers pass (or as `Cancelled` when it
/// is dropped before them).
pub struct Counted<B> {
    inner: B,
    node: Arc<Node>,
    /// The call's label while its outcome is not known yet.
    pending: Option<&'static str>,
}

impl<B> Counted<B> {
    fn record(&mut self, code: Code) {
        if let Some(method) = self.pending.take() {
            self.node.metrics().record_request(method, code);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if self.pending.is_some() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(code) = frame
                        .trailers_ref()
                        .and_then(|t| t.get("grpc-status"))
                        .map(|v| grpc_code(v.as_bytes()))
                    {
                        self.record(code);
                    }
                }
                Poll::Ready(Some(Err(_))) => self.record(Code::Internal),
                Poll::Ready(None) => self.record(Code::Unknown),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_a_fixed_set() {
        let get = http::Method::GET;
        let path = "/arrow.flight.protocol.FlightService/DoGet";
        assert_eq!(
            method_label(Port::Grpc, &http::Method::POST, path),
            Some("DoGet")
        );
        let invented = "/arrow.flight.protocol.FlightService/Anything-a-client-invents";
        assert_eq!(
            method_label(Port::Grpc, &http::Method::POST, invented),
            Some("Unknown")
        );
        assert_eq!(
            method_label(Port::Http, &get, "/v1/datasets/a/b"),
            Some("HttpExport")
        );
        assert_eq!(
            method_label(Port::Http, &http::Method::POST, "/v1/datasets/a/b"),
            Some("HttpUpload")
        );
        assert_eq!(method_label(Port::Http, &get, "/readyz"), None);
        assert_eq!(grpc_code(b"5"), Code::NotFound);
        assert_eq!(grpc_code(b"x"), Code::Unknown);
        for code in [400, 401, 403, 404, 409, 413, 503] {
            let back = crate::error::code_of_http_status(code);
            assert_ne!(back, Code::Internal, "{code}");
        }
    }
}
