//! What the server records of each request: its id (taken from `X-Request-Id` when the
//! client sends a sane one, else made), its metrics, and one access line when its response
//! ends. Bodies, message content, metadata and keys are never recorded: only the method, the
//! route template, the status, the duration, the bytes sent, the id and the peer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warp::http::{HeaderMap, HeaderValue, Method};

use crate::metrics::Metrics;

/// The header that carries a request's id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest request id taken from a client.
const MAX_REQUEST_ID: usize = 128;

/// The status an access line names for a request whose client went away before the answer
/// was ready (as nginx does).
const CLIENT_WENT_AWAY: u16 = 499;

tokio::task_local! {
    static CURRENT_REQUEST_ID: Arc<str>;
}

/// The id of the request being answered on this task, or a new one where there is none
/// (routes served by another program's server, when embedded).
pub fn current_request_id() -> Arc<str> {
    CURRENT_REQUEST_ID
        .try_with(Arc::clone)
        .unwrap_or_else(|_| new_request_id())
}

fn new_request_id() -> Arc<str> {
    Arc::from(uuid::Uuid::new_v4().to_string().as_str())
}

/// Runs `answer` as the request `id`'s: [`current_request_id`] names it there.
pub(super) async fn with_request_id<F: std::future::Future>(id: Arc<str>, answer: F) -> F::Output {
    CURRENT_REQUEST_ID.scope(id, answer).await
}

/// The client's id when it is sane (1 to 128 of `A-Z a-z 0-9 - _ . :`), else a new one:
/// an id lands in log lines, where anything else could forge or break them.
pub(super) fn request_id(headers: &HeaderMap) -> Arc<str> {
    let given = headers
        .get(REQUEST_ID)
        .map(HeaderValue::as_bytes)
        .filter(|id| {
            (1..=MAX_REQUEST_ID).contains(&id.len())
                && id
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        });
    match given {
        Some(id) => Arc::from(String::from_utf8_lossy(id).as_ref()),
        None => new_request_id(),
    }
}

/// A request's method as metrics and logs name it: one of HTTP's own, else `other`, as a
/// client may send any token as a method and each would make series of its own.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Where requests are recorded.
#[derive(Clone)]
pub struct RequestLog {
    metrics: Arc<Metrics>,
    route_of: fn(&str) -> &'static str,
}

impl RequestLog {
    /// Records into `metrics`, naming each request by the route template `route_of` gives
    /// its path.
    pub fn new(metrics: Arc<Metrics>, route_of: fn(&str) -> &'static str) -> Self {
        RequestLog { metrics, route_of }
    }

    /// The record of a request just arrived.
    pub(super) fn begin(
        &self,
        method: &Method,
        path: &str,
        id: Arc<str>,
        peer: SocketAddr,
    ) -> Arc<Access> {
        let route = (self.route_of)(path);
        Arc::new(Access {
            span: tracing::info_span!("request", request_id = %id),
            metrics: self.metrics.clone(),
            method: method_label(method),
            route,
            id,
            peer,
            started: Instant::now(),
            status: Mutex::new(None),
            bytes: AtomicU64::new(0),
            logged: AtomicBool::new(false),
        })
    }
}

/// One request's record, shared by its answer and its response body.
pub(super) struct Access {
    /// Names the request in every line logged while it is answered.
    pub(super) span: tracing::Span,
    metrics: Arc<Metrics>,
    method: &'static str,
    route: &'static str,
    id: Arc<str>,
    peer: SocketAddr,
    started: Instant,
    /// The status, once the response head is ready.
    status: Mutex<Option<u16>>,
    /// Response body bytes handed to the connection.
    bytes: AtomicU64,
    /// Whether the access line was written: a response ends once, but both its body's end
    /// and its drop report it.
    logged: AtomicBool,
}

impl Access {
    /// The request's id.
    pub(super) fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The response head is ready: counts the request.
    pub(super) fn answered(&self, status: u16) {
        self.record_head(status, self.started.elapsed());
    }

    fn record_head(&self, status: u16, elapsed: Duration) {
        let mut recorded = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recorded.is_none() {
            *recorded = Some(status);
            self.metrics
                .observe_request(self.route, self.method, status, elapsed);
        }
    }

    /// Body bytes sent.
    pub(super) fn sent(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The response ended (sent whole, or dropped): logs its access line, once.
    pub(super) fn finished(&self) {
        if self.logged.swap(true, Ordering::Relaxed) {
            return;
        }
        let elapsed = self.started.elapsed();
        let status = *self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let status = status.unwrap_or_else(|| {
            self.record_head(CLIENT_WENT_AWAY, elapsed);
            CLIENT_WENT_AWAY
        });
        self.span.in_scope(|| {
            tracing::info!(
                target: "sessiond::access",
                method = self.method,
                route = self.route,
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                bytes = self.bytes.load(Ordering::Relaxed),
                remote = %self.peer,
                "request"
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            REQUEST_ID,
            HeaderValue::from_bytes(id).expect("a header value"),
        );
        headers
    }

    #[test]
    fn a_sane_request_id_is_kept_and_any_other_replaced() {
        assert_eq!(&*request_id(&headers(b"abc-123_x.y:z")), "abc-123_x.y:z");
        let longest = "a".repeat(MAX_REQUEST_ID);
        assert_eq!(&*request_id(&headers(longest.as_bytes())), longest);
        for insane in [
            "a".repeat(MAX_REQUEST_ID + 1),
            "two words".into(),
            "line\tbreak".into(),
            "quote\"d".into(),
        ] {
            let made = request_id(&headers(insane.as_bytes()));
            assert_ne!(&*made, insane);
            assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
        }
        let made = request_id(&HeaderMap::new());
        assert!(uuid::Uuid::parse_str(&made).is_ok());
    }
}
