//! Value encoding: one format byte, then bincode. The only place values are (de)serialized,
//! so the codec can be swapped by bumping the format byte.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// Leading byte of every value written by this build.
const VALUE_FORMAT_V1: u8 = 1;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a value with its format byte.
///
/// # Errors
/// [`Error::Codec`] if bincode rejects the value (not expected for the store's types).
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = vec![VALUE_FORMAT_V1];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| Error::Codec(e.into()))?;
    Ok(out)
}

/// Decodes a value written by [`encode`].
///
/// # Errors
/// [`Error::Codec`] for an unknown format byte, a truncated value or trailing bytes.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&VALUE_FORMAT_V1, body)) => {
            let (value, read) = bincode::serde::decode_from_slice(body, config())
                .map_err(|e| Error::Codec(e.into()))?;
            if read != body.len() {
                return Err(Error::Codec(
                    format!("{} trailing bytes", body.len() - read).into(),
                ));
            }
            Ok(value)
        }
        Some((format, _)) => Err(Error::Codec(
            format!("unknown value format {format}").into(),
        )),
        None => Err(Error::Codec("empty value".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Attachment, Message, Session, TimeoutConfig, Timestamp};
    use uuid::Uuid;

    fn sample_session() -> Session {
        let mut session = Session::new(
            Uuid::now_v7(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            TimeoutConfig {
                timeout_minutes: 30,
                auto_renew: true,
                max_duration_minutes: 720,
                warning_threshold_minutes: 5,
            },
            r#"{"topic":"café ☕","n":[1,2]}"#.into(),
            Timestamp::from_millis(1_795_255_200_123),
        );
        session.message_count = 7;
        session.last_message_id = Some(Uuid::now_v7());
        session
    }

    #[test]
    fn session_round_trips() {
        let session = sample_session();
        let bytes = encode(&session).unwrap();
        assert_eq!(bytes[0], VALUE_FORMAT_V1);
        assert_eq!(decode::<Session>(&bytes).unwrap(), session);
    }

    #[test]
    fn message_round_trips() {
        let message = Message {
            id: Uuid::now_v7(),
            session_id: Uuid::now_v7(),
            seq: 42,
            parent_id: None,
            content: "hello 👋".into(),
            author_id: Uuid::new_v4(),
            is_agent: true,
            created_at: Timestamp::from_micros(123_456_789),
            metadata_json: "{}".into(),
            attachments: vec![Attachment {
                kind: "image".into(),
                url: "https://example.com/a.png".into(),
                name: None,
            }],
        };
        assert_eq!(
            decode::<Message>(&encode(&message).unwrap()).unwrap(),
            message
        );
    }

    #[test]
    fn unknown_format_truncation_and_trailing_bytes_are_errors() {
        let mut bytes = encode(&sample_session()).unwrap();
        let mut unknown = bytes.clone();
        unknown[0] = 99;
        assert!(decode::<Session>(&unknown).is_err());
        assert!(decode::<Session>(&bytes[..bytes.len() - 3]).is_err());
        bytes.push(0);
        assert!(decode::<Session>(&bytes).is_err());
        assert!(decode::<Session>(&[]).is_err());
    }
}
