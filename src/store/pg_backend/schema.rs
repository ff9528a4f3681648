//! The tables, made and versioned by sessiond itself, and the conversions between their
//! rows and the domain types.

use postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{storage, url_without_password};
use crate::domain::{
    Attachment, Event, EventData, EventKind, Message, Session, TimeoutConfig, Timestamp,
};
use crate::error::{Error, Result};

/// The schema this sessiond writes. A database at a newer one is refused.
pub(super) const SCHEMA_VERSION: i64 = 1;

/// Held while the schema is made or checked, so that nodes starting together take turns.
const SCHEMA_LOCK: i64 = 0x5e55_10d0;

const CREATE: &str = "
CREATE TABLE sessiond_meta (
    key text PRIMARY KEY,
    value bigint NOT NULL
);
CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    agent_id uuid NOT NULL,
    user_id uuid NOT NULL,
    created_at bigint NOT NULL,
    last_activity bigint NOT NULL,
    renewed_at bigint NOT NULL,
    renewal_count bigint NOT NULL,
    timeout_minutes integer NOT NULL,
    auto_renew boolean NOT NULL,
    max_duration_minutes integer NOT NULL,
    warning_threshold_minutes integer NOT NULL,
    metadata_json text NOT NULL,
    message_count bigint NOT NULL,
    last_message_id uuid,
    last_message_at bigint NOT NULL,
    expiring_noticed_for bigint,
    expired_noticed boolean NOT NULL,
    expires_at bigint NOT NULL,
    warns_at bigint NOT NULL
);
CREATE INDEX sessions_agent ON sessions (agent_id, id);
CREATE INDEX sessions_user ON sessions (user_id, id);
CREATE INDEX sessions_expires ON sessions (expires_at);
CREATE INDEX sessions_warns ON sessions (warns_at);
CREATE TABLE session_counts (
    key text PRIMARY KEY,
    count bigint NOT NULL
);
CREATE TABLE messages (
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    id uuid NOT NULL UNIQUE,
    parent_id uuid,
    -- Bytes, not text: PostgreSQL text cannot hold U+0000, which a message may.
    content bytea NOT NULL,
    author_id uuid NOT NULL,
    is_agent boolean NOT NULL,
    created_at bigint NOT NULL,
    metadata_json text NOT NULL,
    attachments_json text NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX messages_replies ON messages (session_id, parent_id, seq);
CREATE INDEX messages_times ON messages (session_id, created_at, seq);
CREATE TABLE events (
    id bigint PRIMARY KEY,
    at bigint NOT NULL,
    kind text NOT NULL,
    session_id uuid NOT NULL,
    agent_id uuid NOT NULL,
    user_id uuid NOT NULL,
    message_id uuid,
    payload_json text NOT NULL,
    session_metadata_json text
);
CREATE INDEX events_session ON events (session_id, id);
CREATE INDEX events_agent ON events (agent_id, id);
CREATE INDEX events_user ON events (user_id, id);
CREATE INDEX events_at ON events (at);
";

/// Makes the tables in an empty database, or checks the version of those there. Event
/// ids start at the time the store is made, in microseconds, as sled's do.
pub(super) fn prepare(client: &mut postgres::Client, url: &str) -> Result<()> {
    let mut tx = client.transaction().map_err(storage)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(storage)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('sessiond_meta') IS NOT NULL", &[])
        .map_err(storage)?
        .get(0);
    if exists {
        let found: i64 = tx
            .query_opt(
                "SELECT value FROM sessiond_meta WHERE key = 'schema_version'",
                &[],
            )
            .map_err(storage)?
            .map_or(0, |row| row.get(0));
        if found > SCHEMA_VERSION {
            return Err(Error::NewerFormat {
                path: url_without_password(url),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: SCHEMA_VERSION as u32,
            });
        }
        return tx.commit().map_err(storage);
    }
    tx.batch_execute(CREATE).map_err(storage)?;
    tx.execute(
        "INSERT INTO sessiond_meta (key, value) VALUES ('schema_version', $1), ('next_event_id', $2)",
        &[&SCHEMA_VERSION, &int(Timestamp::now().as_micros())],
    )
    .map_err(storage)?;
    tx.commit().map_err(storage)
}

/// A count or a time as PostgreSQL's bigint. Counts and microsecond times stay far below
/// 2^63.
pub(super) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A bigint read back.
pub(super) fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn time(value: i64) -> Timestamp {
    Timestamp::from_micros(uint(value))
}

/// The columns [`session_from`] reads, in its order, as a literal for `concat!`.
macro_rules! session_columns {
    () => {
        "id, agent_id, user_id, created_at, last_activity, renewed_at, renewal_count, \
         timeout_minutes, auto_renew, max_duration_minutes, warning_threshold_minutes, \
         metadata_json, message_count, last_message_id, last_message_at, \
         expiring_noticed_for, expired_noticed"
    };
}
pub(super) use session_columns;

/// The columns [`session_from`] reads, in its order.
pub(super) const SESSION_COLUMNS: &str = session_columns!();

pub(super) fn session_from(row: &Row) -> Result<Session> {
    let minutes = |index: usize| -> Result<u32> {
        u32::try_from(row.try_get::<_, i32>(index).map_err(storage)?)
            .map_err(|_| Error::corrupt("a negative timeout in the sessions table"))
    };
    Ok(Session {
        id: row.try_get(0).map_err(storage)?,
        agent_id: row.try_get(1).map_err(storage)?,
        user_id: row.try_get(2).map_err(storage)?,
        created_at: time(row.try_get(3).map_err(storage)?),
        last_activity: time(row.try_get(4).map_err(storage)?),
        renewed_at: time(row.try_get(5).map_err(storage)?),
        renewal_count: uint(row.try_get(6).map_err(storage)?),
        timeout: TimeoutConfig {
            timeout_minutes: minutes(7)?,
            auto_renew: row.try_get(8).map_err(storage)?,
            max_duration_minutes: minutes(9)?,
            warning_threshold_minutes: minutes(10)?,
        },
        metadata_json: row.try_get(11).map_err(storage)?,
        message_count: uint(row.try_get(12).map_err(storage)?),
        last_message_id: row.try_get(13).map_err(storage)?,
        last_message_at: time(row.try_get(14).map_err(storage)?),
        expiring_noticed_for: row
            .try_get::<_, Option<i64>>(15)
            .map_err(storage)?
            .map(time),
        expired_noticed: row.try_get(16).map_err(storage)?,
    })
}

/// Runs one statement of a write: the writer prepares each once per connection.
pub(super) trait Execute {
    fn execute(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64>;
}

/// Inserts `sessions` (each id once), or replaces the stored rows of their ids.
pub(super) fn put_sessions(client: &impl Execute, sessions: &[&Session]) -> Result<()> {
    let minutes = |m: u32| i32::try_from(m).unwrap_or(i32::MAX);
    let micros = |at: Timestamp| int(at.as_micros());
    let column = |value: fn(&Session) -> i64| sessions.iter().map(|s| value(s)).collect::<Vec<_>>();
    let ids: Vec<Uuid> = sessions.iter().map(|s| s.id).collect();
    let agents: Vec<Uuid> = sessions.iter().map(|s| s.agent_id).collect();
    let users: Vec<Uuid> = sessions.iter().map(|s| s.user_id).collect();
    let created = column(|s| int(s.created_at.as_micros()));
    let activity = column(|s| int(s.last_activity.as_micros()));
    let renewed = column(|s| int(s.renewed_at.as_micros()));
    let renewals = column(|s| int(s.renewal_count));
    let timeouts: Vec<i32> = sessions
        .iter()
        .map(|s| minutes(s.timeout.timeout_minutes))
        .collect();
    let auto_renew: Vec<bool> = sessions.iter().map(|s| s.timeout.auto_renew).collect();
    let max_durations: Vec<i32> = sessions
        .iter()
        .map(|s| minutes(s.timeout.max_duration_minutes))
        .collect();
    let warnings: Vec<i32> = sessions
        .iter()
        .map(|s| minutes(s.timeout.warning_threshold_minutes))
        .collect();
    let metadata: Vec<&str> = sessions.iter().map(|s| s.metadata_json.as_str()).collect();
    let counts = column(|s| int(s.message_count));
    let last_ids: Vec<Option<Uuid>> = sessions.iter().map(|s| s.last_message_id).collect();
    let last_at = column(|s| int(s.last_message_at.as_micros()));
    let noticed_for: Vec<Option<i64>> = sessions
        .iter()
        .map(|s| s.expiring_noticed_for.map(micros))
        .collect();
    let expired_noticed: Vec<bool> = sessions.iter().map(|s| s.expired_noticed).collect();
    let expires = column(|s| int(s.expires_at().as_micros()));
    let warns = column(|s| int(s.warns_at().as_micros()));
    client
        .execute(
            "INSERT INTO sessions (id, agent_id, user_id, created_at, last_activity, renewed_at, \
             renewal_count, timeout_minutes, auto_renew, max_duration_minutes, \
             warning_threshold_minutes, metadata_json, message_count, last_message_id, \
             last_message_at, expiring_noticed_for, expired_noticed, expires_at, warns_at) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], \
             $5::bigint[], $6::bigint[], $7::bigint[], $8::integer[], $9::boolean[], \
             $10::integer[], $11::integer[], $12::text[], $13::bigint[], $14::uuid[], \
             $15::bigint[], $16::bigint[], $17::boolean[], $18::bigint[], $19::bigint[]) \
             ON CONFLICT (id) DO UPDATE SET last_activity = EXCLUDED.last_activity, \
             renewed_at = EXCLUDED.renewed_at, renewal_count = EXCLUDED.renewal_count, \
             timeout_minutes = EXCLUDED.timeout_minutes, auto_renew = EXCLUDED.auto_renew, \
             max_duration_minutes = EXCLUDED.max_duration_minutes, \
             warning_threshold_minutes = EXCLUDED.warning_threshold_minutes, \
             metadata_json = EXCLUDED.metadata_json, message_count = EXCLUDED.message_count, \
             last_message_id = EXCLUDED.last_message_id, \
             last_message_at = EXCLUDED.last_message_at, \
             expiring_noticed_for = EXCLUDED.expiring_noticed_for, \
             expired_noticed = EXCLUDED.expired_noticed, expires_at = EXCLUDED.expires_at, \
             warns_at = EXCLUDED.warns_at",
            &[
                &ids,
                &agents,
                &users,
                &created,
                &activity,
                &renewed,
                &renewals,
                &timeouts,
                &auto_renew,
                &max_durations,
                &warnings,
                &metadata,
                &counts,
                &last_ids,
                &last_at,
                &noticed_for,
                &expired_noticed,
                &expires,
                &warns,
            ],
        )
        .map(drop)
}

/// The columns [`message_from`] reads, in its order.
pub(super) const MESSAGE_COLUMNS: &str = "session_id, seq, id, parent_id, content, author_id, \
    is_agent, created_at, metadata_json, attachments_json";

pub(super) fn message_from(row: &Row) -> Result<Message> {
    let attachments: String = row.try_get(9).map_err(storage)?;
    Ok(Message {
        session_id: row.try_get(0).map_err(storage)?,
        seq: uint(row.try_get(1).map_err(storage)?),
        id: row.try_get(2).map_err(storage)?,
        parent_id: row.try_get(3).map_err(storage)?,
        content: String::from_utf8(row.try_get(4).map_err(storage)?)
            .map_err(|error| Error::Codec(Box::new(error)))?,
        author_id: row.try_get(5).map_err(storage)?,
        is_agent: row.try_get(6).map_err(storage)?,
        created_at: time(row.try_get(7).map_err(storage)?),
        metadata_json: row.try_get(8).map_err(storage)?,
        attachments: serde_json::from_str::<Vec<Attachment>>(&attachments)
            .map_err(|error| Error::Codec(Box::new(error)))?,
    })
}

/// Inserts `messages` with one statement.
pub(super) fn insert_messages(client: &impl Execute, messages: &[Message]) -> Result<()> {
    let attachments = messages
        .iter()
        .map(|message| serde_json::to_string(&message.attachments))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|error| Error::Codec(Box::new(error)))?;
    let sessions: Vec<Uuid> = messages.iter().map(|m| m.session_id).collect();
    let seqs: Vec<i64> = messages.iter().map(|m| int(m.seq)).collect();
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    let parents: Vec<Option<Uuid>> = messages.iter().map(|m| m.parent_id).collect();
    let contents: Vec<&[u8]> = messages.iter().map(|m| m.content.as_bytes()).collect();
    let authors: Vec<Uuid> = messages.iter().map(|m| m.author_id).collect();
    let agents: Vec<bool> = messages.iter().map(|m| m.is_agent).collect();
    let times: Vec<i64> = messages
        .iter()
        .map(|m| int(m.created_at.as_micros()))
        .collect();
    let metadata: Vec<&str> = messages.iter().map(|m| m.metadata_json.as_str()).collect();
    client
        .execute(
            "INSERT INTO messages (session_id, seq, id, parent_id, content, author_id, is_agent, \
             created_at, metadata_json, attachments_json) \
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[], $5::bytea[], \
             $6::uuid[], $7::boolean[], $8::bigint[], $9::text[], $10::text[])",
            &[
                &sessions,
                &seqs,
                &ids,
                &parents,
                &contents,
                &authors,
                &agents,
                &times,
                &metadata,
                &attachments,
            ],
        )
        .map(drop)
}

/// Adds each delta to its count (each key once).
pub(super) fn add_to_counts(client: &impl Execute, deltas: &[(String, i64)]) -> Result<()> {
    let keys: Vec<&str> = deltas.iter().map(|(key, _)| key.as_str()).collect();
    let amounts: Vec<i64> = deltas.iter().map(|(_, delta)| *delta).collect();
    client
        .execute(
            "INSERT INTO session_counts (key, count) SELECT * FROM unnest($1::text[], $2::bigint[]) \
             ON CONFLICT (key) DO UPDATE SET count = session_counts.count + EXCLUDED.count",
            &[&keys, &amounts],
        )
        .map(drop)
}

/// The columns [`event_from`] reads, in its order, as a literal for `concat!`.
macro_rules! event_columns {
    () => {
        "id, at, kind, session_id, agent_id, user_id, payload_json, session_metadata_json"
    };
}
pub(super) use event_columns;

/// The columns [`event_from`] reads, in its order.
pub(super) const EVENT_COLUMNS: &str = event_columns!();

pub(super) fn event_from(row: &Row) -> Result<Event> {
    let name: String = row.try_get(2).map_err(storage)?;
    let kind = EventKind::ALL
        .into_iter()
        .find(|kind| kind.name() == name)
        .ok_or_else(|| Error::corrupt(format!("an event of unknown kind {name:?}")))?;
    let payload: String = row.try_get(6).map_err(storage)?;
    let codec = |error| Error::Codec(Box::new(error));
    let data = match row.try_get::<_, Option<String>>(7).map_err(storage)? {
        Some(session_metadata_json) => EventData::Message {
            message: serde_json::from_str(&payload).map_err(codec)?,
            session_metadata_json,
        },
        None => EventData::Session(serde_json::from_str(&payload).map_err(codec)?),
    };
    Ok(Event {
        id: uint(row.try_get(0).map_err(storage)?),
        at: time(row.try_get(1).map_err(storage)?),
        kind,
        session_id: row.try_get(3).map_err(storage)?,
        agent_id: row.try_get(4).map_err(storage)?,
        user_id: row.try_get(5).map_err(storage)?,
        data,
    })
}

/// Inserts `events` with one statement.
pub(super) fn insert_events(client: &impl Execute, events: &[Event]) -> Result<()> {
    let codec = |error| Error::Codec(Box::new(error));
    let mut columns = EventColumns::default();
    for event in events {
        let (message_id, payload, session_metadata_json) = match &event.data {
            EventData::Message {
                message,
                session_metadata_json,
            } => (
                Some(message.id),
                serde_json::to_string(message).map_err(codec)?,
                Some(session_metadata_json.clone()),
            ),
            EventData::Session(session) => {
                (None, serde_json::to_string(session).map_err(codec)?, None)
            }
        };
        columns.ids.push(int(event.id));
        columns.ats.push(int(event.at.as_micros()));
        columns.kinds.push(event.kind.name());
        columns.sessions.push(event.session_id);
        columns.agents.push(event.agent_id);
        columns.users.push(event.user_id);
        columns.messages.push(message_id);
        columns.payloads.push(payload);
        columns.metadata.push(session_metadata_json);
    }
    client
        .execute(
            "INSERT INTO events (id, at, kind, session_id, agent_id, user_id, message_id, \
             payload_json, session_metadata_json) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::uuid[], \
             $5::uuid[], $6::uuid[], $7::uuid[], $8::text[], $9::text[])",
            &[
                &columns.ids,
                &columns.ats,
                &columns.kinds,
                &columns.sessions,
                &columns.agents,
                &columns.users,
                &columns.messages,
                &columns.payloads,
                &columns.metadata,
            ],
        )
        .map(drop)
}

/// Events as columns, for one `unnest`.
#[derive(Default)]
struct EventColumns {
    ids: Vec<i64>,
    ats: Vec<i64>,
    kinds: Vec<&'static str>,
    sessions: Vec<Uuid>,
    agents: Vec<Uuid>,
    users: Vec<Uuid>,
    messages: Vec<Option<Uuid>>,
    payloads: Vec<String>,
    metadata: Vec<Option<String>>,
}
