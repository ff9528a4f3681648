//! The HTTP server loop: accepts connections under a cap, with a header-read timeout and an
//! idle timeout, and shuts down gracefully (warp's own `serve` offers none of these limits).
//! Every request gets an id and is recorded ([`access`]).

pub mod access;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warp::filters::BoxedFilter;

use access::{Access, RequestLog};

/// Connection limits.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most connections served at once. At the cap, a new connection closes the one that
    /// has waited longest for a request (see [`serve`]), or waits for one to end.
    pub max_connections: usize,
    /// A client must send a whole request head within this long of connecting or of its
    /// previous response.
    pub header_read_timeout: Duration,
    /// A client must send a whole request, head and body, within this long of connecting or
    /// of its previous response.
    pub request_read_timeout: Duration,
    /// A connection with no bytes read or written for this long is closed, unless the
    /// server is answering one of its requests (a held reply, an event stream) and the
    /// client reads what it is sent.
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests before closing their connections.
    pub drain_timeout: Duration,
    /// Largest request head (request line and headers) answered; larger is 431.
    pub max_head_bytes: usize,
}

/// Requests one HTTP/2 connection may have in flight at once.
pub const H2_STREAMS_PER_CONNECTION: u32 = 32;

/// Serves `routes` on `listener` until `shutdown`, then stops accepting, lets in-flight
/// requests finish (up to the drain timeout) and returns. Each request is recorded in `log`.
pub async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(warp::reply::Response,)>,
    limits: ConnectionLimits,
    log: RequestLog,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Kept so that connections still open after the drain deadline (a client that stopped
    // reading) can be dropped.
    let mut connections: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The read buffer holds a head a little over the cap, so that heads just over it get
    // the envelope from `Tracked`, and those far over it hyper's own 431, rewritten.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size((limits.max_head_bytes + 16 * 1024).max(8192));
    // One HTTP/2 connection must not hold more requests (and their bodies) than this.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_STREAMS_PER_CONNECTION)
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX));
    let open = Arc::new(OpenConnections::default());
    let mut next_id: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(tokio::sync::TryAcquireError::Closed) => break,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                // At the cap, a client sending nothing must not keep this one out.
                open.close_longest_waiting();
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::new(ConnectionState::new());
        next_id += 1;
        let (id, close) = (next_id, open.register(next_id, state.clone()));
        let state_of_connection = state.clone();
        let io = TokioIo::new(IdleTimeout::new(stream, limits, state.clone()));
        let service = Tracked {
            inner: hyper_util::service::TowerToHyperService::new(warp::service(routes.clone())),
            state,
            max_head_bytes: limits.max_head_bytes,
            log: log.clone(),
            peer,
        };
        let connection = graceful.watch(
            builder
                .serve_connection_with_upgrades(io, service)
                .into_owned(),
        );
        let open = open.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                biased;
                ended = &mut connection => Some(ended),
                () = close.cancelled() => {
                    // A request read whole since it was picked (its write may be under way)
                    // is answered, not cut off; the new connection waits for another slot.
                    if state_of_connection.phases().answering > 0 {
                        Some(connection.await)
                    } else {
                        tracing::debug!(%peer, "closed a connection waiting for a request, to make room at the connection cap");
                        None
                    }
                }
            };
            if let Some(Err(error)) = ended {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            open.forget(id);
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time; closing their connections");
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
}

/// The open connections, so that one can be closed to make room at the connection cap.
#[derive(Default)]
struct OpenConnections {
    open: Mutex<HashMap<u64, OpenConnection>>,
}

struct OpenConnection {
    state: Arc<ConnectionState>,
    close: CancellationToken,
}

impl OpenConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenConnection>> {
        // Inserts and removes only: a panic cannot leave the map half-updated.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a connection; the token closes it.
    fn register(&self, id: u64, state: Arc<ConnectionState>) -> CancellationToken {
        let close = CancellationToken::new();
        self.lock().insert(
            id,
            OpenConnection {
                state,
                close: close.clone(),
            },
        );
        close
    }

    fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the connection that has waited longest for a request, if there is one: one
    /// silent since it connected or still sending a request first, then one idle between
    /// requests (a client that was served, and may send another). A connection the server
    /// is answering (a held reply, an event stream) is kept.
    fn close_longest_waiting(&self) {
        let mut open = self.lock();
        let longest = open
            .iter()
            .filter_map(|(id, connection)| {
                let phases = *connection.state.phases();
                let idle_after_answer = phases.answered_one && phases.reading == 0;
                (phases.answering == 0).then_some((idle_after_answer, phases.waiting_since, *id))
            })
            .min();
        if let Some(connection) = longest.and_then(|(_, _, id)| open.remove(&id)) {
            connection.close.cancel();
        }
    }
}

/// What a connection is doing, as its timeouts see it: waiting for a request (from accept,
/// or from the end of the last exchange), reading one, or answering one.
struct ConnectionState {
    inner: Mutex<Phases>,
}

#[derive(Clone, Copy)]
struct Phases {
    /// Requests whose head has arrived and whose body has not been read whole.
    reading: usize,
    /// Requests read whole whose response is not finished.
    answering: usize,
    /// When the connection began waiting for the request it is now waiting for or reading.
    waiting_since: Instant,
    /// Whether a response has been sent whole on it.
    answered_one: bool,
}

impl ConnectionState {
    fn new() -> Self {
        ConnectionState {
            inner: Mutex::new(Phases {
                reading: 0,
                answering: 0,
                waiting_since: Instant::now(),
                answered_one: false,
            }),
        }
    }

    fn phases(&self) -> std::sync::MutexGuard<'_, Phases> {
        // Counters and an instant: a panic cannot leave them half-updated.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One request and its answer. Once the request has been read whole (or its body given
/// up) and until its response has been sent whole, the wait is the server's — a held
/// reply, an event stream — and the connection is not idle.
struct Exchange {
    connection: Arc<ConnectionState>,
    /// (request read, response done).
    state: Mutex<(bool, bool)>,
}

impl Exchange {
    fn new(connection: Arc<ConnectionState>) -> Arc<Self> {
        connection.phases().reading += 1;
        Arc::new(Exchange {
            connection,
            state: Mutex::new((false, false)),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (bool, bool)> {
        // Two booleans: a panic cannot leave them half-updated.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn request_read(&self) {
        let mut state = self.state();
        if !state.0 {
            state.0 = true;
            let mut phases = self.connection.phases();
            phases.reading -= 1;
            if !state.1 {
                phases.answering += 1;
            }
        }
    }

    fn response_done(&self) {
        let mut state = self.state();
        if !state.1 {
            state.1 = true;
            let mut phases = self.connection.phases();
            if state.0 {
                phases.answering -= 1;
            }
            phases.answered_one = true;
            if phases.answering == 0 && phases.reading == 0 {
                phases.waiting_since = Instant::now();
            }
        }
    }
}

/// The connection's service, with each request's [`Exchange`] tracked and recorded.
struct Tracked<S> {
    inner: S,
    state: Arc<ConnectionState>,
    max_head_bytes: usize,
    log: RequestLog,
    peer: std::net::SocketAddr,
}

/// The size of a request's head as sent over HTTP/1.1: request line, headers, blank line.
fn head_size<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let target = uri
        .path_and_query()
        .map_or(1, |target| target.as_str().len())
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len() + 8);
    let line = request.method().as_str().len() + target + 12;
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + headers + 2
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<TrackedBody<Incoming>>, Response = warp::reply::Response>,
    S::Future: Send + 'static,
{
    type Response = Response<TrackedBody<<warp::reply::Response as BodyOf>::Body>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        // Measured as the client sent it, before the id is added.
        let head_too_large = head_size(&request) > self.max_head_bytes;
        let id = access::request_id(request.headers());
        let access = self.log.begin(
            request.method(),
            request.uri().path(),
            id.clone(),
            self.peer,
        );
        // Always a valid value: `request_id` keeps or makes only visible ASCII.
        let id_header = hyper::header::HeaderValue::from_str(&id).ok();
        if let Some(value) = &id_header {
            request
                .headers_mut()
                .insert(access::REQUEST_ID, value.clone());
        }
        let exchange = Exchange::new(self.state.clone());
        let request = request.map(|body| TrackedBody::request(body, exchange.clone()));
        // Dropped unanswered (the client went away), the guard still ends the exchange.
        let answer = ResponseGuard {
            exchange,
            access: access.clone(),
        };
        let wrap = move |mut response: warp::reply::Response| {
            if let Some(value) = id_header {
                response.headers_mut().insert(access::REQUEST_ID, value);
            }
            answer.access.answered(response.status().as_u16());
            response.map(|body| TrackedBody {
                inner: body,
                end: BodyEnd::Response(answer),
            })
        };
        if head_too_large {
            let refused = crate::api::ApiError::headers_too_large(self.max_head_bytes)
                .closing()
                .into_response();
            return Box::pin(async move { Ok(wrap(refused)) });
        }
        let response = self.inner.call(request);
        let span = access.span.clone();
        Box::pin(access::with_request_id(
            access.id().clone(),
            async move { Ok(wrap(response.await?)) }.instrument(span),
        ))
    }
}

/// The body type of a response type.
trait BodyOf {
    type Body;
}

impl<B> BodyOf for Response<B> {
    type Body = B;
}

/// Ends the response side of an exchange, and its record, when dropped.
struct ResponseGuard {
    exchange: Arc<Exchange>,
    access: Arc<Access>,
}

impl ResponseGuard {
    fn done(&self) {
        self.exchange.response_done();
        self.access.finished();
    }
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        self.done();
    }
}

/// What reaching (or dropping) the end of a body means for its exchange.
enum BodyEnd {
    Request(Arc<Exchange>),
    Response(ResponseGuard),
}

/// A request or response body that reports its end to its exchange.
struct TrackedBody<B> {
    inner: B,
    end: BodyEnd,
}

impl<B: Body> TrackedBody<B> {
    fn request(inner: B, exchange: Arc<Exchange>) -> Self {
        if inner.is_end_stream() {
            exchange.request_read();
        }
        TrackedBody {
            inner,
            end: BodyEnd::Request(exchange),
        }
    }

    fn ended(&self) {
        match &self.end {
            BodyEnd::Request(exchange) => exchange.request_read(),
            BodyEnd::Response(guard) => guard.done(),
        }
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        // A request body given up unread leaves nothing to wait for from the client.
        if let BodyEnd::Request(exchange) = &self.end {
            exchange.request_read();
        }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended(),
            Poll::Ready(Some(Ok(frame))) => {
                if let (BodyEnd::Response(guard), Some(data)) = (&self.end, frame.data_ref()) {
                    guard.access.sent(bytes::Buf::remaining(data) as u64);
                }
            }
            _ => {}
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

/// A stream that fails with `TimedOut` when its client is too slow: no byte moved either way
/// for the idle timeout, no whole request head within the header timeout, or no whole
/// request within the request timeout (both counted from accept or from the end of the
/// previous exchange). None applies while the server is answering a request and the
/// client reads what it is sent.
struct IdleTimeout {
    stream: TcpStream,
    limits: ConnectionLimits,
    last_moved: Instant,
    deadline: Pin<Box<Sleep>>,
    state: Arc<ConnectionState>,
    /// An envelope answer being written in place of hyper's empty one: its bytes, how many
    /// are written, and how many bytes of hyper's it stands for.
    replacing: Option<(Vec<u8>, usize, usize)>,
    /// Whether the last write found the client not reading (the socket full).
    write_blocked: bool,
}

impl IdleTimeout {
    fn new(stream: TcpStream, limits: ConnectionLimits, state: Arc<ConnectionState>) -> Self {
        let now = Instant::now();
        IdleTimeout {
            stream,
            limits,
            last_moved: now,
            deadline: Box::pin(tokio::time::sleep_until(now + limits.header_read_timeout)),
            state,
            replacing: None,
            write_blocked: false,
        }
    }

    /// Writes `data`, or the envelope answer in its place when `data` is one of the empty
    /// answers hyper writes on its own for a request it cannot parse (400, 414, 431).
    fn poll_write_answer(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.replacing.is_none() {
            if let Some(replacement) = envelope_for_canned(data, self.limits.max_head_bytes) {
                self.replacing = Some((replacement, 0, data.len()));
            }
        }
        let Some((bytes, written, stands_for)) = self.replacing.as_mut() else {
            let polled = Pin::new(&mut self.stream).poll_write(cx, data);
            return self.after_write(cx, polled);
        };
        while *written < bytes.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    self.write_blocked = true;
                    return self.check_idle(cx);
                }
            }
        }
        let stands_for = *stands_for;
        self.replacing = None;
        self.moved();
        Poll::Ready(Ok(stands_for))
    }

    /// Accounts for a write to the socket: bytes moved, or the client is not reading.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                self.write_blocked = true;
                self.check_idle(cx)
            }
        }
    }

    fn moved(&mut self) {
        self.last_moved = Instant::now();
        self.write_blocked = false;
    }

    /// The instant the client's time runs out, or `None` while the server is answering and
    /// the client is keeping up with it. A client that stops reading an answer is idle.
    fn due(&self) -> Option<Instant> {
        let phases = *self.state.phases();
        if phases.answering > 0 {
            return self
                .write_blocked
                .then(|| self.last_moved + self.limits.idle_timeout);
        }
        let request_limit = if phases.reading > 0 {
            self.limits.request_read_timeout
        } else {
            self.limits.header_read_timeout
        };
        Some((self.last_moved + self.limits.idle_timeout).min(phases.waiting_since + request_limit))
    }

    /// When the inner operation is pending, fails it if the client's time has run out.
    fn check_idle<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        loop {
            let due = self
                .due()
                .unwrap_or_else(|| Instant::now() + self.limits.idle_timeout);
            if self.deadline.deadline() != due {
                self.deadline.as_mut().reset(due);
            }
            match self.deadline.as_mut().poll(cx) {
                // Time's up unless the phase changed since the deadline was set.
                Poll::Ready(()) if self.due().is_some_and(|due| due <= Instant::now()) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took too long",
                    )))
                }
                Poll::Ready(()) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncRead for IdleTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.check_idle(cx),
        }
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_answer(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's own answers go out whole, in one buffer.
        if let Some(first) = bufs.iter().find(|buf| !buf.is_empty()) {
            if self.replacing.is_some()
                || envelope_for_canned(first, self.limits.max_head_bytes).is_some()
            {
                return self.poll_write_answer(cx, first);
            }
        }
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The envelope answer for one of the empty answers hyper writes by itself when it cannot
/// parse a request (`HTTP/1.1 431 …`, `414`, `400` with `content-length: 0`), which would
/// otherwise reach the client without the envelope every error has. Handlers' answers are
/// never empty errors, so they never match.
fn envelope_for_canned(data: &[u8], max_head_bytes: usize) -> Option<Vec<u8>> {
    let error = match data.get(..13)? {
        b"HTTP/1.1 431 " => crate::api::ApiError::headers_too_large(max_head_bytes),
        b"HTTP/1.1 414 " => crate::api::ApiError::uri_too_long(),
        b"HTTP/1.1 400 " => crate::api::ApiError::invalid_request(),
        _ => return None,
    };
    let head_end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&data[..head_end]).ok()?;
    let empty = head
        .split("\r\n")
        .any(|line| line.eq_ignore_ascii_case("content-length: 0"));
    if data.len() != head_end + 4 || !empty {
        return None;
    }
    let body = error.envelope_json();
    let date = head
        .split("\r\n")
        .find(|line| {
            line.get(..5)
                .is_some_and(|name| name.eq_ignore_ascii_case("date:"))
        })
        .map(|line| format!("{line}\r\n"))
        .unwrap_or_default();
    let status = error.status;
    Some(
        format!(
            "HTTP/1.1 {} {}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{date}\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default(),
            body.len()
        )
        .into_bytes(),
    )
}
