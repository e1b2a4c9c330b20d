//! Turns a cancelled request stream into an error.
//!
//! tonic reports a client that cancels a streaming call (RST_STREAM CANCEL, a dropped
//! connection) as a clean end of the request stream. For `DoPut` that would commit a
//! truncated upload as if the client had finished it, breaking the rule that an upload the
//! node did not acknowledge is either complete or invisible. This layer rewrites the
//! `Cancelled` status of the request body into `Aborted`, which tonic passes on as an error,
//! so the upload is refused and its parts removed.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::{Code, Status};

/// Request-body wrapper; see the module docs.
pub struct CancelIsError(pub tonic::body::Body);

impl Body for CancelIsError {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match Pin::new(&mut self.0).poll_frame(cx) {
            Poll::Ready(Some(Err(s))) if s.code() == Code::Cancelled => {
                Poll::Ready(Some(Err(Status::aborted(format!(
                    "the client cancelled the call before finishing it: {}",
                    s.message()
                )))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// Applies [`CancelIsError`] to every request of a tonic server.
pub fn layer() -> tower::util::MapRequestLayer<
    fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body>,
> {
    tower::util::MapRequestLayer::new(wrap as fn(_) -> _)
}

fn wrap(req: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    req.map(|b| tonic::body::Body::new(CancelIsError(b)))
}
