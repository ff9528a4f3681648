//! Reading request bodies: the declared length, the content type, and the bytes themselves
//! under the body limit. Each reader returns the [`ApiError`] the contract names for its
//! input.

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value};
use warp::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use warp::http::HeaderMap;
use warp::{Filter, Rejection};

use super::error::ApiError;
use super::SharedState;

/// A JSON request body: always an object.
pub(super) type JsonObject = Map<String, Value>;

/// The `Content-Length` the request declares, if any.
pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the request declares a body (a length above zero, or chunked).
pub(super) fn declares_body(headers: &HeaderMap) -> bool {
    declared_length(headers).is_some_and(|n| n > 0)
        || headers.contains_key(warp::http::header::TRANSFER_ENCODING)
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
pub(super) fn is_json_content_type(headers: &HeaderMap) -> bool {
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
pub(super) async fn read_body_bytes<S, B>(
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
pub(super) async fn read_json_object<S, B>(
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

/// The request body as a JSON object, or the error explaining why it is not one.
pub(super) fn json_body(
    state: &SharedState,
) -> impl Filter<Extract = (Result<JsonObject, ApiError>,), Error = Rejection> + Clone {
    let state = state.clone();
    warp::header::headers_cloned()
        .and(warp::body::stream())
        .then(move |headers: HeaderMap, body| {
            let state = state.clone();
            async move {
                let _reserved = state.reserve_body(&headers)?;
                read_json_object(&headers, body, state.max_body_bytes).await
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_values::json_value;
    use proptest::prelude::*;

    proptest! {
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
}
