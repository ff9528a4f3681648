//! Messages: an append-only tree per session.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::time::Timestamp;

/// Longest accepted message content, in Unicode scalar values.
pub const MAX_CONTENT_CHARS: usize = 4000;
/// Largest accepted metadata, in bytes of its compact UTF-8 JSON.
pub const MAX_METADATA_BYTES: usize = 10 * 1024;
/// Most attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 16;

/// A file or link attached to a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The attachment's kind (`type` on the wire), e.g. `image`.
    pub kind: String,
    /// Where it lives.
    pub url: String,
    /// A display name, if any.
    pub name: Option<String>,
}

/// A stored message. Never changed once written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// UUID v7 (time-ordered).
    pub id: Uuid,
    /// The session it belongs to.
    pub session_id: Uuid,
    /// 1, 2, 3… within the session, in append order.
    pub seq: u64,
    /// The message it replies to; `None` for a root.
    pub parent_id: Option<Uuid>,
    /// The text, 1..=4000 characters.
    pub content: String,
    /// The session's user or agent.
    pub author_id: Uuid,
    /// Whether the author is the session's agent.
    pub is_agent: bool,
    /// When it was stored; never earlier than the message before it.
    pub created_at: Timestamp,
    /// Client metadata as compact JSON text.
    pub metadata_json: String,
    /// Attachments, at most 16.
    pub attachments: Vec<Attachment>,
}

/// A message as a client asked to append it, already validated for shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// The text.
    pub content: String,
    /// The parent the client named, or `None` for "reply to the newest message".
    pub parent_id: Option<Uuid>,
    /// The author the client named, or `None` for the session's user.
    pub author_id: Option<Uuid>,
    /// Compact JSON text of the metadata object.
    pub metadata_json: String,
    /// Validated attachments.
    pub attachments: Vec<Attachment>,
}
