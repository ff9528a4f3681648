//! Session routes: create, list, get, delete, renew, heartbeat, timeout update.

use serde::Serialize;
use serde_json::json;
use uuid::Uuid;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::error::{respond, ApiError};
use super::request::{
    metadata_field, path_uuid, read_json_object, require_fields, timeout_config_field,
    timeout_patch, uuid_field, JsonObject, Query,
};
use super::views::{json, SessionCreated, SessionInfo};
use super::{sessions_prefix, with_state, AppState};
use crate::domain::{EventKind, Renewal, Session, SessionError, Timestamp};
use crate::store::{SessionQuery, StatusFilter};

/// Default and largest page size of the session list.
const LIST_LIMIT: (usize, usize) = (100, 1000);
/// Prefix of list cursors, so a token from elsewhere is recognised as foreign.
const CURSOR_PREFIX: &str = "s1.";

/// Every session route.
pub(super) fn routes(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    sessions_create(state)
        .or(sessions_list(state))
        .unify()
        .or(session_get(state))
        .unify()
        .or(session_delete(state))
        .unify()
        .or(session_renew(state))
        .unify()
        .or(session_heartbeat(state))
        .unify()
        .or(session_timeout_update(state))
        .unify()
}

/// The request body as a JSON object, or the error explaining why it is not one.
pub(super) fn json_body(
    state: &AppState,
) -> impl Filter<Extract = (Result<JsonObject, ApiError>,), Error = Rejection> + Clone {
    let limit = state.max_body_bytes;
    warp::header::headers_cloned()
        .and(warp::body::stream())
        .then(move |headers: HeaderMap, body| async move {
            read_json_object(&headers, body, limit).await
        })
}

/// The query string, parsed (empty when there is none).
pub(super) fn query() -> impl Filter<Extract = (Query,), Error = std::convert::Infallible> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .map(|raw: String| Query::parse(&raw))
}

/// `/api/messaging/sessions/{sessionId}` and what follows.
pub(super) fn session_path() -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    sessions_prefix().and(warp::path::param::<String>())
}

/// POST /sessions
fn sessions_create(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    sessions_prefix()
        .and(warp::path::end())
        .and(warp::post())
        .and(with_state(state))
        .and(json_body(state))
        .then(create_session)
        .map(respond)
}

/// GET /sessions
fn sessions_list(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    sessions_prefix()
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .and(query())
        .then(list_sessions)
        .map(respond)
}

/// GET /sessions/{sessionId}
fn session_get(state: &AppState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session_path()
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .then(get_session)
        .map(respond)
}

/// DELETE /sessions/{sessionId}
fn session_delete(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session_path()
        .and(warp::path::end())
        .and(warp::delete())
        .and(with_state(state))
        .then(delete_session)
        .map(respond)
}

/// POST /sessions/{sessionId}/renew
fn session_renew(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session_path()
        .and(warp::path("renew"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_state(state))
        .then(renew_session)
        .map(respond)
}

/// POST /sessions/{sessionId}/heartbeat
fn session_heartbeat(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session_path()
        .and(warp::path("heartbeat"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_state(state))
        .then(heartbeat_session)
        .map(respond)
}

/// PATCH /sessions/{sessionId}/timeout
fn session_timeout_update(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session_path()
        .and(warp::path("timeout"))
        .and(warp::path::end())
        .and(warp::patch())
        .and(with_state(state))
        .and(json_body(state))
        .then(update_session_timeout)
        .map(respond)
}

/// The session if it exists and has not expired, with the instant that was checked.
pub(super) fn load_active(state: &AppState, id: Uuid) -> Result<(Session, Timestamp), ApiError> {
    let now = state.clock.now();
    let session = state.store.session(id)?.ok_or(SessionError::NotFound(id))?;
    session.check_active(now)?;
    Ok((session, now))
}

async fn create_session(
    state: AppState,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
    let body = body?;
    require_fields(&body, &["agentId", "userId"])?;
    let (Some(agent_id), Some(user_id)) =
        (uuid_field(&body, "agentId")?, uuid_field(&body, "userId")?)
    else {
        return Err(ApiError::missing_fields(&["agentId", "userId"]));
    };
    let metadata_json = metadata_field(&body)?;
    let timeout = state
        .policy
        .resolve_new(timeout_config_field(&body, &state.policy)?)?;
    let session = Session::new(
        Uuid::now_v7(),
        agent_id,
        user_id,
        timeout,
        metadata_json,
        state.clock.now(),
    );
    state.store.create_session(&session)?;
    state.store.durable().await?;
    Ok(json(StatusCode::CREATED, &SessionCreated::new(&session)))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionList<'a> {
    sessions: Vec<SessionInfo<'a>>,
    total: u64,
    next_cursor: Option<String>,
    stats: ListStats,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListStats {
    total_sessions: u64,
    active_sessions: u64,
    expired_sessions: u64,
}

fn parse_cursor(token: &str) -> Result<Uuid, ApiError> {
    token
        .strip_prefix(CURSOR_PREFIX)
        .filter(|hex| {
            hex.len() == 32
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .and_then(|hex| Uuid::try_parse(hex).ok())
        .ok_or_else(|| ApiError::invalid_pagination("cursor", token))
}

fn cursor_for(id: Uuid) -> String {
    format!("{CURSOR_PREFIX}{}", id.simple())
}

async fn list_sessions(state: AppState, query: Query) -> Result<Response, ApiError> {
    let status = match query.get("status") {
        None | Some("active") => StatusFilter::Active,
        Some("expired") => StatusFilter::Expired,
        Some("all") => StatusFilter::All,
        Some(other) => {
            return Err(ApiError::invalid_query(format!(
                "status {other:?} must be one of active, expired, all"
            )))
        }
    };
    let session_query = SessionQuery {
        agent_id: query.uuid("agentId")?,
        user_id: query.uuid("userId")?,
        status,
        limit: query.limit(LIST_LIMIT.0, LIST_LIMIT.1)?,
        after: query.get("cursor").map(parse_cursor).transpose()?,
    };
    let now = state.clock.now();
    let store = state.store.clone();
    let (page, counts) = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::Error>((
            store.list_sessions(&session_query, now)?,
            store.counts(now)?,
        ))
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok(json(
        StatusCode::OK,
        &SessionList {
            sessions: page
                .sessions
                .iter()
                .map(|s| SessionInfo::new(s, now))
                .collect(),
            total: page.total,
            next_cursor: page.next.map(cursor_for),
            stats: ListStats {
                total_sessions: counts.total,
                active_sessions: counts.active,
                expired_sessions: counts.expired,
            },
        },
    ))
}

async fn get_session(id: String, state: AppState) -> Result<Response, ApiError> {
    let id = path_uuid("sessionId", &id)?;
    let (session, now) = load_active(&state, id)?;
    Ok(json(StatusCode::OK, &SessionInfo::new(&session, now)))
}

async fn delete_session(id: String, state: AppState) -> Result<Response, ApiError> {
    let id = path_uuid("sessionId", &id)?;
    let store = state.store.clone();
    // Deleting a long conversation removes many messages: keep it off the async workers.
    let now = state.clock.now();
    let deleted = tokio::task::spawn_blocking(move || store.delete_session(id, now))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    if deleted.is_none() {
        return Err(SessionError::NotFound(id).into());
    }
    state.store.durable().await?;
    Ok(json(
        StatusCode::OK,
        &json!({ "success": true, "message": format!("Session {id} deleted successfully") }),
    ))
}

/// Applies `change` to an active session in one transaction (with the event it names),
/// makes it durable, and answers SessionInfo as of the transaction's instant.
async fn update_and_reply(
    state: &AppState,
    id: Uuid,
    change: impl Fn(&mut Session, Timestamp) -> Result<Option<EventKind>, SessionError>,
) -> Result<Response, ApiError> {
    let (session, now) = state
        .store
        .update_session(id, state.clock.as_ref(), change)??;
    state.store.durable().await?;
    Ok(json(StatusCode::OK, &SessionInfo::new(&session, now)))
}

async fn renew_session(id: String, state: AppState) -> Result<Response, ApiError> {
    let id = path_uuid("sessionId", &id)?;
    update_and_reply(&state, id, |session, now| match session.renew(now) {
        Renewal::Renewed => Ok(Some(EventKind::SessionRenewed)),
        Renewal::Unchanged => Err(SessionError::MaxDurationReached {
            id,
            expires_at: session.expires_at(),
        }),
    })
    .await
}

async fn heartbeat_session(id: String, state: AppState) -> Result<Response, ApiError> {
    let id = path_uuid("sessionId", &id)?;
    update_and_reply(&state, id, |session, now| {
        match session.record_activity(now) {
            Renewal::Renewed => Ok(Some(EventKind::SessionRenewed)),
            Renewal::Unchanged => Ok(None),
        }
    })
    .await
}

async fn update_session_timeout(
    id: String,
    state: AppState,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
    let id = path_uuid("sessionId", &id)?;
    let patch = timeout_patch(&body?, &state.policy)?;
    let policy = state.policy;
    update_and_reply(&state, id, |session, _| {
        session.timeout = policy.resolve_update(session.timeout, patch)?;
        Ok(Some(EventKind::SessionTimeoutUpdated))
    })
    .await
}
