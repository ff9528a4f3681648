//! Turning request parts into validated values. Each parser returns the [`ApiError`] the
//! contract names for its input, so handlers only compose them.

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value};
use uuid::Uuid;
use warp::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use warp::http::HeaderMap;

use super::error::ApiError;
use crate::domain::message::{MAX_ATTACHMENTS, MAX_CONTENT_CHARS, MAX_METADATA_BYTES};
use crate::domain::session::INVALID_MINUTES;
use crate::domain::{Attachment, TimeoutConfigPatch, TimeoutPolicy};

/// A JSON request body: always an object.
pub type JsonObject = Map<String, Value>;

/// The `Content-Length` the request declares, if any.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the request declares a body (a length above zero, or chunked).
pub fn declares_body(headers: &HeaderMap) -> bool {
    declared_length(headers).is_some_and(|n| n > 0)
        || headers.contains_key(warp::http::header::TRANSFER_ENCODING)
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
pub fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads a body of at most `limit` bytes: the declared length is checked first, then the
/// bytes as they arrive (chunked bodies too).
///
/// # Errors
/// 413 over the limit; 408 when the client took too long to send it; 400 INVALID_JSON
/// when it cannot be read otherwise.
pub async fn read_body_bytes<S, B>(
    headers: &HeaderMap,
    body: S,
    limit: u64,
) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let declared = declared_length(headers);
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut bytes =
        Vec::with_capacity(usize::try_from(declared.unwrap_or(0).min(limit)).unwrap_or(0));
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|error| unreadable_body(&error))?;
        if (bytes.len() + chunk.remaining()) as u64 > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(bytes)
}

/// Why a body could not be read: the connection's read deadline (408), or anything else.
fn unreadable_body(error: &warp::Error) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if current
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return ApiError::request_timeout();
        }
        cause = current.source();
    }
    ApiError::invalid_json(format!("the body could not be read: {error}"))
}

/// Reads a JSON object body of at most `limit` bytes, after checking the content type.
///
/// # Errors
/// 415 without a JSON content type, 413 over the limit, 400 INVALID_JSON for anything
/// that is not a JSON object.
pub async fn read_json_object<S, B>(
    headers: &HeaderMap,
    body: S,
    limit: u64,
) -> Result<JsonObject, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if !is_json_content_type(headers) {
        let error = ApiError::unsupported_media_type();
        return Err(if declares_body(headers) {
            error.closing()
        } else {
            error
        });
    }
    let bytes = read_body_bytes(headers, body, limit).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::invalid_json("the body must be a JSON object")),
        Err(error) => Err(ApiError::invalid_json(error.to_string())),
    }
}

/// A field's value, treating `null` as absent.
pub fn field<'a>(object: &'a JsonObject, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|value| !value.is_null())
}

/// Fails with MISSING_FIELDS naming every required field that is absent or null.
///
/// # Errors
/// 400 MISSING_FIELDS.
pub fn require_fields(object: &JsonObject, names: &[&str]) -> Result<(), ApiError> {
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

/// Parses an id in any standard textual UUID form.
///
/// # Errors
/// 400 INVALID_UUID naming `name`.
pub fn parse_uuid(name: &str, text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::invalid_uuid(name, text))
}

/// Parses a path segment holding an id (percent-decoded first).
///
/// # Errors
/// 400 INVALID_UUID naming `name`.
pub fn path_uuid(name: &str, segment: &str) -> Result<Uuid, ApiError> {
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    parse_uuid(name, &decoded)
}

/// An optional UUID body field.
///
/// # Errors
/// 400 INVALID_UUID when present and not a UUID string.
pub fn uuid_field(object: &JsonObject, name: &str) -> Result<Option<Uuid>, ApiError> {
    match field(object, name) {
        None => Ok(None),
        Some(Value::String(text)) => parse_uuid(name, text).map(Some),
        Some(other) => Err(ApiError::invalid_uuid(name, &other.to_string())),
    }
}

/// The `metadata` field as compact JSON text (`{}` when absent).
///
/// # Errors
/// 400 INVALID_METADATA when not an object or over 10 KiB.
pub fn metadata_field(object: &JsonObject) -> Result<String, ApiError> {
    match field(object, "metadata") {
        None => Ok("{}".to_owned()),
        Some(value @ Value::Object(_)) => {
            let text = value.to_string();
            if text.len() > MAX_METADATA_BYTES {
                Err(ApiError::invalid_metadata(format!(
                    "metadata is {} bytes; the limit is {MAX_METADATA_BYTES} bytes of compact JSON",
                    text.len()
                )))
            } else {
                Ok(text)
            }
        }
        Some(_) => Err(ApiError::invalid_metadata("metadata must be a JSON object")),
    }
}

/// The `content` field: a string of 1..=4000 characters.
///
/// # Errors
/// 400 MISSING_FIELDS when absent, INVALID_CONTENT otherwise.
pub fn content_field(object: &JsonObject) -> Result<String, ApiError> {
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
pub fn attachments_field(object: &JsonObject) -> Result<Vec<Attachment>, ApiError> {
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
            let text = |key: &str, required: bool| match field(item, key) {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                None if !required => Ok(None),
                None => Err(ApiError::invalid_attachments(format!(
                    "attachments[{i}].{key} is required"
                ))),
                Some(_) => Err(ApiError::invalid_attachments(format!(
                    "attachments[{i}].{key} must be a string"
                ))),
            };
            Ok(Attachment {
                kind: text("type", true)?.unwrap_or_default(),
                url: text("url", true)?.unwrap_or_default(),
                name: text("name", false)?,
            })
        })
        .collect()
}

/// A partial timeout config object, as sent at creation or in a PATCH.
///
/// # Errors
/// 400 INVALID_TIMEOUT_CONFIG naming a mistyped field and its range.
pub fn timeout_patch(
    object: &JsonObject,
    policy: &TimeoutPolicy,
) -> Result<TimeoutConfigPatch, ApiError> {
    let mut patch = TimeoutConfigPatch::default();
    let mut mistyped: Option<&'static str> = None;
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
                *slot = Some(n.as_i64().unwrap_or(i64::MAX));
            }
            Some(_) => {
                *slot = Some(INVALID_MINUTES);
                mistyped.get_or_insert(name);
            }
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
    if mistyped.is_some() {
        // The policy reports the range of the first field it cannot accept.
        let error = policy.resolve_new(patch).err();
        if let Some(error) = error {
            return Err(error.into());
        }
    }
    Ok(patch)
}

/// The `timeoutConfig` member of a create body.
///
/// # Errors
/// 400 INVALID_TIMEOUT_CONFIG when it is not an object or a field is mistyped.
pub fn timeout_config_field(
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

/// Parsed query parameters (the last value of a repeated name wins).
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a raw query string (`+` and percent escapes decoded).
    pub fn parse(raw: &str) -> Self {
        Query(
            form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// An optional UUID parameter.
    ///
    /// # Errors
    /// 400 INVALID_UUID.
    pub fn uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.get(name)
            .map(|text| parse_uuid(name, text))
            .transpose()
    }

    /// An optional integer parameter: a plain decimal integer (optional `-`, digits) that
    /// fits in i64. `+5`, `1e3` and the empty string are refused.
    ///
    /// # Errors
    /// 400 INVALID_PAGINATION.
    pub fn integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(None);
        };
        let digits = text.strip_prefix('-').unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::invalid_pagination(name, text));
        }
        text.parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::invalid_pagination(name, text))
    }

    /// A page size: `default` when absent, else clamped into `1..=max`.
    ///
    /// # Errors
    /// 400 INVALID_PAGINATION.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        Ok(match self.integer("limit")? {
            None => default,
            Some(n) => usize::try_from(n.clamp(1, max as i64)).unwrap_or(default),
        })
    }
}

// Doc-only schemas for the OpenAPI document. The parsers above read bodies by hand (so each
// problem gets the contract's own error code); these structs describe exactly what they
// accept and are never built. Unknown fields are ignored, so no schema closes its object,
// and `null` for an optional field means absent, so every optional field is nullable.

/// The body of `POST /sessions` (read by `create_session` with [`require_fields`],
/// [`uuid_field`], [`metadata_field`] and [`timeout_config_field`]).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
pub(super) struct CreateSessionRequest {
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
pub(super) struct TimeoutConfigPatchBody {
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

/// How the client wants the agent's reply: `http` (= `sync`) holds the request,
/// `sse` (= `stream`) streams it, `websocket` answers at once.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "a schema for the OpenAPI document only")]
pub(super) enum TransportName {
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
pub(super) struct CreateMessageRequest {
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
pub(super) struct AttachmentRequest {
    /// The attachment's kind, e.g. `image`.
    #[schema(rename = "type")]
    kind: String,
    /// Where it is.
    url: String,
    /// Its name.
    name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn object(value: Value) -> JsonObject {
        match value {
            Value::Object(object) => object,
            _ => unreachable!("test inputs are objects"),
        }
    }

    fn policy() -> TimeoutPolicy {
        TimeoutPolicy {
            default_timeout_minutes: 30,
            min_timeout_minutes: 5,
            max_timeout_minutes: 1440,
            default_max_duration_minutes: 720,
            max_duration_limit_minutes: 2880,
            default_warning_threshold_minutes: 5,
        }
    }

    /// Any JSON value, nested a few levels.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|x| json!(x)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

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

    /// A query string carrying `text` as the value of `n`, whatever it holds.
    fn query_with(text: &str) -> Query {
        let raw = form_urlencoded::Serializer::new(String::new())
            .append_pair("n", text)
            .finish();
        Query::parse(&raw)
    }

    proptest! {
        #[test]
        fn integer_accepts_exactly_plain_decimals_that_fit_i64(
            text in prop_oneof![
                "-?[0-9]{1,20}",
                "[-+]?[0-9]{0,3}[.eE_ +-]?[0-9]{0,3}",
                ".{0,8}",
            ]
        ) {
            // i64's own parser accepts `-?[0-9]+` and a leading `+`; the contract refuses `+`.
            let expected = if text.starts_with('+') { None } else { text.parse::<i64>().ok() };
            match query_with(&text).integer("n") {
                Ok(value) => prop_assert_eq!(value, expected),
                Err(error) => {
                    prop_assert_eq!(expected, None);
                    prop_assert_eq!(error.code, "INVALID_PAGINATION");
                }
            }
        }

        #[test]
        fn integer_round_trips_every_i64(n: i64) {
            prop_assert_eq!(query_with(&n.to_string()).integer("n").unwrap(), Some(n));
        }

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
                    let given = |name: &str| field(&body, name).map(|v| v.as_i64().unwrap_or(i64::MAX));
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

        #[test]
        fn reading_any_bytes_as_a_json_body_never_panics(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                json_value().prop_map(|value| value.to_string().into_bytes()),
            ],
            split in any::<prop::sample::Index>(),
            limit in 0u64..400,
        ) {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
            // Two chunks, as a chunked body would arrive.
            let cut = split.index(bytes.len() + 1);
            let chunks = vec![
                Ok::<_, warp::Error>(bytes::Bytes::copy_from_slice(&bytes[..cut])),
                Ok(bytes::Bytes::copy_from_slice(&bytes[cut..])),
            ];
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime builds");
            let result = runtime.block_on(read_json_object(
                &headers,
                futures_util::stream::iter(chunks),
                limit,
            ));
            let expected_object = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|value| value.as_object().cloned());
            match result {
                Ok(object) => {
                    prop_assert!(bytes.len() as u64 <= limit);
                    prop_assert_eq!(Some(object), expected_object);
                }
                Err(error) if bytes.len() as u64 > limit => {
                    prop_assert_eq!(error.code, "PAYLOAD_TOO_LARGE");
                }
                Err(error) => {
                    prop_assert_eq!(expected_object, None);
                    prop_assert_eq!(error.code, "INVALID_JSON");
                }
            }
        }
    }

    #[test]
    fn integers_must_be_plain_decimal() {
        for bad in ["+5", "1e3", "", "abc", "5.0", "-", "99999999999999999999"] {
            let query = Query::parse(&format!("limit={}", bad.replace('+', "%2B")));
            assert_eq!(
                query.integer("limit").unwrap_err().code,
                "INVALID_PAGINATION",
                "{bad:?}"
            );
        }
        assert_eq!(Query::parse("limit=-5").integer("limit").unwrap(), Some(-5));
        assert_eq!(Query::parse("limit=0").limit(100, 1000).unwrap(), 1);
        assert_eq!(Query::parse("limit=5000").limit(100, 1000).unwrap(), 1000);
        assert_eq!(Query::parse("").limit(100, 1000).unwrap(), 100);
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
    fn metadata_limit_is_on_compact_bytes() {
        let at_limit = "x".repeat(MAX_METADATA_BYTES - r#"{"k":""}"#.len());
        assert!(metadata_field(&object(json!({ "metadata": { "k": at_limit } }))).is_ok());
        let over = "x".repeat(MAX_METADATA_BYTES);
        assert_eq!(
            metadata_field(&object(json!({ "metadata": { "k": over } })))
                .unwrap_err()
                .code,
            "INVALID_METADATA"
        );
        assert_eq!(
            metadata_field(&object(json!({ "metadata": [1] })))
                .unwrap_err()
                .code,
            "INVALID_METADATA"
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

    #[test]
    fn ids_accept_every_standard_form() {
        let id = Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
        for form in [
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
        ] {
            assert_eq!(parse_uuid("id", form).unwrap(), id, "{form}");
        }
        assert_eq!(
            path_uuid("id", "%7B67e55044-10b1-426f-9247-bb680e5fe0c8%7D").unwrap(),
            id
        );
        assert_eq!(parse_uuid("id", "nope").unwrap_err().code, "INVALID_UUID");
    }
}
