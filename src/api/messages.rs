//! Message routes: append, page, get one, thread.

use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::body::{json_body, JsonObject};
use super::error::{respond, ApiError};
use super::fields::{field, metadata_field, path_uuid, uuid_field};
use super::query::{query, Query};
use super::sse;
use super::views::{json, MessageCreated, MessageView, SessionContext};
use super::{load_active, session_path, with_state, AppState, SharedState};
use crate::domain::message::{MAX_ATTACHMENTS, MAX_CONTENT_CHARS};
use crate::domain::{Attachment, EventData, EventFilter, Message, NewMessage, SessionError};
use crate::store::{LiveEvents, MessageQuery, Subscription, STREAM_BUFFER};

/// Default and largest page size of a message page.
const PAGE_LIMIT: (usize, usize) = (50, 100);
/// Default and largest number of messages of a thread: bounds one answer's size and the
/// reads behind it.
const THREAD_LIMIT: (usize, usize) = (1000, 1000);

/// Every message route.
pub(super) fn routes(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    messages_create(state)
        .or(messages_list(state))
        .unify()
        .or(message_get(state))
        .unify()
        .or(message_thread(state))
        .unify()
}

/// POST /sessions/{sessionId}/messages
fn messages_create(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session_path()
        .and(warp::path("messages"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_state(state))
        .and(json_body(state))
        .then(create_message)
        .map(respond)
}

/// GET /sessions/{sessionId}/messages
fn messages_list(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session_path()
        .and(warp::path("messages"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .and(query())
        .then(list_messages)
        .map(respond)
}

/// GET /sessions/{sessionId}/messages/{messageId}
fn message_get(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session_path()
        .and(warp::path("messages"))
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .then(get_message)
        .map(respond)
}

/// GET /sessions/{sessionId}/messages/{messageId}/thread
fn message_thread(
    state: &SharedState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session_path()
        .and(warp::path("messages"))
        .and(warp::path::param::<String>())
        .and(warp::path("thread"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .and(query())
        .then(get_thread)
        .map(respond)
}

/// How the client wants the reply delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// Hold the request until the agent replies (`http`, legacy `sync`).
    Http,
    /// Stream the reply as Server-Sent Events (`sse`, legacy `stream`).
    Sse,
    /// Answer at once; replies reach the event streams (`websocket`, or nothing given).
    Websocket,
}

/// A [`Transport`] with what delivering the reply needs, taken before the message is stored.
enum Delivery {
    /// `http`: the session's events, to find the reply in.
    Http { replies: Subscription },
    /// `sse`: the stream's permit, and the session's events to find the replies in.
    Sse {
        permit: OwnedSemaphorePermit,
        replies: Subscription,
    },
    /// `websocket`: nothing; the answer goes at once.
    Websocket,
}

impl Delivery {
    /// Takes what `transport` needs for the session `session_id`.
    ///
    /// # Errors
    /// 503 STREAMS_EXHAUSTED for `sse` when --max-streams are open.
    fn prepare(
        transport: Transport,
        state: &AppState,
        session_id: Uuid,
    ) -> Result<Delivery, ApiError> {
        let subscribe = || {
            state
                .store
                .subscribe(EventFilter::Session(session_id), STREAM_BUFFER)
        };
        Ok(match transport {
            Transport::Http => Delivery::Http {
                replies: subscribe(),
            },
            Transport::Sse => Delivery::Sse {
                permit: state.stream_permit()?,
                replies: subscribe(),
            },
            Transport::Websocket => Delivery::Websocket,
        })
    }
}

/// `transport`, or the legacy `mode` when `transport` is absent.
fn transport_field(body: &JsonObject) -> Result<Transport, ApiError> {
    let (name, value) = match field(body, "transport") {
        Some(value) => ("transport", value),
        None => match field(body, "mode") {
            Some(value) => ("mode", value),
            None => return Ok(Transport::Websocket),
        },
    };
    match value {
        Value::String(s) if s == "http" || s == "sync" => Ok(Transport::Http),
        Value::String(s) if s == "sse" || s == "stream" => Ok(Transport::Sse),
        Value::String(s) if s == "websocket" => Ok(Transport::Websocket),
        Value::String(s) => Err(ApiError::invalid_transport(name, s)),
        other => Err(ApiError::invalid_transport(name, &other.to_string())),
    }
}

/// The `content` field: a string of 1..=4000 characters.
///
/// # Errors
/// 400 MISSING_FIELDS when absent, INVALID_CONTENT otherwise.
fn content_field(object: &JsonObject) -> Result<String, ApiError> {
    match field(object, "content") {
        None => Err(ApiError::missing_fields(&["content"])),
        Some(Value::String(text)) if text.is_empty() => Err(ApiError::invalid_content(
            "Content must be a non-empty string",
            "content is empty",
        )),
        Some(Value::String(text)) => {
            let chars = text.chars().count();
            if chars > MAX_CONTENT_CHARS {
                Err(ApiError::invalid_content(
                    &format!("Content exceeds maximum length of {MAX_CONTENT_CHARS} characters"),
                    format!("content has {chars} characters"),
                ))
            } else {
                Ok(text.clone())
            }
        }
        Some(_) => Err(ApiError::invalid_content(
            "Content must be a non-empty string",
            "content is not a string",
        )),
    }
}

/// The `attachments` field: at most 16 objects `{type, url, name?}`; unknown keys dropped.
///
/// # Errors
/// 400 INVALID_ATTACHMENTS.
fn attachments_field(object: &JsonObject) -> Result<Vec<Attachment>, ApiError> {
    let items = match field(object, "attachments") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::invalid_attachments(
                "attachments must be an array",
            ))
        }
    };
    if items.len() > MAX_ATTACHMENTS {
        return Err(ApiError::invalid_attachments(format!(
            "{} attachments; at most {MAX_ATTACHMENTS} are allowed",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(item) = item else {
                return Err(ApiError::invalid_attachments(format!(
                    "attachments[{i}] must be an object"
                )));
            };
            let optional = |key: &str| match field(item, key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ApiError::invalid_attachments(format!(
                    "attachments[{i}].{key} must be a string"
                ))),
            };
            let required = |key: &str| {
                optional(key)?.ok_or_else(|| {
                    ApiError::invalid_attachments(format!("attachments[{i}].{key} is required"))
                })
            };
            Ok(Attachment {
                kind: required("type")?,
                url: required("url")?,
                name: optional("name")?,
            })
        })
        .collect()
}

/// How the client wants the agent's reply: `http` (= `sync`) holds the request,
/// `sse` (= `stream`) streams it, `websocket` answers at once.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
enum TransportName {
    Http,
    Sse,
    Websocket,
    Sync,
    Stream,
}

/// The body of `POST /sessions/{sessionId}/messages` (read by `create_message` with
/// [`content_field`], [`metadata_field`], [`attachments_field`] and [`uuid_field`]).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
struct CreateMessageRequest {
    /// The text: 1..=4000 Unicode characters (whitespace is allowed).
    #[schema(min_length = 1, max_length = 4000)]
    content: String,
    /// Any JSON object, at most 10240 bytes of compact JSON.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// At most 16 attachments.
    #[schema(max_items = 16)]
    attachments: Option<Vec<AttachmentRequest>>,
    /// The message this one answers (default: the session's newest message).
    parent_id: Option<Uuid>,
    /// The session's userId (the default) or its agentId.
    author_id: Option<Uuid>,
    /// How to deliver the agent's reply (default `websocket`: at once).
    transport: Option<TransportName>,
    /// The legacy name of `transport`, read only when `transport` is absent.
    mode: Option<TransportName>,
}

/// An attachment in a request; other keys are dropped.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
struct AttachmentRequest {
    /// The attachment's kind, e.g. `image`.
    #[schema(rename = "type")]
    kind: String,
    /// Where it is.
    url: String,
    /// Its name.
    name: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/messaging/sessions/{sessionId}/messages",
    tag = "messages",
    summary = "Append a message",
    params(
        ("sessionId" = Uuid, Path, description = "The session id (any standard textual UUID form)."),
    ),
    request_body(content = CreateMessageRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The stored message and the session's status (with `agentResponse` for transport `http`).", body = MessageCreated,
            links(
                ("get_message" = (operation_id = "get_message", parameters(("sessionId" = "$response.body#/sessionId"), ("messageId" = "$response.body#/id")))),
                ("get_thread" = (operation_id = "get_thread", parameters(("sessionId" = "$response.body#/sessionId"), ("messageId" = "$response.body#/id"))))
            )),
        (status = 200, description = "Transport `sse`: events `user_message` (the Message), then `agent_message` per reply, then `done` (`{\"reason\":\"timeout\"}` or `shutdown`). The schema is that of each event.", content_type = "text/event-stream", body = ReplyStreamEvent),
        (status = 400, description = "INVALID_UUID, INVALID_JSON, MISSING_FIELDS, INVALID_CONTENT, INVALID_METADATA, INVALID_ATTACHMENTS, INVALID_TRANSPORT or INVALID_PARENT.", body = super::error::Envelope),
        super::openapi::ServerErrors,
        (status = 403, description = "FORBIDDEN_AUTHOR: authorId is neither the session's userId nor its agentId.", body = super::error::Envelope),
        super::openapi::MissingOrExpired,
        super::openapi::BodyErrors,
    ),
)]
async fn create_message(
    id: String,
    state: Arc<AppState>,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
    let session_id = path_uuid("sessionId", &id)?;
    let body = body?;
    let new = NewMessage {
        content: content_field(&body)?,
        metadata_json: metadata_field(&body)?,
        attachments: attachments_field(&body)?,
        parent_id: uuid_field(&body, "parentId")?,
        author_id: uuid_field(&body, "authorId")?,
    };
    let transport = transport_field(&body)?;
    // A held request may wait long for its reply: keep only what it needs, not the body
    // (ignored fields included) it came with.
    drop(body);
    // Before the message is stored: a refused stream must not leave it behind, and the agent
    // may answer before this handler looks.
    let delivery = Delivery::prepare(transport, &state, session_id)?;
    let appended = state.store.append_message(session_id, new).await??;
    let now = state.clock.now();
    let context = SessionContext::of(&appended.session);
    let created = MessageCreated::new(
        &appended.message,
        &appended.session,
        &context,
        appended.renewal,
        now,
    );
    match delivery {
        Delivery::Http { mut replies } => {
            let reply = wait_for_reply(&state, &appended.message, &mut replies.events).await;
            Ok(json(
                StatusCode::CREATED,
                &created.with_agent_response(reply.as_ref()),
            ))
        }
        Delivery::Sse { permit, replies } => Ok(reply_stream(
            state,
            appended.message,
            context,
            replies.events,
            permit,
        )),
        Delivery::Websocket => Ok(json(StatusCode::CREATED, &created)),
    }
}

/// Waits for the agent's reply to `message`, at most the reply timeout, and not past
/// shutdown.
async fn wait_for_reply(
    state: &AppState,
    message: &Message,
    events: &mut LiveEvents,
) -> Option<Message> {
    let timeout = tokio::time::sleep(state.reply_timeout);
    tokio::pin!(timeout);
    match next_reply(state, message, events, timeout.as_mut()).await {
        Waited::Reply(reply) => Some(reply),
        Waited::TimedOut | Waited::ShutDown => None,
    }
}

enum Waited {
    Reply(Message),
    TimedOut,
    ShutDown,
}

/// The next agent reply to `message` among `events`, unless `timeout` or shutdown comes first.
async fn next_reply(
    state: &AppState,
    message: &Message,
    events: &mut LiveEvents,
    mut timeout: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Waited {
    let replies = EventFilter::RepliesTo {
        session_id: message.session_id,
        message_id: message.id,
    };
    loop {
        // Biased, shutdown first: at shutdown the subscription closes too, and the answer
        // must then say "shutdown", at once.
        tokio::select! {
            biased;
            () = state.shutdown.cancelled() => return Waited::ShutDown,
            () = &mut timeout => return Waited::TimedOut,
            event = events.recv() => match event {
                Some(event) if replies.matches(&event) => {
                    if let EventData::Message { message: reply, .. } = &event.data {
                        return Waited::Reply(reply.clone());
                    }
                }
                Some(_) => {}
                // Cut off for falling behind (a very busy session): no reply can be seen
                // live any more, so wait out the timeout — or shutdown.
                None => {
                    return tokio::select! {
                        biased;
                        () = state.shutdown.cancelled() => Waited::ShutDown,
                        () = timeout.as_mut() => Waited::TimedOut,
                    };
                }
            },
        }
    }
}

/// `transport: "sse"`: `user_message`, then `agent_message` per reply as it arrives, then
/// `done` once the reply timeout passes with no new reply (or at shutdown).
fn reply_stream(
    state: Arc<AppState>,
    message: Message,
    context: SessionContext,
    events: LiveEvents,
    permit: OwnedSemaphorePermit,
) -> Response {
    let first = sse::frame(
        None,
        "user_message",
        &serde_json::to_string(&MessageView::new(&message, &context)).unwrap_or_default(),
    );
    let following = futures_util::stream::unfold(
        Some((state, message, context, events)),
        |waiting| async move {
            let (state, message, context, mut events) = waiting?;
            let timeout = tokio::time::sleep(state.reply_timeout);
            tokio::pin!(timeout);
            let (event, next) =
                match next_reply(&state, &message, &mut events, timeout.as_mut()).await {
                    Waited::Reply(reply) => {
                        let data = serde_json::to_string(&MessageView::new(&reply, &context))
                            .unwrap_or_default();
                        (
                            sse::frame(None, "agent_message", &data),
                            Some((state, message, context, events)),
                        )
                    }
                    Waited::TimedOut => (done("timeout"), None),
                    Waited::ShutDown => (done("shutdown"), None),
                };
            Some((event, next))
        },
    );
    let stream = futures_util::stream::once(async { first })
        .chain(following)
        .map(move |frame| {
            let _open = &permit;
            frame
        });
    sse::reply(stream)
}

fn done(reason: &str) -> String {
    sse::frame(
        None,
        "done",
        &serde_json::json!({ "reason": reason }).to_string(),
    )
}

/// One page of messages.
#[derive(Serialize, utoipa::ToSchema)]
struct MessageList<'a> {
    /// Newest first.
    messages: Vec<MessageView<'a>>,
    /// Whether at least one more message lies beyond the page in the paging direction.
    #[serde(rename = "hasMore")]
    has_more: bool,
    /// Where the page ends; null on an empty page.
    #[schema(required = true)]
    cursors: Option<Cursors>,
}

/// The bounds of a page: `before*` name its oldest message, `after*` its newest.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Cursors {
    before: u64,
    after: u64,
    before_seq: u64,
    after_seq: u64,
}

/// One event of a `transport: "sse"` answer, as its `event:` and `data:` lines (doc-only).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
struct ReplyStreamEvent {
    event: ReplyEventName,
    /// JSON text: the Message (`user_message`, `agent_message`) or `{"reason": …}` (`done`).
    data: String,
}

/// The name of a reply-stream event.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
enum ReplyEventName {
    UserMessage,
    AgentMessage,
    Done,
}

/// The body of `GET …/messages/{messageId}/thread`.
#[derive(Serialize, utoipa::ToSchema)]
struct MessageThread<'a> {
    /// The last `limit` messages of the branch from the root down to the message, oldest
    /// first.
    messages: Vec<MessageView<'a>>,
    /// Whether the branch goes further up than the first message listed.
    #[serde(rename = "hasMore")]
    has_more: bool,
}

#[utoipa::path(
    get,
    path = "/api/messaging/sessions/{sessionId}/messages",
    tag = "messages",
    summary = "Page through a session's messages, newest first",
    params(
        ("sessionId" = Uuid, Path, description = "The session id (any standard textual UUID form)."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Page size: 1..=100, default 50; a plain decimal integer, clamped into range."),
        ("before" = Option<i64>, Query, description = "Only messages created before this epoch-millisecond time (exclusive)."),
        ("after" = Option<i64>, Query, description = "Only messages created after this epoch-millisecond time (exclusive)."),
        ("beforeSeq" = Option<i64>, Query, description = "Only messages with a lower seq (exclusive)."),
        ("afterSeq" = Option<i64>, Query, description = "Only messages with a higher seq (exclusive)."),
        ("parentId" = Option<Uuid>, Query, description = "Only the direct replies to this message of the session."),
    ),
    responses(
        (status = 200, description = "One page of messages.", body = MessageList),
        (status = 400, description = "INVALID_UUID, INVALID_PAGINATION or INVALID_PARENT.", body = super::error::Envelope),
        super::openapi::ServerErrors,
        super::openapi::MissingOrExpired,
    ),
)]
async fn list_messages(
    id: String,
    state: Arc<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    let session_id = path_uuid("sessionId", &id)?;
    let message_query = MessageQuery {
        limit: query.limit(PAGE_LIMIT.0, PAGE_LIMIT.1)?,
        before_ms: query.integer("before")?,
        after_ms: query.integer("after")?,
        // Seqs start at 1: a bound below that means what 0 does.
        before_seq: query.integer("beforeSeq")?.map(seq_bound),
        after_seq: query.integer("afterSeq")?.map(seq_bound),
        parent_id: query.uuid("parentId")?,
    };
    let (session, _) = load_active(&state, session_id).await?;
    let page = state
        .store
        .page_messages(&session, &message_query)
        .await??;
    let context = SessionContext::of(&session);
    let cursors = match (page.messages.first(), page.messages.last()) {
        (Some(newest), Some(oldest)) => Some(Cursors {
            before: oldest.created_at.as_millis(),
            after: newest.created_at.as_millis(),
            before_seq: oldest.seq,
            after_seq: newest.seq,
        }),
        _ => None,
    };
    Ok(json(
        StatusCode::OK,
        &MessageList {
            messages: page
                .messages
                .iter()
                .map(|message| MessageView::new(message, &context))
                .collect(),
            has_more: page.has_more,
            cursors,
        },
    ))
}

#[utoipa::path(
    get,
    path = "/api/messaging/sessions/{sessionId}/messages/{messageId}",
    tag = "messages",
    summary = "Get a message",
    params(
        ("sessionId" = Uuid, Path, description = "The session id (any standard textual UUID form)."),
        ("messageId" = Uuid, Path, description = "The message id (any standard textual UUID form)."),
    ),
    responses(
        (status = 200, description = "The message.", body = MessageView),
        (status = 400, description = "INVALID_UUID.", body = super::error::Envelope),
        super::openapi::ServerErrors,
        (status = 404, description = "SESSION_NOT_FOUND or MESSAGE_NOT_FOUND.", body = super::error::Envelope),
        super::openapi::Expired,
    ),
)]
async fn get_message(
    id: String,
    message_id: String,
    state: Arc<AppState>,
) -> Result<Response, ApiError> {
    let session_id = path_uuid("sessionId", &id)?;
    let message_id = path_uuid("messageId", &message_id)?;
    let (session, _) = load_active(&state, session_id).await?;
    let message = state.store.message(session_id, message_id).await?.ok_or(
        SessionError::MessageNotFound {
            session_id,
            message_id,
        },
    )?;
    Ok(json(
        StatusCode::OK,
        &MessageView::new(&message, &SessionContext::of(&session)),
    ))
}

#[utoipa::path(
    get,
    path = "/api/messaging/sessions/{sessionId}/messages/{messageId}/thread",
    tag = "messages",
    summary = "Get the branch from the root to a message",
    params(
        ("sessionId" = Uuid, Path, description = "The session id (any standard textual UUID form)."),
        ("messageId" = Uuid, Path, description = "The message id (any standard textual UUID form)."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many messages, the last of the branch: 1..=1000, default 1000; a plain decimal integer, clamped into range."),
    ),
    responses(
        (status = 200, description = "The last `limit` messages of the branch, oldest first.", body = MessageThread),
        (status = 400, description = "INVALID_UUID or INVALID_PAGINATION.", body = super::error::Envelope),
        super::openapi::ServerErrors,
        (status = 404, description = "SESSION_NOT_FOUND or MESSAGE_NOT_FOUND.", body = super::error::Envelope),
        super::openapi::Expired,
    ),
)]
async fn get_thread(
    id: String,
    message_id: String,
    state: Arc<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    let session_id = path_uuid("sessionId", &id)?;
    let message_id = path_uuid("messageId", &message_id)?;
    let limit = query.limit(THREAD_LIMIT.0, THREAD_LIMIT.1)?;
    let (session, _) = load_active(&state, session_id).await?;
    let thread = state.store.thread(session_id, message_id, limit).await??;
    let context = SessionContext::of(&session);
    Ok(json(
        StatusCode::OK,
        &MessageThread {
            messages: thread
                .messages
                .iter()
                .map(|message| MessageView::new(message, &context))
                .collect(),
            has_more: thread.has_more,
        },
    ))
}

/// A seq bound as the store takes it: a negative one bounds like 0, below every seq.
fn seq_bound(given: i64) -> u64 {
    u64::try_from(given).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_values::{json_value, object};
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        #[test]
        fn content_accepts_exactly_1_to_4000_characters(
            text in proptest::collection::vec(any::<char>(), 0..=MAX_CONTENT_CHARS + 60)
                .prop_map(|chars| chars.into_iter().collect::<String>())
        ) {
            let chars = text.chars().count();
            match content_field(&object(json!({ "content": text.clone() }))) {
                Ok(content) => {
                    prop_assert!((1..=MAX_CONTENT_CHARS).contains(&chars));
                    prop_assert_eq!(content, text);
                }
                Err(error) => {
                    prop_assert!(chars == 0 || chars > MAX_CONTENT_CHARS);
                    prop_assert_eq!(error.code, "INVALID_CONTENT");
                }
            }
        }

        #[test]
        fn content_refuses_every_non_string(value in json_value()) {
            let result = content_field(&object(json!({ "content": value.clone() })));
            match value {
                Value::String(_) => {}
                Value::Null => prop_assert_eq!(result.unwrap_err().code, "MISSING_FIELDS"),
                _ => prop_assert_eq!(result.unwrap_err().code, "INVALID_CONTENT"),
            }
        }
    }

    #[test]
    fn content_is_counted_in_characters() {
        let ok = "é".repeat(MAX_CONTENT_CHARS);
        assert!(content_field(&object(json!({ "content": ok }))).is_ok());
        let long = "é".repeat(MAX_CONTENT_CHARS + 1);
        let error = content_field(&object(json!({ "content": long }))).unwrap_err();
        assert_eq!(
            error.message,
            "Content exceeds maximum length of 4000 characters"
        );
        assert_eq!(
            content_field(&object(json!({ "content": 5 })))
                .unwrap_err()
                .code,
            "INVALID_CONTENT"
        );
        assert_eq!(
            content_field(&object(json!({}))).unwrap_err().code,
            "MISSING_FIELDS"
        );
    }

    #[test]
    fn attachments_drop_unknown_keys_and_check_shape() {
        let parsed = attachments_field(&object(json!({
            "attachments": [{ "type": "image", "url": "u", "extra": 1, "name": null }]
        })))
        .unwrap();
        assert_eq!(
            parsed,
            vec![Attachment {
                kind: "image".into(),
                url: "u".into(),
                name: None
            }]
        );
        let missing_url = json!({ "attachments": [{ "type": "image" }] });
        assert_eq!(
            attachments_field(&object(missing_url)).unwrap_err().code,
            "INVALID_ATTACHMENTS"
        );
        let too_many = json!({ "attachments": vec![json!({"type":"a","url":"b"}); 17] });
        assert_eq!(
            attachments_field(&object(too_many)).unwrap_err().code,
            "INVALID_ATTACHMENTS"
        );
    }
}
