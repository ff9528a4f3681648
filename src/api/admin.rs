//! `GET /api/admin/export`: the whole store as an export (docs/EXPORT.md), sent by a live
//! server while it goes on taking writes, for `sessiond backup`.
//!
//! A task reads the store with [`transfer::export`], the same code as `sessiond export`,
//! and hands its lines, gathered into chunks, to the response body through a bounded
//! channel: a client that reads slowly holds up the reading of the store, never more than
//! [`BUFFERED_CHUNKS`] chunks of memory. Once the 200 is sent, a failure can no longer be a
//! status: the body then ends with an error, so the server closes the connection without
//! the end of the chunked body and the client sees a transfer cut short. A whole export
//! ends with the format's end line, which tells the client it has everything.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::{respond, ApiError};
use super::{with_state, SharedState};
use crate::error::{Error, Result};
use crate::store::{NoProgress, Store};
use crate::transfer::{self, ExportSink};

/// Exports sent at once. Each reads the whole store; one at a time is enough for backups
/// and leaves the store's reads to the requests.
pub(super) const MAX_EXPORTS: usize = 1;

/// Chunks waiting between the task reading the store and the socket: with
/// [`CHUNK_BYTES`], the memory a slow client can hold (a session line longer than a chunk
/// makes a longer chunk).
const BUFFERED_CHUNKS: usize = 8;

/// Lines are gathered into chunks of about this many bytes: one socket write each, rather
/// than one per session.
const CHUNK_BYTES: usize = 64 * 1024;

/// The route.
pub(super) fn routes(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    admin_export(state)
}

/// GET /api/admin/export
fn admin_export(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("api")
        .and(warp::path("admin"))
        .and(warp::path("export"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .then(export_store)
        .map(respond)
}

#[utoipa::path(
    get,
    path = "/api/admin/export",
    tag = "admin",
    summary = "Back up the whole store while the server runs",
    description = "The export format of docs/EXPORT.md (`sessiond export`), streamed while the \
        server goes on taking writes: a header line, one line per session with its messages \
        (each session as it stood at one moment), and an end line \
        `{\"end\":true,\"sessions\":N,\"messages\":M}`. Every session and message stored before \
        the request, and not deleted since, is in it. A response without the end line was cut \
        short (the server stopped, or failed reading the store): the server then closes the \
        connection before the end of the body. One export runs at a time. `sessiond backup` \
        drives this route; `sessiond import` restores what it wrote.",
    responses(
        (status = 200, description = "The export, as NDJSON (one JSON object per line).", content_type = "application/x-ndjson", body = String),
        (status = 409, description = "EXPORT_RUNNING: another export is being sent; retry when it has ended.", body = super::error::Envelope),
        super::openapi::ServerErrors,
    ),
)]
async fn export_store(state: SharedState) -> std::result::Result<Response, ApiError> {
    let running = state
        .exports
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::export_running())?;
    let stream = state.stream_permit()?;
    let (pieces, received) = mpsc::channel(BUFFERED_CHUNKS);
    tracing::info!("export started");
    // The task holds them too: a client that goes away frees them only once the task has
    // stopped reading the store, so two exports never read it at once.
    let held = Arc::new((running, stream));
    let task_holds = held.clone();
    let reading = send_export(state.store.clone(), pieces, state.shutdown.clone());
    tokio::spawn(
        async move {
            reading.await;
            drop(task_holds);
        }
        .in_current_span(),
    );
    let body = ExportBody {
        pieces: received,
        stopping: Box::pin(state.shutdown.clone().cancelled_owned()),
        ended: false,
        _held: held,
    };
    let mut response = warp::reply::stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// What the task reading the store hands to the response body.
enum Piece {
    /// The next bytes of the export.
    Chunk(Bytes),
    /// The export is whole: the body may end cleanly.
    End,
}

/// Reads the store into `pieces` until the export is whole, the client goes away, the
/// store fails or the server stops; logs how it ended.
async fn send_export(store: Store, pieces: mpsc::Sender<Piece>, shutdown: CancellationToken) {
    let mut sink = ChunkSink {
        pending: Vec::with_capacity(CHUNK_BYTES),
        pieces: pieces.clone(),
    };
    let outcome = tokio::select! {
        outcome = transfer::export(&store, &mut sink, &NoProgress) => outcome,
        () = shutdown.cancelled() => {
            tracing::warn!("export cut short: the server is stopping");
            return;
        }
    };
    match outcome {
        Ok(moved) => {
            // Without `End` the body ends with an error: only a whole export ends cleanly.
            if pieces.send(Piece::End).await.is_ok() {
                tracing::info!(
                    sessions = moved.sessions,
                    messages = moved.messages,
                    "export read whole"
                );
            }
        }
        // The body ends at shutdown too, closing the channel: say why it was closed.
        Err(_) if shutdown.is_cancelled() => {
            tracing::warn!("export cut short: the server is stopping");
        }
        Err(_) if pieces.is_closed() => {
            tracing::info!("export abandoned: the client went away");
        }
        Err(error) => {
            tracing::error!(%error, "export failed; the response is cut short");
        }
    }
}

/// Gathers an export's lines into chunks of about [`CHUNK_BYTES`] for the body.
struct ChunkSink {
    pending: Vec<u8>,
    pieces: mpsc::Sender<Piece>,
}

impl ChunkSink {
    /// Sends what is gathered; waits while the channel is full (the client is behind).
    async fn send_pending(&mut self) -> Result<()> {
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK_BYTES));
        self.pieces
            .send(Piece::Chunk(chunk.into()))
            .await
            .map_err(|_| {
                Error::Io(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the client stopped reading the export",
                ))
            })
    }
}

impl ExportSink for ChunkSink {
    async fn put(&mut self, line: Vec<u8>) -> Result<()> {
        self.pending.extend_from_slice(&line);
        if self.pending.len() >= CHUNK_BYTES {
            self.send_pending().await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.send_pending().await
    }
}

/// The response body: the chunks as they come, ended cleanly only after [`Piece::End`].
/// When the export stops before it (the store failed, the task is gone) or the server
/// stops, the body ends with an error, which makes the server close the connection without
/// the body's end: the client cannot take a part for the whole.
struct ExportBody {
    pieces: mpsc::Receiver<Piece>,
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
    /// The export slot and the stream permit, held as long as the response is sent.
    _held: Arc<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl Stream for ExportBody {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let cut_short = |why: &str| Some(Err(io::Error::other(format!("export cut short: {why}"))));
        if this.stopping.as_mut().poll(cx).is_ready() {
            this.ended = true;
            return Poll::Ready(cut_short("the server is stopping"));
        }
        match this.pieces.poll_recv(cx) {
            Poll::Ready(Some(Piece::Chunk(chunk))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(Some(Piece::End)) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(cut_short("the export stopped before its end"))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    /// A body over a fresh channel, with the sender and the shutdown token that drive it.
    fn body() -> (ExportBody, mpsc::Sender<Piece>, CancellationToken) {
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
        let held = (
            permits.clone().try_acquire_owned().expect("a permit"),
            permits.try_acquire_owned().expect("a permit"),
        );
        let (pieces, received) = mpsc::channel(BUFFERED_CHUNKS);
        let shutdown = CancellationToken::new();
        let body = ExportBody {
            pieces: received,
            stopping: Box::pin(shutdown.clone().cancelled_owned()),
            ended: false,
            _held: Arc::new(held),
        };
        (body, pieces, shutdown)
    }

    #[tokio::test]
    async fn a_body_ends_cleanly_only_after_the_export_is_whole() {
        let (mut body, pieces, _shutdown) = body();
        pieces.send(Piece::Chunk("line\n".into())).await.unwrap();
        pieces.send(Piece::End).await.unwrap();

        assert_eq!(body.next().await.unwrap().unwrap(), Bytes::from("line\n"));
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn a_body_whose_export_stopped_before_its_end_ends_with_an_error() {
        // A storage failure: the task logs it and drops its sender without `End`.
        let (mut body, pieces, _shutdown) = body();
        pieces.send(Piece::Chunk("line\n".into())).await.unwrap();
        drop(pieces);

        assert!(body.next().await.unwrap().is_ok());
        let error = body.next().await.unwrap().unwrap_err();
        assert!(error.to_string().contains("before its end"), "{error}");
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn a_body_ends_with_an_error_when_the_server_stops() {
        let (mut body, pieces, shutdown) = body();
        pieces.send(Piece::Chunk("line\n".into())).await.unwrap();
        shutdown.cancel();

        let error = body.next().await.unwrap().unwrap_err();
        assert!(error.to_string().contains("stopping"), "{error}");
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn lines_go_out_in_chunks_of_about_chunk_bytes() {
        let (pieces, mut received) = mpsc::channel(BUFFERED_CHUNKS);
        let mut sink = ChunkSink {
            pending: Vec::new(),
            pieces,
        };
        let line = vec![b'x'; 1000];
        for _ in 0..100 {
            sink.put(line.clone()).await.unwrap();
        }
        sink.finish().await.unwrap();
        drop(sink);

        let mut sizes = Vec::new();
        while let Some(Piece::Chunk(chunk)) = received.recv().await {
            sizes.push(chunk.len());
        }
        assert_eq!(sizes.iter().sum::<usize>(), 100_000);
        assert_eq!(sizes.len(), 2, "{sizes:?}");
        assert!(sizes[0] >= CHUNK_BYTES, "{sizes:?}");
    }
}
