//! `GET /api/openapi.json`: the OpenAPI 3.1 document of this API, generated with utoipa from
//! the handlers' `#[utoipa::path]` annotations and the views' `ToSchema` derives.
//!
//! [`ROUTES`] is the one list of (method, path template) that the router serves;
//! `tests/api/openapi.rs` checks that the document lists exactly these operations and that
//! the router answers each of them (and only them) on a real server.
//!
//! Request bodies are read by hand, so each problem gets the contract's own error code; the
//! doc-only request schemas beside each handler describe exactly what those readers accept
//! and are never built. Unknown fields are ignored, so no schema closes its object, and
//! `null` for an optional field means absent, so every optional field is nullable.

use std::sync::OnceLock;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::OpenApi;
use warp::http::header::CONTENT_TYPE;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// The route serving the document.
pub const PATH: &str = "/api/openapi.json";

/// The name of the API-key security scheme (the `X-API-Key` header).
pub const API_KEY_SCHEME: &str = "apiKey";

/// Every (method, path template) of the API the router serves, in the document's spelling
/// (the inspector's page under `/inspect` is not an API route, and is not listed). Adding a
/// route means adding it here, to the router and to [`ApiDoc`]; the integration tests fail
/// until all three agree.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/messaging/sessions/health"),
    ("POST", "/api/messaging/sessions"),
    ("GET", "/api/messaging/sessions"),
    ("GET", "/api/messaging/sessions/{sessionId}"),
    ("DELETE", "/api/messaging/sessions/{sessionId}"),
    ("POST", "/api/messaging/sessions/{sessionId}/renew"),
    ("POST", "/api/messaging/sessions/{sessionId}/heartbeat"),
    ("PATCH", "/api/messaging/sessions/{sessionId}/timeout"),
    ("POST", "/api/messaging/sessions/{sessionId}/messages"),
    ("GET", "/api/messaging/sessions/{sessionId}/messages"),
    (
        "GET",
        "/api/messaging/sessions/{sessionId}/messages/{messageId}",
    ),
    (
        "GET",
        "/api/messaging/sessions/{sessionId}/messages/{messageId}/thread",
    ),
    ("GET", "/api/messaging/sessions/{sessionId}/events"),
    ("GET", "/api/messaging/events"),
    ("POST", "/v1/ask-feather/sessions/{session_id}/messages"),
    ("GET", PATH),
    ("GET", super::metrics::PATH),
    ("GET", crate::backup::EXPORT_PATH),
];

/// The errors any operation can answer: 401, 500, 503.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "a response set for the document; never built")]
pub(super) enum ServerErrors {
    /// UNAUTHORIZED: an API key is configured and X-API-Key is missing or wrong.
    #[response(status = 401)]
    Unauthorized(super::error::Envelope<'static>),
    /// INTERNAL_ERROR: never leaks internals; logged with a request id.
    #[response(status = 500)]
    Internal(super::error::Envelope<'static>),
    /// STORAGE_UNAVAILABLE: the store cannot write or read. STREAMS_EXHAUSTED, on the routes
    /// that stream: as many streams are open as the server allows.
    #[response(status = 503)]
    StorageUnavailable(super::error::Envelope<'static>),
}

/// The errors of an operation on one session: 404, 410.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "a response set for the document; never built")]
pub(super) enum MissingOrExpired {
    /// SESSION_NOT_FOUND: no such session.
    #[response(status = 404)]
    NotFound(super::error::Envelope<'static>),
    /// SESSION_EXPIRED: the session has expired.
    #[response(status = 410)]
    Expired(super::error::Envelope<'static>),
}

/// SESSION_EXPIRED: the session has expired.
#[derive(utoipa::IntoResponses)]
#[response(status = 410)]
#[allow(dead_code, reason = "a response set for the document; never built")]
pub(super) struct Expired(super::error::Envelope<'static>);

/// The errors of reading a JSON body: 408, 413, 415.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "a response set for the document; never built")]
pub(super) enum BodyErrors {
    /// REQUEST_TIMEOUT: the body did not arrive whole within the request read timeout
    /// (default 30 s); the connection is closed.
    #[response(status = 408)]
    RequestTimeout(super::error::Envelope<'static>),
    /// PAYLOAD_TOO_LARGE: the body is over the limit (default 64 KiB).
    #[response(status = 413)]
    PayloadTooLarge(super::error::Envelope<'static>),
    /// UNSUPPORTED_MEDIA_TYPE: the body is not sent with a JSON content type.
    #[response(status = 415)]
    UnsupportedMediaType(super::error::Envelope<'static>),
}

/// The document's root: every operation, the schemas they name, and the security scheme.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sessiond",
        description = "Durable conversation sessions between users and AI agents: the elizaOS \
            messaging-sessions API (`/api/messaging`) and the Feather send-message route. Every \
            error but the Feather route's 422 is the envelope \
            `{\"success\":false,\"error\":{\"code\",\"message\",\"details\"}}`; an unknown route \
            answers 404 NOT_FOUND and a known route with another method 405 METHOD_NOT_ALLOWED, \
            both in the envelope. When the server has an API key, every operation but health \
            needs it in `X-API-Key` (401 UNAUTHORIZED otherwise)."
    ),
    paths(
        super::health::check_health,
        super::sessions::create_session,
        super::sessions::list_sessions,
        super::sessions::get_session,
        super::sessions::delete_session,
        super::sessions::renew_session,
        super::sessions::heartbeat_session,
        super::sessions::update_session_timeout,
        super::messages::create_message,
        super::messages::list_messages,
        super::messages::get_message,
        super::messages::get_thread,
        super::events::stream_session_events,
        super::events::stream_owner_events,
        super::feather::create_feather_message,
        get_openapi,
        super::metrics::scrape,
        super::admin::export_store,
    ),
    modifiers(&Security),
    security(("apiKey" = [])),
    tags(
        (name = "health", description = "Liveness; never needs the API key."),
        (name = "sessions", description = "Sessions: create, list, read, renew, heartbeat, timeout, delete."),
        (name = "messages", description = "The append-only message tree of a session."),
        (name = "events", description = "Server-Sent Events streams."),
        (name = "feather", description = "The Feather ask-feather compatible route."),
        (name = "meta", description = "This document, and the server's metrics."),
        (name = "admin", description = "Operating the server: an online backup."),
    )
)]
pub struct ApiDoc;

/// Declares the `X-API-Key` scheme, and lifts it from health (security `[]`: no key needed).
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "Required on every route but health when the server has an API key.",
            ))),
        );
        let health = openapi
            .paths
            .paths
            .get_mut(super::health::PATH)
            .and_then(|item| item.get.as_mut());
        if let Some(operation) = health {
            operation.security = Some(Vec::new());
        }
    }
}

/// The document as JSON, rendered once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        // Only strings, numbers, maps and lists, with string keys: cannot fail.
        let mut document =
            serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document is JSON");
        fix_link_field_names(&mut document);
        serde_json::to_string_pretty(&document).expect("a JSON value serializes")
    })
}

/// utoipa 5 serializes a Link Object's fields in snake case (`operation_id`); OpenAPI spells
/// them in camel case (`operationId`), and tools ignore links without it.
fn fix_link_field_names(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(object) => {
            if let Some(serde_json::Value::Object(links)) = object.get_mut("links") {
                for link in links.values_mut() {
                    let serde_json::Value::Object(link) = link else {
                        continue;
                    };
                    for (snake, camel) in [
                        ("operation_id", "operationId"),
                        ("operation_ref", "operationRef"),
                        ("request_body", "requestBody"),
                    ] {
                        if let Some(field) = link.remove(snake) {
                            link.insert(camel.to_owned(), field);
                        }
                    }
                }
            }
            object.values_mut().for_each(fix_link_field_names);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(fix_link_field_names),
        _ => {}
    }
}

/// The route.
pub(super) fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    openapi_get()
}

/// GET /api/openapi.json
fn openapi_get() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("api")
        .and(warp::path("openapi.json"))
        .and(warp::path::end())
        .and(warp::get())
        .map(get_openapi)
}

/// Answers the cached document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    summary = "This OpenAPI 3.1 document",
    responses(
        (status = 200, description = "The document.", content_type = "application/json", body = Object),
        (status = 401, description = "UNAUTHORIZED: an API key is configured and X-API-Key is missing or wrong.", body = super::error::Envelope),
    ),
)]
fn get_openapi() -> Response {
    let mut response = Response::new(document().into());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_openapi_3_1_with_every_route() {
        let document: serde_json::Value =
            serde_json::from_str(document()).expect("the document is JSON");
        assert_eq!(document["openapi"], "3.1.0");
        let mut listed = 0;
        for (path, item) in document["paths"].as_object().expect("paths is an object") {
            for method in item.as_object().expect("a path item is an object").keys() {
                let method = method.to_ascii_uppercase();
                assert!(
                    ROUTES.contains(&(method.as_str(), path.as_str())),
                    "{method} {path} is documented but not in ROUTES"
                );
                listed += 1;
            }
        }
        assert_eq!(listed, ROUTES.len());
    }

    /// The schemas spell the content limit as a literal (the derive takes no constant).
    #[test]
    fn the_documented_content_limit_is_the_enforced_one() {
        let document: serde_json::Value =
            serde_json::from_str(document()).expect("the document is JSON");
        for schema in ["CreateMessageRequest", "FeatherMessageRequest"] {
            let content = &document["components"]["schemas"][schema]["properties"]["content"];
            assert_eq!(
                content["maxLength"],
                crate::domain::message::MAX_CONTENT_CHARS,
                "{schema}.content"
            );
        }
    }
}
