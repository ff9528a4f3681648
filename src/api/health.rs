//! GET /sessions/health.

use std::sync::Arc;

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::error::{respond, ApiError};
use super::views::json;
use super::{sessions_prefix, with_state, AppState, SharedState};

/// The health route's path; it never requires the API key.
pub(super) const PATH: &str = "/api/messaging/sessions/health";

/// The health route.
pub(super) fn routes(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    health_check(state)
}

/// GET /sessions/health
fn health_check(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    sessions_prefix()
        .and(warp::path("health"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .then(check_health)
        .map(respond)
}

/// The health report.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Health {
    /// `healthy`, or `degraded` while the store refuses writes (the answer is then a 503,
    /// in the error envelope, with this report beside it).
    #[schema(example = "healthy")]
    status: &'static str,
    /// Why the store refuses writes; only when `degraded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Sessions that have not expired.
    active_sessions: u64,
    /// Active sessions inside their warning window.
    expiring_soon: u64,
    /// The server's time.
    #[schema(format = DateTime)]
    timestamp: String,
    /// Seconds since the server started, with a fraction.
    uptime: f64,
}

#[utoipa::path(
    get,
    path = "/api/messaging/sessions/health",
    tag = "health",
    summary = "Health",
    responses(
        (status = 200, description = "The server is up; counts are served from counters.", body = Health),
        (status = 500, description = "INTERNAL_ERROR: never leaks internals; logged with a request id.", body = super::error::Envelope),
        (status = 503, description = "STORAGE_UNAVAILABLE: the store refuses writes (a full disk, say) or cannot be read. While reads go on, the envelope carries the health report's fields beside it, `status` being `degraded` and `reason` saying why.", body = super::error::Envelope),
    ),
    security(()),
)]
async fn check_health(state: Arc<AppState>) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let degraded = state.store.degraded();
    let counts = state.store.counts(now).await?;
    let health = Health {
        status: if degraded.is_some() {
            "degraded"
        } else {
            "healthy"
        },
        reason: degraded.clone(),
        active_sessions: counts.active,
        expiring_soon: counts.expiring_soon,
        timestamp: now.to_rfc3339(),
        uptime: state.started.elapsed().as_secs_f64(),
    };
    let Some(reason) = degraded else {
        return Ok(json(StatusCode::OK, &health));
    };
    let refusal = ApiError::storage_degraded(&reason);
    Ok(json(
        refusal.status,
        &DegradedHealth {
            envelope: refusal.envelope(),
            health,
        },
    ))
}

/// The 503 health answer while the store refuses writes: the error envelope with the
/// health report beside it, for clients that read either.
#[derive(Serialize)]
struct DegradedHealth<'a> {
    #[serde(flatten)]
    envelope: super::error::Envelope<'a>,
    #[serde(flatten)]
    health: Health,
}
