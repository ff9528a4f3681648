//! Server-Sent Events: one session's events, or every event of an agent or a user.
//!
//! Each stream is [`crate::store::Store::events`]: it replays the store from `Last-Event-ID`
//! up to the id published when it subscribed, then forwards live events: nothing is lost at
//! the seam and nothing is sent twice.

use std::sync::Arc;

use futures_util::StreamExt;
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::error::{respond, ApiError};
use super::fields::path_uuid;
use super::query::{query, Query};
use super::sse;
use super::views::{MessageView, SessionContext, SessionInfo};
use super::{load_active, session_path, with_state, AppState, SharedState};
use crate::domain::{Event, EventData, EventFilter};

/// Both event routes.
pub(super) fn routes(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session_events(state).or(owner_events(state)).unify()
}

/// GET /sessions/{sessionId}/events
fn session_events(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session_path()
        .and(warp::path("events"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .and(warp::header::headers_cloned())
        .then(stream_session_events)
        .map(respond)
}

/// GET /events?agentId=… or ?userId=…
fn owner_events(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("api")
        .and(warp::path("messaging"))
        .and(warp::path("events"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .and(query())
        .and(warp::header::headers_cloned())
        .then(stream_owner_events)
        .map(respond)
}

/// One event of the event streams, as its `id:`, `event:` and `data:` lines (doc-only).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
struct StreamEvent {
    /// A global, increasing integer.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    event: StreamEventName,
    /// JSON text: the Message for `message`, the SessionInfo for every `session.*` event.
    data: String,
}

/// The name of an event.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
enum StreamEventName {
    #[schema(rename = "session.created")]
    SessionCreated,
    #[schema(rename = "message")]
    Message,
    #[schema(rename = "session.renewed")]
    SessionRenewed,
    #[schema(rename = "session.timeout_updated")]
    SessionTimeoutUpdated,
    #[schema(rename = "session.expiring")]
    SessionExpiring,
    #[schema(rename = "session.expired")]
    SessionExpired,
    #[schema(rename = "session.deleted")]
    SessionDeleted,
}

/// The `Last-Event-ID` header: absent, or a plain decimal event id.
///
/// # Errors
/// 400 INVALID_LAST_EVENT_ID for anything else.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|text| text.parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid_last_event_id(&String::from_utf8_lossy(value.as_bytes())))
}

#[utoipa::path(
    get,
    path = "/api/messaging/sessions/{sessionId}/events",
    tag = "events",
    summary = "Follow one session's events",
    params(
        ("sessionId" = Uuid, Path, description = "The session id (any standard textual UUID form)."),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (a decimal integer; 0 replays everything kept). Without it the stream starts with the next event."),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `id:` (a global, increasing integer), `event:` (the name) and `data:` (the Message or the SessionInfo); a comment line at least every 15 s. The schema is that of each event.", content_type = "text/event-stream", body = StreamEvent),
        (status = 400, description = "INVALID_UUID or INVALID_LAST_EVENT_ID.", body = super::error::Envelope),
        super::openapi::ServerErrors,
        super::openapi::MissingOrExpired,
        (status = 409, description = "LAST_EVENT_ID_UNKNOWN: Last-Event-ID is ahead of the newest event, so this store never issued it.", body = super::error::Envelope),
    ),
)]
async fn stream_session_events(
    id: String,
    state: Arc<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = path_uuid("sessionId", &id)?;
    let last_event_id = last_event_id(&headers)?;
    load_active(&state, id).await?;
    catch_up(&state, last_event_id).await?;
    event_stream(&state, EventFilter::Session(id), last_event_id)
}

#[utoipa::path(
    get,
    path = "/api/messaging/events",
    tag = "events",
    summary = "Follow every event of one agent's or one user's sessions",
    params(
        ("agentId" = Option<Uuid>, Query, description = "The agent whose sessions to follow."),
        ("userId" = Option<Uuid>, Query, description = "The user whose sessions to follow."),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (a decimal integer; 0 replays everything kept). Without it the stream starts with the next event."),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `id:` (a global, increasing integer), `event:` (the name) and `data:` (the Message or the SessionInfo); a comment line at least every 15 s. The schema is that of each event.", content_type = "text/event-stream", body = StreamEvent),
        (status = 400, description = "INVALID_UUID, INVALID_LAST_EVENT_ID, or INVALID_QUERY unless exactly one of agentId and userId is given.", body = super::error::Envelope),
        (status = 401, description = "UNAUTHORIZED: an API key is configured and X-API-Key is missing or wrong.", body = super::error::Envelope),
        (status = 409, description = "LAST_EVENT_ID_UNKNOWN: Last-Event-ID is ahead of the newest event, so this store never issued it.", body = super::error::Envelope),
        (status = 503, description = "STREAMS_EXHAUSTED: --max-streams streams are open.", body = super::error::Envelope),
    ),
)]
async fn stream_owner_events(
    state: Arc<AppState>,
    query: Query,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let filter = match (query.uuid("agentId")?, query.uuid("userId")?) {
        (Some(agent_id), None) => EventFilter::Agent(agent_id),
        (None, Some(user_id)) => EventFilter::User(user_id),
        _ => {
            return Err(ApiError::invalid_query(
                "give exactly one of agentId and userId",
            ))
        }
    };
    let last_event_id = last_event_id(&headers)?;
    catch_up(&state, last_event_id).await?;
    event_stream(&state, filter, last_event_id)
}

/// Before resuming after `last_event_id`: this server publishes every event through it
/// first, when another server sharing the store showed it to the reader.
async fn catch_up(state: &AppState, last_event_id: Option<u64>) -> Result<(), ApiError> {
    match last_event_id {
        Some(id) => Ok(state.store.catch_up_events(id).await?),
        None => Ok(()),
    }
}

/// The SSE response for `filter`, resuming after `last_event_id` when given.
fn event_stream(
    state: &AppState,
    filter: EventFilter,
    last_event_id: Option<u64>,
) -> Result<Response, ApiError> {
    let permit = state.stream_permit()?;
    let chunks = state
        .store
        .events(filter, last_event_id)?
        .ready_chunks(READY_EVENTS_PER_CHUNK)
        .map(move |ready| {
            let _open = &permit;
            let frames: Vec<_> = ready.iter().map(|event| event.rendered(to_frame)).collect();
            frames.concat()
        })
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(sse::reply(chunks))
}

/// Most events a stream writes in one chunk: bounds a chunk's size when a stream is far
/// behind (a replay, say).
const READY_EVENTS_PER_CHUNK: usize = 256;

/// The JSON an event carries.
fn event_data(event: &Event) -> String {
    let rendered = match &event.data {
        EventData::Message {
            message,
            session_metadata_json,
        } => {
            let context = SessionContext::new(
                event.session_id,
                event.agent_id,
                event.user_id,
                session_metadata_json,
            );
            serde_json::to_string(&MessageView::new(message, &context))
        }
        EventData::Session(session) if event.kind.ends_session() => {
            serde_json::to_string(&SessionInfo::closed(session))
        }
        EventData::Session(session) => serde_json::to_string(&SessionInfo::new(session, event.at)),
    };
    // The views hold only strings, numbers and embedded JSON text: serializing cannot fail.
    rendered.unwrap_or_else(|_| "{}".to_owned())
}

/// An event's frame: the same text for every stream it goes to, so it is rendered once.
fn to_frame(event: &Event) -> String {
    sse::frame(Some(event.id), event.kind.name(), &event_data(event))
}
