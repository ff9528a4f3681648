//! The Feather-compatible route: `POST /v1/ask-feather/sessions/{session_id}/messages`.
//!
//! Validation errors here take FastAPI's shape (422 with a `detail` list), because Feather
//! clients parse that; every other error uses the envelope.

use std::sync::Arc;

use bytes::Buf;
use futures_util::Stream;
use serde_json::{json, Map, Value};
use uuid::Uuid;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::body::{is_json_content_type, read_body_bytes};
use super::error::{respond, ApiError};
use super::views::{json as json_reply, MessageView, SessionContext};
use super::{with_state, AppState, SharedState};
use crate::domain::message::MAX_CONTENT_CHARS;
use crate::domain::NewMessage;

/// The route.
pub(super) fn routes(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    feather_message_create(state)
}

/// POST /v1/ask-feather/sessions/{session_id}/messages
fn feather_message_create(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("v1")
        .and(warp::path("ask-feather"))
        .and(warp::path("sessions"))
        .and(warp::path::param::<String>())
        .and(warp::path("messages"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_state(state))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |session_id: String, state: Arc<AppState>, headers: HeaderMap, body| async move {
                create_feather_message(session_id, state, headers, body).await
            },
        )
        .map(respond)
}

/// The body of the Feather route (read by `read_body` and `check_fields`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
struct FeatherMessageRequest {
    /// The text: 1..=4000 Unicode characters.
    #[schema(min_length = 1, max_length = 4000)]
    content: String,
    /// Stored as `metadata.workflow` when not null.
    workflow: Option<String>,
}

/// A 422 in FastAPI's shape (built with `json!` in `unprocessable`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
struct FeatherValidationError {
    detail: Vec<FeatherProblem>,
}

/// One FastAPI validation problem (built with `json!` in `problem`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
struct FeatherProblem {
    /// `missing`, `string_type`, `string_too_short`, `string_too_long`, `json_invalid`,
    /// `uuid_parsing` or `model_attributes_type`.
    #[schema(rename = "type", example = "missing")]
    kind: String,
    /// Where: `["body"]`, `["body", "content"]`, `["path", "session_id"]`, or `["body", column]`.
    loc: Vec<FeatherLocItem>,
    /// A readable message.
    msg: String,
    /// The input that was refused (any JSON).
    #[schema(value_type = Value)]
    input: Value,
    /// Context, e.g. `{"max_length": 4000}`.
    #[schema(value_type = Object, required = false)]
    ctx: Option<Value>,
}

/// A `loc` step: a name, or a position.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
#[serde(untagged)]
enum FeatherLocItem {
    Name(String),
    Index(u64),
}

/// One FastAPI validation error.
fn problem(kind: &str, loc: Value, msg: &str, input: Value, ctx: Option<Value>) -> Value {
    let mut entry = json!({ "type": kind, "loc": loc, "msg": msg, "input": input });
    if let Some(ctx) = ctx {
        entry["ctx"] = ctx;
    }
    entry
}

fn unprocessable(problems: Vec<Value>) -> Response {
    json_reply(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({ "detail": problems }),
    )
}

/// What the body turned out to be.
enum Body {
    Object(Map<String, Value>),
    Problem(Value),
}

/// Reads the body as FastAPI would: JSON only with a JSON content type, anything else is
/// an input that is not an object.
async fn read_body<S, B>(headers: &HeaderMap, body: S, limit: u64) -> Result<Body, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let bytes = read_body_bytes(headers, body, limit).await?;
    if bytes.is_empty() {
        return Ok(Body::Problem(problem(
            "missing",
            json!(["body"]),
            "Field required",
            Value::Null,
            None,
        )));
    }
    let is_json = is_json_content_type(headers);
    let not_an_object = |input: Value| {
        problem(
            "model_attributes_type",
            json!(["body"]),
            "Input should be a valid dictionary or object to extract fields from",
            input,
            None,
        )
    };
    if !is_json {
        return Ok(Body::Problem(not_an_object(Value::String(
            String::from_utf8_lossy(&bytes).into_owned(),
        ))));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(object)) => Ok(Body::Object(object)),
        Ok(other) => Ok(Body::Problem(not_an_object(other))),
        Err(error) => Ok(Body::Problem(problem(
            "json_invalid",
            json!(["body", error.column().saturating_sub(1)]),
            "JSON decode error",
            json!({}),
            Some(json!({ "error": error.to_string() })),
        ))),
    }
}

/// Checks `content` and `workflow` as the Feather model does; returns the problems found.
fn check_fields(object: &Map<String, Value>) -> (Option<String>, Option<String>, Vec<Value>) {
    let mut problems = Vec::new();
    let content = match object.get("content") {
        None | Some(Value::Null) => {
            let input = Value::Object(object.clone());
            problems.push(problem(
                "missing",
                json!(["body", "content"]),
                "Field required",
                input,
                None,
            ));
            None
        }
        Some(Value::String(text)) => {
            let chars = text.chars().count();
            if chars == 0 {
                problems.push(problem(
                    "string_too_short",
                    json!(["body", "content"]),
                    "String should have at least 1 character",
                    json!(text),
                    Some(json!({ "min_length": 1 })),
                ));
                None
            } else if chars > MAX_CONTENT_CHARS {
                problems.push(problem(
                    "string_too_long",
                    json!(["body", "content"]),
                    &format!("String should have at most {MAX_CONTENT_CHARS} characters"),
                    json!(text),
                    Some(json!({ "max_length": MAX_CONTENT_CHARS })),
                ));
                None
            } else {
                Some(text.clone())
            }
        }
        Some(other) => {
            let input = other.clone();
            problems.push(problem(
                "string_type",
                json!(["body", "content"]),
                "Input should be a valid string",
                input,
                None,
            ));
            None
        }
    };
    let workflow = match object.get("workflow") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => {
            let input = other.clone();
            problems.push(problem(
                "string_type",
                json!(["body", "workflow"]),
                "Input should be a valid string",
                input,
                None,
            ));
            None
        }
    };
    (content, workflow, problems)
}

#[utoipa::path(
    post,
    path = "/v1/ask-feather/sessions/{session_id}/messages",
    tag = "feather",
    summary = "Append a user message (Feather-compatible)",
    params(
        ("session_id" = Uuid, Path, description = "The session id."),
    ),
    request_body(content = FeatherMessageRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The stored message.", body = MessageView),
        (status = 400, description = "INVALID_JSON: the body could not be read.", body = super::error::Envelope),
        super::openapi::ServerErrors,
        super::openapi::MissingOrExpired,
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over the limit (default 64 KiB).", body = super::error::Envelope),
        (status = 422, description = "Validation errors in FastAPI's shape (every body problem, and a session_id that is not a UUID).", body = FeatherValidationError),
    ),
)]
async fn create_feather_message<S, B>(
    session_id: String,
    state: Arc<AppState>,
    headers: HeaderMap,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let raw_id = percent_encoding::percent_decode_str(&session_id)
        .decode_utf8_lossy()
        .into_owned();
    let mut problems = Vec::new();
    let session_id = match Uuid::parse_str(&raw_id) {
        Ok(id) => Some(id),
        Err(error) => {
            problems.push(problem(
                "uuid_parsing",
                json!(["path", "session_id"]),
                &format!("Input should be a valid UUID, {error}"),
                json!(raw_id),
                Some(json!({ "error": error.to_string() })),
            ));
            None
        }
    };
    let reserved = state.reserve_body(&headers)?;
    let read = read_body(&headers, body, state.max_body_bytes).await?;
    drop(reserved);
    let (content, workflow) = match read {
        Body::Problem(found) => {
            problems.push(found);
            (None, None)
        }
        Body::Object(object) => {
            let (content, workflow, found) = check_fields(&object);
            problems.extend(found);
            (content, workflow)
        }
    };
    let (Some(session_id), Some(content), true) = (session_id, content, problems.is_empty()) else {
        return Ok(unprocessable(problems));
    };
    let metadata = match workflow {
        Some(workflow) => json!({ "workflow": workflow }),
        None => json!({}),
    };
    let new = NewMessage {
        content,
        parent_id: None,
        author_id: None,
        metadata_json: metadata.to_string(),
        attachments: Vec::new(),
    };
    let appended = state.store.append_message(session_id, new).await??;
    Ok(json_reply(
        StatusCode::OK,
        &MessageView::new(&appended.message, &SessionContext::of(&appended.session)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_values::object;

    #[test]
    fn every_field_problem_is_reported_together() {
        let (_, _, problems) = check_fields(&object(json!({ "workflow": 5 })));
        let kinds: Vec<&str> = problems
            .iter()
            .map(|p| p["type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(kinds, ["missing", "string_type"]);
        assert_eq!(problems[0]["loc"], json!(["body", "content"]));
        assert_eq!(problems[0]["input"], json!({ "workflow": 5 }));
        assert_eq!(problems[1]["loc"], json!(["body", "workflow"]));
    }

    #[test]
    fn content_length_is_bounded_in_characters() {
        let (_, _, short) = check_fields(&object(json!({ "content": "" })));
        assert_eq!(short[0]["type"], "string_too_short");
        assert_eq!(short[0]["ctx"], json!({ "min_length": 1 }));
        let (ok, _, none) = check_fields(&object(json!({ "content": "é".repeat(4000) })));
        assert!(ok.is_some() && none.is_empty());
        let (_, _, long) = check_fields(&object(json!({ "content": "é".repeat(4001) })));
        assert_eq!(long[0]["type"], "string_too_long");
        assert_eq!(long[0]["ctx"], json!({ "max_length": 4000 }));
    }

    #[test]
    fn null_workflow_is_absent() {
        let (content, workflow, problems) =
            check_fields(&object(json!({ "content": "hi", "workflow": null })));
        assert_eq!(
            (content.as_deref(), workflow, problems.len()),
            (Some("hi"), None, 0)
        );
    }
}
