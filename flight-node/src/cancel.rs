//! Turns a cancelled or stalled request stream into an error.
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

/// Ends a request stream with `on_idle()` when no item arrives for `idle`: a client that
/// stops sending mid-upload while keeping its connection open does not hold the upload (its
/// buffers, its encoder) for ever. The stream is not polled after that error.
pub fn idle_timeout<S, T, E>(
    stream: S,
    idle: std::time::Duration,
    on_idle: fn(std::time::Duration) -> E,
) -> futures::stream::BoxStream<'static, Result<T, E>>
where
    S: futures::Stream<Item = Result<T, E>> + Send + Unpin + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    use futures::StreamExt;
    futures::stream::unfold(Some(stream), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(item)) => Some((item, Some(s))),
            Ok(None) => None,
            Err(_) => Some((Err(on_idle(idle)), None)),
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    #[tokio::test]
    async fn a_stalled_stream_ends_with_an_error() {
        let items =
            futures::stream::iter([Ok::<_, String>(1), Ok(2)]).chain(futures::stream::pending());
        let got: Vec<_> = idle_timeout(Box::pin(items), Duration::from_millis(50), |d| {
            format!("idle for {d:?}")
        })
        .collect()
        .await;
        assert_eq!(got, vec![Ok(1), Ok(2), Err("idle for 50ms".to_string())]);
    }
}
