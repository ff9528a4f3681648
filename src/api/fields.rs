//! Values read from more than one resource's requests: ids (in paths, queries and bodies)
//! and body fields. Each parser returns the [`ApiError`] the contract names for its input.

use serde_json::Value;
use uuid::Uuid;

use super::body::JsonObject;
use super::error::ApiError;
use crate::domain::message::MAX_METADATA_BYTES;

/// A field's value, treating `null` as absent.
pub(super) fn field<'a>(object: &'a JsonObject, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|value| !value.is_null())
}

/// Parses an id in any standard textual UUID form.
///
/// # Errors
/// 400 INVALID_UUID naming `name`.
pub(super) fn parse_uuid(name: &str, text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::invalid_uuid(name, text))
}

/// Parses a path segment holding an id (percent-decoded first).
///
/// # Errors
/// 400 INVALID_UUID naming `name`.
pub(super) fn path_uuid(name: &str, segment: &str) -> Result<Uuid, ApiError> {
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    parse_uuid(name, &decoded)
}

/// An optional UUID body field.
///
/// # Errors
/// 400 INVALID_UUID when present and not a UUID string.
pub(super) fn uuid_field(object: &JsonObject, name: &str) -> Result<Option<Uuid>, ApiError> {
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
pub(super) fn metadata_field(object: &JsonObject) -> Result<String, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_values::object;
    use serde_json::json;

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
