//! The reads on PostgreSQL, each one statement (or a few) on a pooled connection.

use postgres::types::ToSql;
use uuid::Uuid;

use super::schema::{self, int, uint};
use super::write_ops::owners_count_key;
use super::{storage, PgBackend};
use crate::domain::{Event, EventFilter, Message, Session, SessionError, Timestamp};
use crate::error::{Error, Result};
use crate::store::events::EventReplay;
use crate::store::{
    CheckReport, MessagePage, MessageQuery, SessionCounts, SessionPage, SessionQuery, StatusFilter,
    TreeStats,
};

type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// A connection from the pool; the database being unreachable is a 503.
async fn connection(backend: &PgBackend) -> Result<deadpool_postgres::Object> {
    backend
        .pool
        .get()
        .await
        .map_err(|error| Error::Degraded(format!("the database is unreachable: {error}")))
}

impl PgBackend {
    pub(super) async fn read_session(&self, id: Uuid) -> Result<Option<Session>> {
        let client = connection(self).await?;
        let sql = format!(
            "SELECT {} FROM sessions WHERE id = $1",
            schema::SESSION_COLUMNS
        );
        let row = client.query_opt(&sql, &[&id]).await.map_err(storage)?;
        row.map(|row| schema::session_from(&row)).transpose()
    }

    async fn count(&self, key: &str) -> Result<u64> {
        let client = connection(self).await?;
        let row = client
            .query_opt("SELECT count FROM session_counts WHERE key = $1", &[&key])
            .await
            .map_err(storage)?;
        Ok(row.map_or(0, |row| uint(row.get(0))))
    }

    pub(super) async fn read_list(
        &self,
        query: SessionQuery,
        now: Timestamp,
    ) -> Result<SessionPage> {
        let now_micros = int(now.as_micros());
        let mut conditions = Vec::new();
        let mut params: Params<'_> = Vec::new();
        let (agent, user, after) = (query.agent_id, query.user_id, query.after);
        if let Some(agent) = &agent {
            params.push(agent);
            conditions.push(format!("agent_id = ${}", params.len()));
        }
        if let Some(user) = &user {
            params.push(user);
            conditions.push(format!("user_id = ${}", params.len()));
        }
        let owners = conditions.clone();
        let owner_params = params.clone();
        params.push(&now_micros);
        let expired = format!("expires_at <= ${}", params.len());
        let expired_where = owners
            .iter()
            .cloned()
            .chain([expired.clone()])
            .collect::<Vec<_>>()
            .join(" AND ");
        let client = connection(self).await?;
        let expired_count = || async {
            let mut expired_params = owner_params.clone();
            expired_params.push(&now_micros);
            let sql = format!("SELECT count(*) FROM sessions WHERE {expired_where}");
            let row = client
                .query_one(&sql, &expired_params)
                .await
                .map_err(storage)?;
            Ok::<u64, Error>(uint(row.get(0)))
        };
        let total = match query.status {
            StatusFilter::All => self.count(&owners_count_key(agent, user)).await?,
            StatusFilter::Active => self
                .count(&owners_count_key(agent, user))
                .await?
                .saturating_sub(expired_count().await?),
            StatusFilter::Expired => expired_count().await?,
        };
        match query.status {
            StatusFilter::All => {}
            StatusFilter::Active => conditions.push(format!("NOT ({expired})")),
            StatusFilter::Expired => conditions.push(expired),
        }
        if query.status == StatusFilter::All {
            params.pop();
        }
        if let Some(after) = &after {
            params.push(after);
            conditions.push(format!("id < ${}", params.len()));
        }
        let limit = int(query.limit as u64 + 1);
        params.push(&limit);
        let sql = format!(
            "SELECT {} FROM sessions {} ORDER BY id DESC LIMIT ${}",
            schema::SESSION_COLUMNS,
            where_clause(&conditions),
            params.len()
        );
        let rows = client.query(&sql, &params).await.map_err(storage)?;
        let mut sessions = rows
            .iter()
            .map(schema::session_from)
            .collect::<Result<Vec<_>>>()?;
        let next = if sessions.len() > query.limit {
            sessions.truncate(query.limit);
            sessions.last().map(|session| session.id)
        } else {
            None
        };
        Ok(SessionPage {
            sessions,
            total,
            next,
        })
    }

    pub(super) async fn read_counts(&self, now: Timestamp) -> Result<SessionCounts> {
        let total = self.count("sessions").await?;
        let client = connection(self).await?;
        let now = int(now.as_micros());
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM sessions WHERE expires_at <= $1), \
                 (SELECT count(*) FROM sessions WHERE warns_at <= $1)",
                &[&now],
            )
            .await
            .map_err(storage)?;
        let (expired, warned) = (uint(row.get(0)), uint(row.get(1)));
        Ok(SessionCounts {
            total,
            active: total.saturating_sub(expired),
            expired,
            expiring_soon: warned.saturating_sub(expired),
        })
    }

    pub(super) async fn read_database_size(&self) -> Result<u64> {
        let client = connection(self).await?;
        let row = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await
            .map_err(storage)?;
        Ok(uint(row.get(0)))
    }

    pub(super) async fn read_deadlines_between(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Uuid>> {
        let client = connection(self).await?;
        let (from, to) = (int(from.as_micros()), int(to.as_micros()));
        let rows = client
            .query(
                "SELECT id FROM sessions WHERE warns_at BETWEEN $1 AND $2 \
                 UNION SELECT id FROM sessions WHERE expires_at BETWEEN $1 AND $2 ORDER BY id",
                &[&from, &to],
            )
            .await
            .map_err(storage)?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    pub(super) async fn read_expired_by(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Timestamp, Uuid)>> {
        let client = connection(self).await?;
        let rows = client
            .query(
                "SELECT expires_at, id FROM sessions WHERE expires_at <= $1 \
                 ORDER BY expires_at, id LIMIT $2",
                &[&int(cutoff.as_micros()), &int(limit as u64)],
            )
            .await
            .map_err(storage)?;
        Ok(rows
            .iter()
            .map(|row| (Timestamp::from_micros(uint(row.get(0))), row.get(1)))
            .collect())
    }

    pub(super) async fn read_message(
        &self,
        session_id: Uuid,
        message_id: Uuid,
    ) -> Result<Option<Message>> {
        let client = connection(self).await?;
        let sql = format!(
            "SELECT {} FROM messages WHERE id = $1 AND session_id = $2",
            schema::MESSAGE_COLUMNS
        );
        let row = client
            .query_opt(&sql, &[&message_id, &session_id])
            .await
            .map_err(storage)?;
        row.map(|row| schema::message_from(&row)).transpose()
    }

    pub(super) async fn read_thread(
        &self,
        session_id: Uuid,
        message_id: Uuid,
        limit: usize,
    ) -> Result<std::result::Result<MessagePage, SessionError>> {
        let client = connection(self).await?;
        let columns = schema::MESSAGE_COLUMNS;
        let prefixed = columns
            .split(", ")
            .map(|column| format!("m.{column}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "WITH RECURSIVE branch AS ( \
               SELECT {columns}, 1::bigint AS depth FROM messages WHERE session_id = $1 AND id = $2 \
               UNION ALL \
               SELECT {prefixed}, b.depth + 1 FROM messages m \
                 JOIN branch b ON m.id = b.parent_id AND m.session_id = $1 \
                 WHERE b.depth < $3) \
             SELECT {columns} FROM branch ORDER BY depth DESC"
        );
        let rows = client
            .query(&sql, &[&session_id, &message_id, &int(limit.max(1) as u64)])
            .await
            .map_err(storage)?;
        let messages = rows
            .iter()
            .map(schema::message_from)
            .collect::<Result<Vec<_>>>()?;
        let Some(oldest) = messages.first() else {
            return Ok(Err(SessionError::MessageNotFound {
                session_id,
                message_id,
            }));
        };
        let reaches_root = oldest.parent_id.is_none();
        if !reaches_root && messages.len() < limit.max(1) {
            // A parent is missing: the session was deleted while the branch was read.
            return Ok(Err(SessionError::NotFound(session_id)));
        }
        Ok(Ok(MessagePage {
            has_more: !reaches_root,
            messages,
        }))
    }

    pub(super) async fn read_page(
        &self,
        session: &Session,
        query: &MessageQuery,
    ) -> Result<std::result::Result<MessagePage, SessionError>> {
        if let Some(parent_id) = query.parent_id {
            if self.read_message(session.id, parent_id).await?.is_none() {
                return Ok(Err(SessionError::InvalidParent {
                    session_id: session.id,
                    parent_id,
                }));
            }
        }
        let low = int(query.after_seq.unwrap_or(0));
        let high = int(query
            .before_seq
            .unwrap_or(u64::MAX)
            .min(session.message_count + 1));
        // Times are microseconds; the bounds are whole milliseconds.
        let after_micros = query
            .after_ms
            .map_or(i64::MIN, |ms| ms.saturating_add(1).saturating_mul(1000));
        let before_micros = query
            .before_ms
            .map_or(i64::MAX, |ms| ms.saturating_mul(1000));
        let ascending = (query.after_seq.is_some() || query.after_ms.is_some())
            && !(query.before_seq.is_some() || query.before_ms.is_some());
        let limit = int(query.limit as u64 + 1);
        let mut params: Params<'_> = vec![&session.id, &low, &high, &after_micros, &before_micros];
        let mut conditions = vec![
            "session_id = $1".to_owned(),
            "seq > $2".to_owned(),
            "seq < $3".to_owned(),
            "created_at >= $4".to_owned(),
            "created_at < $5".to_owned(),
        ];
        if let Some(parent_id) = &query.parent_id {
            params.push(parent_id);
            conditions.push(format!("parent_id = ${}", params.len()));
        }
        params.push(&limit);
        let sql = format!(
            "SELECT {} FROM messages {} ORDER BY seq {} LIMIT ${}",
            schema::MESSAGE_COLUMNS,
            where_clause(&conditions),
            if ascending { "ASC" } else { "DESC" },
            params.len()
        );
        let client = connection(self).await?;
        let rows = client.query(&sql, &params).await.map_err(storage)?;
        let mut messages = rows
            .iter()
            .map(schema::message_from)
            .collect::<Result<Vec<_>>>()?;
        let has_more = messages.len() > query.limit;
        messages.truncate(query.limit);
        if ascending {
            messages.reverse();
        }
        Ok(Ok(MessagePage { messages, has_more }))
    }

    pub(super) async fn read_replay(&self, replay: EventReplay) -> Result<Vec<Event>> {
        let (column, owner) = match replay.filter {
            EventFilter::Session(id) => ("session_id", id),
            EventFilter::Agent(id) => ("agent_id", id),
            EventFilter::User(id) => ("user_id", id),
            EventFilter::RepliesTo { session_id, .. } => ("session_id", session_id),
        };
        let sql = format!(
            "SELECT {} FROM events e WHERE {column} = $1 AND id > $2 AND id <= $3 \
             AND (message_id IS NULL OR EXISTS (SELECT 1 FROM messages m WHERE m.id = e.message_id)) \
             ORDER BY id LIMIT $4",
            schema::EVENT_COLUMNS
        );
        let client = connection(self).await?;
        let (mut after, through) = (int(replay.after), int(replay.through));
        let limit = int(replay.limit as u64);
        let mut found = Vec::new();
        loop {
            let rows = client
                .query(&sql, &[&owner, &after, &through, &limit])
                .await
                .map_err(storage)?;
            let read = rows.len();
            for row in &rows {
                let event = schema::event_from(row)?;
                after = int(event.id);
                if replay.filter.matches(&event) {
                    found.push(event);
                }
            }
            // A narrower filter than the column may leave a full read empty: read on.
            if !found.is_empty() || (read as i64) < limit {
                return Ok(found);
            }
        }
    }

    pub(super) async fn delete_events_before(&self, cutoff: Timestamp) -> Result<usize> {
        let client = connection(self).await?;
        let removed = client
            .execute(
                "DELETE FROM events WHERE at < $1 AND id < (SELECT max(id) FROM events)",
                &[&int(cutoff.as_micros())],
            )
            .await
            .map_err(storage)?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

/// Verifies the tables against each other: every session's messages and deadlines, and the
/// counts.
pub(super) fn check(client: &mut postgres::Client) -> Result<CheckReport> {
    let one = |client: &mut postgres::Client, sql: &str| -> Result<u64> {
        Ok(uint(client.query_one(sql, &[]).map_err(storage)?.get(0)))
    };
    let mut report = CheckReport {
        sessions: one(client, "SELECT count(*) FROM sessions")?,
        messages: one(client, "SELECT count(*) FROM messages")?,
        events: one(client, "SELECT count(*) FROM events")?,
        ..CheckReport::default()
    };
    let mut problem = |text: String| {
        report.problem_count += 1;
        if report.problems.len() < 20 {
            report.problems.push(text);
        }
    };
    let uneven = client
        .query(
            "SELECT s.id, s.message_count, coalesce(m.count, 0), coalesce(m.last, 0) \
             FROM sessions s LEFT JOIN (SELECT session_id, count(*) AS count, max(seq) AS last \
             FROM messages GROUP BY session_id) m ON m.session_id = s.id \
             WHERE coalesce(m.count, 0) <> s.message_count OR coalesce(m.last, 0) <> s.message_count",
            &[],
        )
        .map_err(storage)?;
    for row in uneven {
        let (id, counted, found): (Uuid, i64, i64) = (row.get(0), row.get(1), row.get(2));
        problem(format!(
            "session {id} counts {counted} messages; {found} are stored, or not numbered 1 to {counted}"
        ));
    }
    let sql = format!(
        "SELECT {}, expires_at, warns_at FROM sessions",
        schema::SESSION_COLUMNS
    );
    for row in client.query(&sql, &[]).map_err(storage)? {
        let session = schema::session_from(&row)?;
        let (expires, warns): (i64, i64) = (row.get(17), row.get(18));
        if uint(expires) != session.expires_at().as_micros()
            || uint(warns) != session.warns_at().as_micros()
        {
            problem(format!(
                "session {}: its deadline columns are stale",
                session.id
            ));
        }
    }
    let counts = client
        .query(
            "SELECT key, count FROM session_counts c WHERE count <> CASE \
               WHEN key = 'sessions' THEN (SELECT count(*) FROM sessions) \
               WHEN key LIKE 'agent:%' THEN (SELECT count(*) FROM sessions \
                 WHERE agent_id::text = substr(c.key, 7)) \
               WHEN key LIKE 'user:%' THEN (SELECT count(*) FROM sessions \
                 WHERE user_id::text = substr(c.key, 6)) \
               ELSE (SELECT count(*) FROM sessions \
                 WHERE 'pair:' || agent_id::text || ':' || user_id::text = c.key) END",
            &[],
        )
        .map_err(storage)?;
    for row in counts {
        let (key, count): (String, i64) = (row.get(0), row.get(1));
        problem(format!(
            "the count {key} says {count}, which the sessions do not"
        ));
    }
    Ok(report)
}

/// Rows and bytes per table.
pub(super) fn table_stats(client: &mut postgres::Client) -> Result<Vec<TreeStats>> {
    let mut stats = Vec::new();
    for name in [
        "sessions",
        "messages",
        "events",
        "session_counts",
        "sessiond_meta",
    ] {
        let row = client
            .query_one(
                &format!("SELECT count(*), pg_total_relation_size('{name}') FROM {name}"),
                &[],
            )
            .map_err(storage)?;
        stats.push(TreeStats {
            name,
            entries: uint(row.get(0)),
            bytes: uint(row.get(1)),
        });
    }
    Ok(stats)
}
