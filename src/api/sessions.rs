//! Session routes: create, list, get, delete, renew, heartbeat, timeout update.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::body::{json_body, JsonObject};
use super::error::{respond, ApiError};
use super::fields::{field, metadata_field, path_uuid, uuid_field};
use super::query::{query, Query};
use super::views::{json, SessionCreated, SessionInfo};
use super::{load_active, session_path, sessions_prefix, with_state, AppState, SharedState};
use crate::domain::{
    Minutes, Session, SessionChange, SessionError, TimeoutConfigPatch, TimeoutPolicy,
};
use crate::store::{SessionQuery, StatusFilter};

/// Default and largest page size of the session list. The default is the largest: elizaOS's
/// client lists sessions without parameters and reads one page.
const LIST_LIMIT: (usize, usize) = (1000, 1000);
/// Prefix of list cursors, so a token from elsewhere is recognised as foreign.
const CURSOR_PREFIX: &str = "s1.";

/// Every session route.
pub(super) fn routes(
    state: &SharedState,
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

/// POST /sessions
fn sessions_create(
    state: &SharedState,
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
    state: &SharedState,
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
fn session_get(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session_path()
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .then(get_session)
        .map(respond)
}

/// DELETE /sessions/{sessionId}
fn session_delete(
    state: &SharedState,
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
    state: &SharedState,
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
    state: &SharedState,
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
    state: &SharedState,
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

/// Fails with MISSING_FIELDS naming every required field that is absent or null.
///
/// # Errors
/// 400 MISSING_FIELDS.
fn require_fields(object: &JsonObject, names: &[&str]) -> Result<(), ApiError> {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| field(object, name).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ApiError::missing_fields(&missing))
    }
}

/// A partial timeout config object, as sent at creation or in a PATCH.
///
/// # Errors
/// 400 INVALID_TIMEOUT_CONFIG naming a mistyped field and its range.
fn timeout_patch(
    object: &JsonObject,
    policy: &TimeoutPolicy,
) -> Result<TimeoutConfigPatch, ApiError> {
    let mut patch = TimeoutConfigPatch::default();
    for (name, slot) in [
        ("timeoutMinutes", &mut patch.timeout_minutes),
        ("maxDurationMinutes", &mut patch.max_duration_minutes),
        (
            "warningThresholdMinutes",
            &mut patch.warning_threshold_minutes,
        ),
    ] {
        match field(object, name) {
            None => {}
            // JSON integers only: 30.0 and "30" are refused.
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                *slot = Some(Minutes::Integer(n.as_i64().unwrap_or(i64::MAX)));
            }
            Some(_) => *slot = Some(Minutes::NotAnInteger),
        }
    }
    match field(object, "autoRenew") {
        None => {}
        Some(Value::Bool(b)) => patch.auto_renew = Some(*b),
        Some(_) => {
            return Err(ApiError::invalid_timeout(
                "autoRenew must be a boolean".into(),
            ));
        }
    }
    policy.check_integers(patch)?;
    Ok(patch)
}

/// The `timeoutConfig` member of a create body.
///
/// # Errors
/// 400 INVALID_TIMEOUT_CONFIG when it is not an object or a field is mistyped.
fn timeout_config_field(
    object: &JsonObject,
    policy: &TimeoutPolicy,
) -> Result<TimeoutConfigPatch, ApiError> {
    match field(object, "timeoutConfig") {
        None => Ok(TimeoutConfigPatch::default()),
        Some(Value::Object(config)) => timeout_patch(config, policy),
        Some(_) => Err(ApiError::invalid_timeout(
            "timeoutConfig must be an object".into(),
        )),
    }
}

/// The body of `POST /sessions` (read by `create_session` with [`require_fields`],
/// [`uuid_field`], [`metadata_field`] and [`timeout_config_field`]).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
struct CreateSessionRequest {
    /// The agent's id.
    agent_id: Uuid,
    /// The user's id.
    user_id: Uuid,
    /// Any JSON object, at most 10240 bytes of compact JSON.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// The timeout configuration; missing fields get defaults.
    timeout_config: Option<TimeoutConfigPatchBody>,
}

/// A partial timeout configuration: `timeoutConfig` at creation, or the body of
/// `PATCH …/timeout` (read by [`timeout_patch`]). Integer fields take JSON integers only.
/// The bounds depend on the server's flags (defaults: timeout 5..=1440, maximum duration
/// timeoutMinutes..=2880, warning 0..=timeoutMinutes); a value out of range is 400
/// INVALID_TIMEOUT_CONFIG.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase", as = TimeoutConfigPatch)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
struct TimeoutConfigPatchBody {
    /// Minutes of inactivity before the session expires.
    #[schema(minimum = 0, maximum = 4294967295_i64)]
    timeout_minutes: Option<i64>,
    /// Whether activity (a message, a heartbeat) renews the session.
    auto_renew: Option<bool>,
    /// Minutes after creation the session can never outlive.
    #[schema(minimum = 0, maximum = 4294967295_i64)]
    max_duration_minutes: Option<i64>,
    /// Minutes before expiry at which the session counts as near expiration (0: never).
    #[schema(minimum = 0, maximum = 4294967295_i64)]
    warning_threshold_minutes: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/api/messaging/sessions",
    tag = "sessions",
    summary = "Create a session",
    request_body(content = CreateSessionRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The session, with its full, merged timeoutConfig.", body = SessionCreated,
            links(
                ("get_session" = (operation_id = "get_session", parameters(("sessionId" = "$response.body#/sessionId")))),
                ("delete_session" = (operation_id = "delete_session", parameters(("sessionId" = "$response.body#/sessionId")))),
                ("renew_session" = (operation_id = "renew_session", parameters(("sessionId" = "$response.body#/sessionId")))),
                ("heartbeat_session" = (operation_id = "heartbeat_session", parameters(("sessionId" = "$response.body#/sessionId")))),
                ("update_session_timeout" = (operation_id = "update_session_timeout", parameters(("sessionId" = "$response.body#/sessionId")))),
                ("create_message" = (operation_id = "create_message", parameters(("sessionId" = "$response.body#/sessionId")))),
                ("list_messages" = (operation_id = "list_messages", parameters(("sessionId" = "$response.body#/sessionId")))),
                ("stream_session_events" = (operation_id = "stream_session_events", parameters(("sessionId" = "$response.body#/sessionId"))))
            )),
        (status = 400, description = "INVALID_JSON, MISSING_FIELDS, INVALID_UUID, INVALID_METADATA or INVALID_TIMEOUT_CONFIG.", body = super::error::Envelope),
        super::openapi::ServerErrors,
        super::openapi::BodyErrors,
    ),
)]
async fn create_session(
    state: Arc<AppState>,
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
    let now = state.clock.now();
    let session = Session::new(now.new_v7(), agent_id, user_id, timeout, metadata_json, now);
    state.store.create_session(session.clone()).await?;
    Ok(json(StatusCode::CREATED, &SessionCreated::new(&session)))
}

/// One page of the session list.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SessionList<'a> {
    /// Newest first.
    sessions: Vec<SessionInfo<'a>>,
    /// Sessions matching the filters, across all pages.
    total: u64,
    /// The `cursor` of the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
    stats: ListStats,
}

/// Counts for the whole store.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ListStats {
    total_sessions: u64,
    active_sessions: u64,
    expired_sessions: u64,
}

/// The `status` filter of the session list.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
enum ListStatus {
    Active,
    Expired,
    All,
}

/// The body of `DELETE /sessions/{sessionId}` (built with `json!` in `delete_session`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
struct SessionDeleted {
    /// Always `true`.
    success: bool,
    /// `Session <id> deleted successfully`.
    #[schema(example = "Session 3c90c3cc-0d44-4b50-8888-8dd25736052a deleted successfully")]
    message: String,
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

#[utoipa::path(
    get,
    path = "/api/messaging/sessions",
    tag = "sessions",
    summary = "List sessions, newest first",
    params(
        ("agentId" = Option<Uuid>, Query, description = "Only this agent's sessions."),
        ("userId" = Option<Uuid>, Query, description = "Only this user's sessions."),
        ("status" = inline(Option<ListStatus>), Query, description = "Which sessions (default `active`)."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size: 1..=1000, default 1000; a plain decimal integer, clamped into range."),
        ("cursor" = Option<String>, Query, description = "The `nextCursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "One page of sessions.", body = SessionList),
        (status = 400, description = "INVALID_UUID, INVALID_QUERY (status) or INVALID_PAGINATION (limit, cursor).", body = super::error::Envelope),
        super::openapi::ServerErrors,
    ),
)]
async fn list_sessions(state: Arc<AppState>, query: Query) -> Result<Response, ApiError> {
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
    let (page, counts) = tokio::try_join!(
        state.store.list_sessions(session_query, now),
        state.store.counts(now),
    )?;
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

#[utoipa::path(
    get,
    path = "/api/messaging/sessions/{sessionId}",
    tag = "sessions",
    summary = "Get a session",
    params(
        ("sessionId" = Uuid, Path, description = "The session id (any standard textual UUID form)."),
    ),
    responses(
        (status = 200, description = "The session.", body = SessionInfo),
        (status = 400, description = "INVALID_UUID.", body = super::error::Envelope),
        super::openapi::ServerErrors,
        super::openapi::MissingOrExpired,
    ),
)]
async fn get_session(id: String, state: Arc<AppState>) -> Result<Response, ApiError> {
    let id = path_uuid("sessionId", &id)?;
    let (session, now) = load_active(&state, id).await?;
    Ok(json(StatusCode::OK, &SessionInfo::new(&session, now)))
}

#[utoipa::path(
    delete,
    path = "/api/messaging/sessions/{sessionId}",
    tag = "sessions",
    summary = "Delete a session and its messages",
    params(
        ("sessionId" = Uuid, Path, description = "The session id (any standard textual UUID form)."),
    ),
    responses(
        (status = 200, description = "Deleted (also when the session has expired but is not yet swept).", body = SessionDeleted),
        (status = 400, description = "INVALID_UUID.", body = super::error::Envelope),
        super::openapi::ServerErrors,
        (status = 404, description = "SESSION_NOT_FOUND: no such session.", body = super::error::Envelope),
    ),
)]
async fn delete_session(id: String, state: Arc<AppState>) -> Result<Response, ApiError> {
    let id = path_uuid("sessionId", &id)?;
    let deleted = state.store.delete_session(id, state.clock.now()).await?;
    if deleted.is_none() {
        return Err(SessionError::NotFound(id).into());
    }
    Ok(json(
        StatusCode::OK,
        &json!({ "success": true, "message": format!("Session {id} deleted successfully") }),
    ))
}

/// Applies `change` to an active session in one write (with the event it announces), and
/// answers SessionInfo as of the write's instant once it is on disk.
async fn update_and_reply(
    state: &AppState,
    id: Uuid,
    change: SessionChange,
) -> Result<Response, ApiError> {
    let (session, now) = state.store.update_session(id, change).await??;
    Ok(json(StatusCode::OK, &SessionInfo::new(&session, now)))
}

#[utoipa::path(
    post,
    path = "/api/messaging/sessions/{sessionId}/renew",
    tag = "sessions",
    summary = "Renew a session",
    params(
        ("sessionId" = Uuid, Path, description = "The session id (any standard textual UUID form)."),
    ),
    responses(
        (status = 200, description = "The renewed session.", body = SessionInfo),
        (status = 400, description = "INVALID_UUID.", body = super::error::Envelope),
        super::openapi::ServerErrors,
        super::openapi::MissingOrExpired,
        (status = 422, description = "MAX_DURATION_REACHED: the renewal cannot move expiresAt later.", body = super::error::Envelope),
    ),
)]
async fn renew_session(id: String, state: Arc<AppState>) -> Result<Response, ApiError> {
    let id = path_uuid("sessionId", &id)?;
    update_and_reply(&state, id, SessionChange::Renew).await
}

#[utoipa::path(
    post,
    path = "/api/messaging/sessions/{sessionId}/heartbeat",
    tag = "sessions",
    summary = "Record activity on a session",
    params(
        ("sessionId" = Uuid, Path, description = "The session id (any standard textual UUID form)."),
    ),
    responses(
        (status = 200, description = "The session; renewed when autoRenew is true.", body = SessionInfo),
        (status = 400, description = "INVALID_UUID.", body = super::error::Envelope),
        super::openapi::ServerErrors,
        super::openapi::MissingOrExpired,
    ),
)]
async fn heartbeat_session(id: String, state: Arc<AppState>) -> Result<Response, ApiError> {
    let id = path_uuid("sessionId", &id)?;
    update_and_reply(&state, id, SessionChange::Heartbeat).await
}

#[utoipa::path(
    patch,
    path = "/api/messaging/sessions/{sessionId}/timeout",
    tag = "sessions",
    summary = "Change a session's timeout configuration",
    params(
        ("sessionId" = Uuid, Path, description = "The session id (any standard textual UUID form)."),
    ),
    request_body(content = TimeoutConfigPatchBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The session with the merged configuration and recomputed expiresAt.", body = SessionInfo),
        (status = 400, description = "INVALID_UUID, INVALID_JSON or INVALID_TIMEOUT_CONFIG.", body = super::error::Envelope),
        super::openapi::ServerErrors,
        super::openapi::MissingOrExpired,
        super::openapi::BodyErrors,
    ),
)]
async fn update_session_timeout(
    id: String,
    state: Arc<AppState>,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
    let id = path_uuid("sessionId", &id)?;
    let patch = timeout_patch(&body?, &state.policy)?;
    let policy = state.policy;
    update_and_reply(&state, id, SessionChange::Timeout { patch, policy }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_values::{json_value, object};
    use proptest::prelude::*;

    use crate::domain::session::test_support::policy;

    /// An object whose keys are mostly the timeout fields, with any values.
    fn timeout_object() -> impl Strategy<Value = JsonObject> {
        let key = prop_oneof![
            Just("timeoutMinutes".to_owned()),
            Just("autoRenew".to_owned()),
            Just("maxDurationMinutes".to_owned()),
            Just("warningThresholdMinutes".to_owned()),
            ".{0,8}",
        ];
        let value = prop_oneof![
            3 => any::<i64>().prop_map(|n| json!(n)),
            1 => (0u64..3000).prop_map(|n| json!(n)),
            1 => any::<bool>().prop_map(Value::Bool),
            2 => json_value(),
        ];
        proptest::collection::btree_map(key, value, 0..6).prop_map(|map| map.into_iter().collect())
    }

    proptest! {
        #[test]
        fn timeout_patch_yields_a_patch_exactly_for_well_typed_fields(
            body in timeout_object()
        ) {
            let well_typed = body.iter().all(|(name, value)| match name.as_str() {
                "autoRenew" => value.is_null() || value.is_boolean(),
                "timeoutMinutes" | "maxDurationMinutes" | "warningThresholdMinutes" => {
                    value.is_null() || value.is_i64() || value.is_u64()
                }
                _ => true,
            });
            match timeout_patch(&body, &policy()) {
                Ok(patch) => {
                    prop_assert!(well_typed, "accepted {:?}", body);
                    let given = |name: &str| {
                        field(&body, name).map(|v| Minutes::Integer(v.as_i64().unwrap_or(i64::MAX)))
                    };
                    prop_assert_eq!(patch.timeout_minutes, given("timeoutMinutes"));
                    prop_assert_eq!(patch.max_duration_minutes, given("maxDurationMinutes"));
                    prop_assert_eq!(
                        patch.warning_threshold_minutes,
                        given("warningThresholdMinutes")
                    );
                    prop_assert_eq!(patch.auto_renew, field(&body, "autoRenew").and_then(Value::as_bool));
                }
                Err(error) => {
                    prop_assert!(!well_typed, "refused {:?}: {}", body, error.message);
                    prop_assert_eq!(error.code, "INVALID_TIMEOUT_CONFIG");
                }
            }
        }

        #[test]
        fn timeout_config_field_never_panics(value in json_value()) {
            if let Err(error) = timeout_config_field(&object(json!({ "timeoutConfig": value })), &policy()) {
                prop_assert_eq!(error.code, "INVALID_TIMEOUT_CONFIG");
            }
        }

    }

    #[test]
    fn mistyped_minutes_name_the_field_and_range() {
        for bad in [json!(30.0), json!("30"), json!(true)] {
            let error =
                timeout_patch(&object(json!({ "timeoutMinutes": bad })), &policy()).unwrap_err();
            assert_eq!(error.code, "INVALID_TIMEOUT_CONFIG");
            assert_eq!(
                error.message,
                "timeoutMinutes must be an integer between 5 and 1440"
            );
        }
        let error = timeout_patch(&object(json!({ "autoRenew": "yes" })), &policy()).unwrap_err();
        assert!(error.message.contains("autoRenew"));
    }

    #[test]
    fn null_means_absent() {
        let patch = timeout_patch(&object(json!({ "timeoutMinutes": null })), &policy()).unwrap();
        assert_eq!(patch, TimeoutConfigPatch::default());
        assert_eq!(
            metadata_field(&object(json!({ "metadata": null }))).unwrap(),
            "{}"
        );
    }
}
