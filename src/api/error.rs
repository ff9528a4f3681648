//! The JSON error envelope, and the one place errors become HTTP responses.

use std::convert::Infallible;

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::domain::{SessionError, TimeoutConfigError};

/// An error as a client sees it: a status, a stable code and a readable explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable machine-readable code, e.g. `SESSION_NOT_FOUND`.
    pub code: &'static str,
    /// A short human-readable message.
    pub message: String,
    /// More detail, e.g. which id or field.
    pub details: String,
    /// Whether to close the connection after answering: set when the request body was
    /// left unread, so a keep-alive client does not write its next request into it.
    pub close_connection: bool,
}

impl warp::reject::Reject for ApiError {}

/// The error envelope every error answer carries (except the Feather route's 422).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorEnvelope)]
pub(super) struct Envelope<'a> {
    /// Always `false`.
    #[schema(schema_with = always_false)]
    success: bool,
    error: Body<'a>,
}

/// What went wrong.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorBody)]
struct Body<'a> {
    /// The stable machine-readable code, e.g. `SESSION_NOT_FOUND`.
    #[schema(example = "SESSION_NOT_FOUND")]
    code: &'a str,
    /// A short human-readable message.
    #[schema(example = "Session not found")]
    message: &'a str,
    /// More detail, e.g. which id or field.
    #[schema(example = "session 3c90c3cc-0d44-4b50-8888-8dd25736052a does not exist")]
    details: &'a str,
}

/// The schema of `success` in the envelope: the boolean `false`.
fn always_false() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::Boolean)
        .enum_values(Some([false]))
        .build()
}

/// Longest client-supplied value echoed back in `details`.
const ECHO_LIMIT: usize = 64;

/// A client value, shortened for echoing in an error.
fn echo(value: &str) -> String {
    match value.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: details.into(),
            close_connection: false,
        }
    }

    /// Marks the request body as unread, so the connection is closed after the answer.
    pub fn closing(mut self) -> Self {
        self.close_connection = true;
        self
    }

    pub(super) fn envelope(&self) -> Envelope<'_> {
        Envelope {
            success: false,
            error: Body {
                code: self.code,
                message: &self.message,
                details: &self.details,
            },
        }
    }

    /// The envelope as JSON text, for answers written below warp (the connection loop's).
    pub(crate) fn envelope_json(&self) -> String {
        // Strings only: serializing cannot fail.
        serde_json::to_string(&self.envelope()).unwrap_or_default()
    }

    /// The response: the envelope with this error's status.
    pub fn into_response(self) -> Response {
        let mut response =
            warp::reply::with_status(warp::reply::json(&self.envelope()), self.status)
                .into_response();
        if self.close_connection {
            response.headers_mut().insert(
                warp::http::header::CONNECTION,
                warp::http::HeaderValue::from_static("close"),
            );
        }
        response
    }

    /// 408 REQUEST_TIMEOUT: the request was not sent whole in time; the connection closes.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            "Request timeout",
            "the request was not sent whole within the request read timeout (--request-read-timeout-seconds)",
        )
        .closing()
    }

    /// 400 INVALID_JSON.
    pub fn invalid_json(details: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
            "Request body must be a JSON object",
            details,
        )
    }

    /// 400 MISSING_FIELDS naming every missing field.
    pub fn missing_fields(fields: &[&str]) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MISSING_FIELDS",
            "Missing required fields",
            format!("missing: {}", fields.join(", ")),
        )
    }

    /// 400 INVALID_UUID for `field`.
    pub fn invalid_uuid(field: &str, value: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_UUID",
            format!("Invalid {field}: must be a UUID"),
            format!("{field} {:?} is not a UUID", echo(value)),
        )
    }

    /// 400 INVALID_CONTENT.
    pub fn invalid_content(message: &str, details: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_CONTENT", message, details)
    }

    /// 400 INVALID_METADATA.
    pub fn invalid_metadata(details: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_METADATA",
            "Invalid metadata",
            details,
        )
    }

    /// 400 INVALID_ATTACHMENTS.
    pub fn invalid_attachments(details: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_ATTACHMENTS",
            "Invalid attachments",
            details,
        )
    }

    /// 400 INVALID_TIMEOUT_CONFIG with a message naming the field and its range.
    pub fn invalid_timeout(message: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_TIMEOUT_CONFIG",
            message.clone(),
            message,
        )
    }

    /// 400 INVALID_PAGINATION for a query parameter.
    pub fn invalid_pagination(parameter: &str, value: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_PAGINATION",
            "Invalid pagination parameter",
            format!("{parameter} {:?} is not valid", echo(value)),
        )
    }

    /// 400 INVALID_QUERY.
    pub fn invalid_query(details: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
            "Invalid query parameter",
            details,
        )
    }

    /// 400 INVALID_TRANSPORT.
    pub fn invalid_transport(field: &str, value: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_TRANSPORT",
            "Invalid transport",
            format!(
                "{field} {:?} must be one of http, sse, websocket, sync, stream",
                echo(value)
            ),
        )
    }

    /// 401 UNAUTHORIZED.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Unauthorized",
            "a valid X-API-Key header is required",
        )
    }

    /// 400 INVALID_LAST_EVENT_ID.
    pub fn invalid_last_event_id(given: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_LAST_EVENT_ID",
            "Invalid Last-Event-ID",
            format!("Last-Event-ID {given:?} must be an event id, a decimal integer"),
        )
    }

    /// 404 NOT_FOUND for an unknown route.
    pub fn route_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Not found",
            "no such route",
        )
    }

    /// 404 NOT_FOUND for a path outside every route, with a hint when it lacks the
    /// `/api/messaging` prefix that every sessions route has.
    pub fn path_not_found(path: &str) -> Self {
        let hint = if path.starts_with("/sessions") || path.starts_with("/events") {
            format!(": did you mean /api/messaging{path}?")
        } else {
            ", its description at /api/openapi.json".to_owned()
        };
        let mut error = Self::route_not_found();
        error.details = format!("no route {path}; the sessions API is under /api/messaging{hint}");
        error
    }

    /// 405 METHOD_NOT_ALLOWED.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "Method not allowed",
            "this route does not accept that method",
        )
    }

    /// 413 PAYLOAD_TOO_LARGE. The rest of the body is never read, so the connection closes.
    pub fn payload_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "Request body too large",
            format!("the body limit is {limit} bytes"),
        )
        .closing()
    }

    /// 415 UNSUPPORTED_MEDIA_TYPE.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "Unsupported media type",
            "send the body with Content-Type: application/json",
        )
    }

    /// 500 INTERNAL_ERROR: the cause is logged under the request's id; the client gets the id
    /// only (also in its `X-Request-Id`).
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        let request_id = crate::http::access::current_request_id();
        tracing::error!(%request_id, error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "Internal server error",
            format!("request id {request_id}"),
        )
    }

    /// 431 HEADERS_TOO_LARGE.
    pub fn headers_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "HEADERS_TOO_LARGE",
            "Request headers too large",
            format!("the request line and headers must fit in {limit} bytes"),
        )
    }

    /// 414 URI_TOO_LONG.
    pub fn uri_too_long() -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            "URI_TOO_LONG",
            "URI too long",
            "the request target must be shorter than 65535 bytes",
        )
    }

    /// 400 INVALID_REQUEST: not an HTTP request that can be parsed.
    pub fn invalid_request() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "Invalid HTTP request",
            "the request could not be parsed as HTTP",
        )
    }

    /// 503 SERVER_BUSY.
    pub fn server_busy() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVER_BUSY",
            "Too many requests in flight",
            "the request bodies being read already fill the server's budget (--max-inflight-body-mb); retry later",
        )
    }

    /// 503 STREAMS_EXHAUSTED.
    pub fn streams_exhausted() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "STREAMS_EXHAUSTED",
            "Too many open streams",
            "the server has as many event streams open as it allows (--max-streams); retry later",
        )
    }

    /// 409 EXPORT_RUNNING: another export is being sent.
    pub fn export_running() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "EXPORT_RUNNING",
            "An export is already running",
            "the server sends one export at a time; retry when the other one has ended",
        )
    }

    /// 503 STORAGE_UNAVAILABLE: the cause is logged under the request's id.
    pub fn storage_unavailable(cause: &dyn std::fmt::Display) -> Self {
        let request_id = crate::http::access::current_request_id();
        tracing::error!(%request_id, error = %cause, "storage unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "STORAGE_UNAVAILABLE",
            "Storage unavailable",
            format!("the store cannot write; request id {request_id}"),
        )
    }

    /// The store refuses writes for `reason` until the disk takes them again.
    pub fn storage_degraded(reason: &str) -> Self {
        let request_id = crate::http::access::current_request_id();
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "STORAGE_UNAVAILABLE",
            "Storage unavailable",
            format!("the store is not taking writes: {reason}; request id {request_id}"),
        )
    }
}

impl From<TimeoutConfigError> for ApiError {
    fn from(error: TimeoutConfigError) -> Self {
        ApiError::invalid_timeout(error.to_string())
    }
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> Self {
        let (code, details) = (error.code(), error.to_string());
        let (status, message) = match error {
            SessionError::NotFound(_) => (StatusCode::NOT_FOUND, "Session not found"),
            SessionError::Expired { .. } => (StatusCode::GONE, "Session has expired"),
            SessionError::MaxDurationReached { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Session cannot be extended beyond its maximum duration",
            ),
            SessionError::InvalidParent { .. } => {
                (StatusCode::BAD_REQUEST, "Invalid parent message")
            }
            SessionError::ForbiddenAuthor { .. } => (
                StatusCode::FORBIDDEN,
                "Author must be the session's user or agent",
            ),
            SessionError::InvalidTimeout(error) => return error.into(),
            SessionError::MessageNotFound { .. } => (StatusCode::NOT_FOUND, "Message not found"),
            // Only imports through the library can meet these: the API makes the ids.
            SessionError::AlreadyExists(_) => (StatusCode::CONFLICT, "Session already exists"),
            SessionError::MessageExists(_) => (StatusCode::CONFLICT, "Message already exists"),
            SessionError::Unrestorable { .. } => {
                (StatusCode::BAD_REQUEST, "Session cannot be restored")
            }
        };
        ApiError::new(status, code, message, details)
    }
}

impl From<crate::store::UnknownEventId> for ApiError {
    fn from(error: crate::store::UnknownEventId) -> Self {
        ApiError::new(
            StatusCode::CONFLICT,
            "LAST_EVENT_ID_UNKNOWN",
            "Last-Event-ID was never issued by this store",
            format!(
                "{error}; the store was replaced or restored since: reconnect without Last-Event-ID to follow new events, or with Last-Event-ID: 0 to replay every event kept"
            ),
        )
    }
}

impl From<crate::Error> for ApiError {
    fn from(error: crate::Error) -> Self {
        use crate::Error;
        match &error {
            Error::Degraded(reason) => ApiError::storage_degraded(reason),
            _ if error.is_unavailable() => ApiError::storage_unavailable(&error),
            _ => ApiError::internal(&error),
        }
    }
}

/// Renders a handler's outcome.
pub fn respond(outcome: Result<Response, ApiError>) -> Response {
    outcome.unwrap_or_else(ApiError::into_response)
}

/// Turns every rejection — ours and warp's own — into the envelope.
///
/// # Errors
/// Never: every rejection gets a response.
pub async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if let Some(error) = rejection.find::<ApiError>() {
        error.clone()
    } else if rejection.is_not_found() {
        ApiError::route_not_found()
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::method_not_allowed()
    } else if let Some(refused) = rejection.find::<warp::filters::cors::CorsForbidden>() {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "CORS_FORBIDDEN",
            "Origin not allowed",
            refused.to_string(),
        )
    } else {
        // Bodies and queries are parsed by our own code, so warp's body and query
        // rejections cannot arise; anything else unexpected is logged with a request id.
        ApiError::internal(&format_args!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.into_response())
}
