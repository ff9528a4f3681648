//! The JSON shapes of API.md, built from domain values.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::domain::{Attachment, Message, Renewal, Session, TimeoutConfig, Timestamp};

/// A JSON response with `status`.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

use warp::Reply as _;

/// Stored JSON text embedded as-is. Text that is somehow not JSON (it was validated on
/// the way in) degrades to `{}` rather than failing the response.
fn raw(text: &str) -> &RawValue {
    serde_json::from_str(text).unwrap_or_else(|_| {
        tracing::warn!("stored metadata is not JSON; answering {{}}");
        serde_json::from_str("{}").expect("{} is JSON")
    })
}

/// `timeoutConfig`: the session's full, merged timeout configuration.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = TimeoutConfig)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutConfigView {
    timeout_minutes: u32,
    auto_renew: bool,
    max_duration_minutes: u32,
    warning_threshold_minutes: u32,
}

impl From<TimeoutConfig> for TimeoutConfigView {
    fn from(c: TimeoutConfig) -> Self {
        TimeoutConfigView {
            timeout_minutes: c.timeout_minutes,
            auto_renew: c.auto_renew,
            max_duration_minutes: c.max_duration_minutes,
            warning_threshold_minutes: c.warning_threshold_minutes,
        }
    }
}

/// The body of `POST /sessions`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionCreated<'a> {
    session_id: Uuid,
    /// The session's channel, as elizaOS clients follow replies by it: the session id.
    channel_id: Uuid,
    agent_id: Uuid,
    user_id: Uuid,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(value_type = Object)]
    metadata: &'a RawValue,
    #[schema(format = DateTime)]
    expires_at: String,
    timeout_config: TimeoutConfigView,
}

impl<'a> SessionCreated<'a> {
    /// The view of a new session.
    pub fn new(s: &'a Session) -> Self {
        SessionCreated {
            session_id: s.id,
            channel_id: s.id,
            agent_id: s.agent_id,
            user_id: s.user_id,
            created_at: s.created_at.to_rfc3339(),
            metadata: raw(&s.metadata_json),
            expires_at: s.expires_at().to_rfc3339(),
            timeout_config: s.timeout.into(),
        }
    }
}

/// SessionInfo.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo<'a> {
    session_id: Uuid,
    /// The session's channel, as elizaOS clients follow replies by it: the session id.
    channel_id: Uuid,
    agent_id: Uuid,
    user_id: Uuid,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    last_activity: String,
    #[schema(value_type = Object)]
    metadata: &'a RawValue,
    #[schema(format = DateTime)]
    expires_at: String,
    timeout_config: TimeoutConfigView,
    renewal_count: u64,
    time_remaining: u64,
    is_near_expiration: bool,
    message_count: u64,
}

impl<'a> SessionInfo<'a> {
    /// The view of a session at `now`.
    pub fn new(s: &'a Session, now: Timestamp) -> Self {
        SessionInfo {
            session_id: s.id,
            channel_id: s.id,
            agent_id: s.agent_id,
            user_id: s.user_id,
            created_at: s.created_at.to_rfc3339(),
            last_activity: s.last_activity.to_rfc3339(),
            metadata: raw(&s.metadata_json),
            expires_at: s.expires_at().to_rfc3339(),
            timeout_config: s.timeout.into(),
            renewal_count: s.renewal_count,
            time_remaining: u64::try_from(s.time_remaining(now).as_millis()).unwrap_or(u64::MAX),
            is_near_expiration: s.is_near_expiration(now),
            message_count: s.message_count,
        }
    }
}

impl<'a> SessionInfo<'a> {
    /// The view of a session that has ended (expired or deleted): as last stored, with no
    /// time remaining and no warning.
    pub fn closed(s: &'a Session) -> Self {
        SessionInfo {
            time_remaining: 0,
            is_near_expiration: false,
            ..SessionInfo::new(s, s.expires_at())
        }
    }
}

/// An attachment as stored: `type`, `url` and, when given, `name`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Attachment)]
struct AttachmentView<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

impl<'a> From<&'a Attachment> for AttachmentView<'a> {
    fn from(a: &'a Attachment) -> Self {
        AttachmentView {
            kind: &a.kind,
            url: &a.url,
            name: a.name.as_deref(),
        }
    }
}

/// What a session adds to the metadata of each of its messages, as elizaOS does: the
/// session's own metadata keys, then `sessionId`, `agentId` and `userId`. Built once per
/// answer; only the client's own metadata is stored with a message.
pub struct SessionContext(Map<String, Value>);

impl SessionContext {
    /// The context of `session`.
    pub fn of(session: &Session) -> Self {
        SessionContext::new(
            session.id,
            session.agent_id,
            session.user_id,
            &session.metadata_json,
        )
    }

    /// The context of a session known by its ids and its stored metadata.
    pub fn new(session_id: Uuid, agent_id: Uuid, user_id: Uuid, metadata_json: &str) -> Self {
        let mut context = object(metadata_json);
        for (key, id) in [
            ("sessionId", session_id),
            ("agentId", agent_id),
            ("userId", user_id),
        ] {
            context.insert(key.to_owned(), Value::String(id.to_string()));
        }
        SessionContext(context)
    }
}

/// Stored metadata as an object. Text that is somehow not a JSON object (it was validated on
/// the way in) degrades to `{}` rather than failing the response.
fn object(text: &str) -> Map<String, Value> {
    serde_json::from_str(text).unwrap_or_else(|_| {
        tracing::warn!("stored metadata is not a JSON object; answering {{}}");
        Map::new()
    })
}

/// A message's metadata as answered: its session's context, then the message's own keys,
/// which win on a clash.
struct MergedMetadata<'a> {
    context: &'a SessionContext,
    own: Map<String, Value>,
}

impl Serialize for MergedMetadata<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let inherited = self
            .context
            .0
            .iter()
            .filter(|(key, _)| !self.own.contains_key(*key));
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in inherited.chain(&self.own) {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Message.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Message)]
#[serde(rename_all = "camelCase")]
pub struct MessageView<'a> {
    id: Uuid,
    session_id: Uuid,
    seq: u64,
    #[schema(required = true)]
    parent_id: Option<Uuid>,
    content: &'a str,
    author_id: Uuid,
    is_agent: bool,
    #[schema(format = DateTime)]
    created_at: String,
    /// The message's own metadata over its session's: the session's metadata keys,
    /// `sessionId`, `agentId` and `userId`, then the keys sent with the message.
    #[schema(value_type = Object)]
    metadata: MergedMetadata<'a>,
    attachments: Vec<AttachmentView<'a>>,
}

impl<'a> MessageView<'a> {
    /// The view of a message of the session `context` describes.
    pub fn new(m: &'a Message, context: &'a SessionContext) -> Self {
        MessageView {
            id: m.id,
            session_id: m.session_id,
            seq: m.seq,
            parent_id: m.parent_id,
            content: &m.content,
            author_id: m.author_id,
            is_agent: m.is_agent,
            created_at: m.created_at.to_rfc3339(),
            metadata: MergedMetadata {
                context,
                own: object(&m.metadata_json),
            },
            attachments: m.attachments.iter().map(AttachmentView::from).collect(),
        }
    }
}

/// `agentResponse`: the agent's reply as a Message, plus the fields of elizaOS's
/// `AgentResponseContent`: `text` (the content) and, when the reply's own metadata has
/// them with those types, `thought` (a string) and `actions` (an array of strings).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentResponse<'a> {
    #[serde(flatten)]
    message: MessageView<'a>,
    /// The reply's content.
    text: &'a str,
    /// `metadata.thought` of the reply, when it is a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    thought: Option<Value>,
    /// `metadata.actions` of the reply, when it is an array of strings.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    actions: Option<Value>,
}

impl<'a> AgentResponse<'a> {
    /// The view of `reply`, an agent's message of the session `context` describes.
    pub fn new(reply: &'a Message, context: &'a SessionContext) -> Self {
        let message = MessageView::new(reply, context);
        let own = &message.metadata.own;
        let thought = own.get("thought").filter(|value| value.is_string());
        let actions = own.get("actions").filter(|value| {
            value
                .as_array()
                .is_some_and(|actions| actions.iter().all(Value::is_string))
        });
        AgentResponse {
            text: &reply.content,
            thought: thought.cloned(),
            actions: actions.cloned(),
            message,
        }
    }
}

/// `sessionStatus` of an appended message.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    #[schema(format = DateTime)]
    expires_at: String,
    renewal_count: u64,
    was_renewed: bool,
    is_near_expiration: bool,
}

/// The body of `POST …/messages`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageCreated<'a> {
    #[serde(flatten)]
    message: MessageView<'a>,
    session_status: SessionStatus,
    /// Only for `transport: "http"`: the agent's reply, or null when none came in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<AgentResponse<'static>>)]
    agent_response: Option<Option<AgentResponse<'a>>>,
}

impl<'a> MessageCreated<'a> {
    /// The view of an append at `now`; `context` is that of `session`.
    pub fn new(
        message: &'a Message,
        session: &Session,
        context: &'a SessionContext,
        renewal: Renewal,
        now: Timestamp,
    ) -> Self {
        MessageCreated {
            message: MessageView::new(message, context),
            session_status: SessionStatus {
                expires_at: session.expires_at().to_rfc3339(),
                renewal_count: session.renewal_count,
                was_renewed: renewal == Renewal::Renewed,
                is_near_expiration: session.is_near_expiration(now),
            },
            agent_response: None,
        }
    }

    /// Adds the outcome of waiting for the agent's reply.
    pub fn with_agent_response(mut self, reply: Option<&'a Message>) -> Self {
        let context = self.message.metadata.context;
        self.agent_response = Some(reply.map(|reply| AgentResponse::new(reply, context)));
        self
    }
}
