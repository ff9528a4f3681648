//! Server-Sent Events as every stream writes them: the event streams and the reply streams of
//! `transport: "sse"`.
//!
//! A stream's body is text chunks: each chunk holds every event that was ready when the
//! stream was polled, so a busy stream writes to its socket once per wake, not once per
//! event. After a small chunk a stream waits out [`WRITE_PACE`] before it writes again, so
//! that under load the events of many writes share one socket write; and an idle stream
//! writes a comment line at least every [`KEEP_ALIVE`].

use std::convert::Infallible;
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use warp::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use warp::reply::Response;
use warp::Reply;

/// A comment line at least this often keeps idle streams (and proxies) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Least time between two small writes of one stream. An event that becomes ready sooner
/// waits out the rest and goes with whatever else is ready then. With a thousand streams on
/// a busy session, the socket writes cost more than the events: pacing them raised the
/// appends per second half as much again (`cargo bench --bench stuck_subscriber`).
const WRITE_PACE: Duration = Duration::from_millis(25);

/// A write at least this large is not paced: it already spreads a write's cost over many
/// events, and pacing it would bound how fast a stream can keep up.
const UNPACED_WRITE_BYTES: usize = 32 * 1024;

/// What an idle stream writes.
const KEEP_ALIVE_COMMENT: &str = ":\n\n";

/// The response streaming `chunks` of frames (see [`frame`]), with a keep-alive comment
/// whenever it is idle.
pub(super) fn reply<S>(chunks: S) -> Response
where
    S: Stream<Item = String> + Send + Sync + 'static,
{
    let body = SseBody::new(chunks);
    let mut response = warp::reply::stream(futures_util::StreamExt::map(body, Ok::<_, Infallible>))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One Server-Sent Event: `event: `, a `data: ` line per line of `data` (JSON is one line,
/// unless it embeds a client's multi-line JSON text), then `id: ` when there is one, and
/// the blank line that ends it, with a space after each colon as the SSE specification's
/// examples write it (hand-written readers test for `data: `; every reader drops that one
/// space, so each line reads back as it was).
pub(super) fn frame(id: Option<u64>, name: &str, data: &str) -> String {
    let mut frame = String::with_capacity(name.len() + data.len() + 48);
    let _ = writeln!(frame, "event: {name}");
    for line in data.split('\n') {
        let _ = writeln!(frame, "data: {line}");
    }
    if let Some(id) = id {
        let _ = writeln!(frame, "id: {id}");
    }
    frame.push('\n');
    frame
}

/// A stream of chunks, paced to one per [`WRITE_PACE`], that writes a comment after
/// [`KEEP_ALIVE`] without a chunk.
struct SseBody<S> {
    chunks: Pin<Box<S>>,
    idle: Pin<Box<tokio::time::Sleep>>,
    /// When the stream may write again, after a chunk.
    pace: Pin<Box<tokio::time::Sleep>>,
    paced: bool,
}

impl<S> SseBody<S> {
    fn new(chunks: S) -> Self {
        SseBody {
            chunks: Box::pin(chunks),
            idle: Box::pin(tokio::time::sleep(KEEP_ALIVE)),
            pace: Box::pin(tokio::time::sleep(Duration::ZERO)),
            paced: false,
        }
    }
}

impl<S: Stream<Item = String>> Stream for SseBody<S> {
    type Item = String;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        if self.paced {
            if self.pace.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.paced = false;
        }
        let polled = self.chunks.as_mut().poll_next(cx);
        let chunk = match polled {
            Poll::Ready(chunk) => chunk,
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Some(KEEP_ALIVE_COMMENT.to_owned()),
                Poll::Pending => return Poll::Pending,
            },
        };
        let now = tokio::time::Instant::now();
        self.idle.as_mut().reset(now + KEEP_ALIVE);
        self.paced = chunk
            .as_ref()
            .is_some_and(|chunk| chunk.len() < UNPACED_WRITE_BYTES);
        if self.paced {
            self.pace.as_mut().reset(now + WRITE_PACE);
        }
        Poll::Ready(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_has_a_space_after_each_colon_and_ends_with_a_blank_line() {
        assert_eq!(
            frame(Some(7), "message", r#"{"a":1}"#),
            "event: message\ndata: {\"a\":1}\nid: 7\n\n"
        );
        assert_eq!(frame(None, "done", "{}"), "event: done\ndata: {}\n\n");
        // A line break inside the data (metadata stored as multi-line JSON text) starts
        // another data line instead of breaking the frame.
        assert_eq!(
            frame(Some(1), "message", "{\n  \"a\": 1\n}"),
            "event: message\ndata: {\ndata:   \"a\": 1\ndata: }\nid: 1\n\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_stream_writes_once_per_pace_with_everything_that_waited() {
        use futures_util::StreamExt;
        use tokio::time::Instant;
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
        let chunks = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|chunk| (chunk, receiver))
        })
        .ready_chunks(16)
        .map(|ready| ready.concat());
        let mut body = SseBody::new(chunks);
        // An event on a quiet stream goes at once.
        sender.send("a".into()).unwrap();
        let started = Instant::now();
        assert_eq!(body.next().await.as_deref(), Some("a"));
        assert_eq!(started.elapsed(), Duration::ZERO);
        // Events right after it wait out the pace, and go together.
        sender.send("b".into()).unwrap();
        sender.send("c".into()).unwrap();
        assert_eq!(body.next().await.as_deref(), Some("bc"));
        assert_eq!(started.elapsed(), WRITE_PACE);
        // Once the pace has passed, the next event goes at once again.
        tokio::time::advance(WRITE_PACE).await;
        sender.send("d".into()).unwrap();
        let later = Instant::now();
        assert_eq!(body.next().await.as_deref(), Some("d"));
        assert_eq!(later.elapsed(), Duration::ZERO);
        // A large write is not paced: a stream that is behind catches up at full speed.
        tokio::time::advance(WRITE_PACE).await;
        let large = "x".repeat(UNPACED_WRITE_BYTES);
        sender.send(large.clone()).unwrap();
        assert_eq!(body.next().await, Some(large));
        sender.send("e".into()).unwrap();
        let after_large = Instant::now();
        assert_eq!(body.next().await.as_deref(), Some("e"));
        assert_eq!(after_large.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_writes_a_comment_and_a_busy_one_does_not() {
        use futures_util::StreamExt;
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
        let chunks = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|chunk| (chunk, receiver))
        });
        let mut kept = SseBody::new(chunks);
        tokio::time::advance(KEEP_ALIVE - Duration::from_secs(1)).await;
        sender.send("event".into()).unwrap();
        assert_eq!(kept.next().await.as_deref(), Some("event"));
        // The chunk reset the timer: a second later is not yet idle for KEEP_ALIVE.
        tokio::time::advance(Duration::from_secs(1)).await;
        sender.send("again".into()).unwrap();
        assert_eq!(kept.next().await.as_deref(), Some("again"));
        assert_eq!(kept.next().await.as_deref(), Some(KEEP_ALIVE_COMMENT));
        drop(sender);
        assert_eq!(kept.next().await, None);
    }
}
