//! GET /sessions/health.

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::error::{respond, ApiError};
use super::views::json;
use super::{sessions_prefix, with_state, AppState};

/// The health route's path; it never requires the API key.
pub(super) const PATH: &str = "/api/messaging/sessions/health";

/// The health route.
pub(super) fn routes(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    health_check(state)
}

/// GET /sessions/health
fn health_check(state: &AppState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    sessions_prefix()
        .and(warp::path("health"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .then(check_health)
        .map(respond)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    status: &'static str,
    active_sessions: u64,
    expiring_soon: u64,
    timestamp: String,
    uptime: f64,
}

async fn check_health(state: AppState) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let counts = state.store.counts(now)?;
    Ok(json(
        StatusCode::OK,
        &Health {
            status: "healthy",
            active_sessions: counts.active,
            expiring_soon: counts.expiring_soon,
            timestamp: now.to_rfc3339(),
            uptime: state.started.elapsed().as_secs_f64(),
        },
    ))
}
