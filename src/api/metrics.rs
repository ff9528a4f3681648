//! GET /metrics: the server's metrics in Prometheus's text format.

use std::sync::Arc;
use std::time::Duration;

use warp::http::header::CONTENT_TYPE;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::{with_state, AppState, SharedState};
use crate::metrics::Snapshot;

/// The route's path.
pub(crate) const PATH: &str = "/metrics";

/// How long a scrape waits for the store's counts and size: a scrape must answer even while
/// the store is slow or out of reach (the gauges then keep their last values).
const SCRAPE_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// GET /metrics
pub(super) fn routes(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .then(scrape)
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    summary = "Metrics in Prometheus's text format",
    description = "Requests by route template, the writer's batches and durations, writes refused and failed, sessions, renewals, events, streams, the sweeper and notifier, the store's size and state, the build, and the process. Also served without the key on --metrics-addr.",
    responses(
        (status = 200, description = "The metrics.", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "UNAUTHORIZED: an API key is configured and X-API-Key is missing or wrong.", body = super::error::Envelope),
    ),
)]
async fn scrape(state: Arc<AppState>) -> Response {
    let now = state.clock.now();
    let (sessions, store_bytes) = read_store(&state, now).await;
    let snapshot = Snapshot {
        now,
        sessions,
        store_bytes,
        storage_unavailable: state.store.degraded().is_some(),
        open_streams: state
            .max_streams
            .saturating_sub(state.streams.available_permits()),
    };
    let mut response = Response::new(state.metrics.render(&snapshot).into());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

/// The store's session counts (as health reads them) and its size.
async fn read_store(
    state: &AppState,
    now: crate::domain::Timestamp,
) -> (Option<(u64, u64)>, Option<u64>) {
    let counts = tokio::time::timeout(SCRAPE_STORE_TIMEOUT, state.store.counts(now));
    let size = tokio::time::timeout(SCRAPE_STORE_TIMEOUT, state.store.stored_bytes());
    let (counts, size) = tokio::join!(counts, size);
    let sessions = match counts {
        Ok(Ok(counts)) => Some((counts.active, counts.expiring_soon)),
        _ => None,
    };
    (sessions, size.ok().and_then(Result::ok))
}
