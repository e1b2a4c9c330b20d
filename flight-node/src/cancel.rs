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

/// Ends a response stream whose consumer stopped asking for items: once an item has been
/// handed out and `stall` passes without the next being asked for, a watchdog drops the
/// inner stream (and with it every buffer and budget reservation it holds) and calls
/// `on_stall`. If the consumer comes back, it gets `stalled(stall)` and then the end.
///
/// A server cannot see a client that stops reading any other way: the HTTP/2 layer stops
/// polling a response body while the client's flow-control window is full.
pub fn end_when_stalled<S, T>(
    stream: S,
    stall: std::time::Duration,
    stalled: fn(std::time::Duration) -> T,
    on_stall: impl FnOnce() + Send + 'static,
) -> futures::stream::BoxStream<'static, T>
where
    S: futures::Stream<Item = T> + Send + Unpin + 'static,
    T: Send + 'static,
{
    use futures::StreamExt;
    let state = std::sync::Arc::new(std::sync::Mutex::new(Watched {
        inner: Some(stream),
        handed_out: None,
        stalled: false,
    }));
    let weak = std::sync::Arc::downgrade(&state);
    tokio::spawn(async move {
        let tick = (stall / 4).max(std::time::Duration::from_millis(5));
        loop {
            tokio::time::sleep(tick).await;
            let Some(state) = weak.upgrade() else { return };
            let mut w = state.lock().unwrap_or_else(|p| p.into_inner());
            if w.inner.is_none() {
                return;
            }
            if w.handed_out.is_some_and(|t| t.elapsed() >= stall) {
                let inner = w.inner.take();
                w.stalled = true;
                drop(w);
                drop(inner);
                on_stall();
                return;
            }
        }
    });
    futures::stream::poll_fn(move |cx| {
        let mut w = state.lock().unwrap_or_else(|p| p.into_inner());
        if std::mem::take(&mut w.stalled) {
            return std::task::Poll::Ready(Some(stalled(stall)));
        }
        w.handed_out = None;
        let Some(inner) = w.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = inner.poll_next_unpin(cx);
        match &polled {
            std::task::Poll::Ready(Some(_)) => w.handed_out = Some(std::time::Instant::now()),
            std::task::Poll::Ready(None) => w.inner = None,
            std::task::Poll::Pending => {}
        }
        polled
    })
    .boxed()
}

struct Watched<S> {
    inner: Option<S>,
    /// When the last item was handed out, until the next is asked for.
    handed_out: Option<std::time::Instant>,
    /// Set by the watchdog; the consumer gets the stall error once.
    stalled: bool,
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

    #[tokio::test]
    async fn a_stream_not_read_is_ended_and_its_items_dropped() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        struct Held(Arc<AtomicBool>);
        impl Drop for Held {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let held = Held(Arc::clone(&dropped));
        let noticed = Arc::new(AtomicBool::new(false));
        let items = futures::stream::iter(0..10).map(move |i| {
            let _ = &held;
            Ok::<_, String>(i)
        });
        let flag = Arc::clone(&noticed);
        let mut s = end_when_stalled(
            items,
            Duration::from_millis(60),
            |d| Err(format!("not read for {d:?}")),
            move || flag.store(true, Ordering::SeqCst),
        );
        // A consumer that keeps reading, slowly but within the limit, gets everything.
        for want in 0..3 {
            assert_eq!(s.next().await, Some(Ok(want)));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!dropped.load(Ordering::SeqCst));
        // One that stops: the inner stream is dropped while it is away.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(dropped.load(Ordering::SeqCst) && noticed.load(Ordering::SeqCst));
        assert_eq!(s.next().await, Some(Err("not read for 60ms".to_string())));
        assert_eq!(s.next().await, None);
        // A stream read to its end is not reported.
        let flag = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&flag);
        let all: Vec<_> = end_when_stalled(
            futures::stream::iter([1, 2]),
            Duration::from_millis(10),
            |_| 0,
            move || f.store(true, Ordering::SeqCst),
        )
        .collect()
        .await;
        assert_eq!(all, vec![1, 2]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!flag.load(Ordering::SeqCst));
    }
}
