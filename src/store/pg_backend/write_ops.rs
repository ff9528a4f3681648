//! [`WriteOps`] over one batch's PostgreSQL transaction, keeping the session counts in step
//! with the sessions. Messages go with their session (`ON DELETE CASCADE`).

use std::cell::RefCell;

use postgres::GenericClient;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::schema::{self, int, uint};
use crate::domain::{Event, Message, Session};
use crate::error::Error;
use crate::store::write::{Failure, TxResult, WriteOps};

/// A batch's transaction, as its writes see it.
pub(super) struct BatchTx<'c> {
    pub(super) tx: RefCell<postgres::Transaction<'c>>,
}

/// What a failed statement means for the write: a conflict with another transaction runs
/// the batch again; a broken uniqueness is this write's alone; anything else fails the batch.
pub(super) fn failure(error: Error) -> Failure {
    let code = match &error {
        Error::Storage(source) => source
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|error| error.code().cloned()),
        _ => None,
    };
    match code {
        Some(code) if code == SqlState::T_R_SERIALIZATION_FAILURE => Failure::Conflict,
        Some(code) if code == SqlState::T_R_DEADLOCK_DETECTED => Failure::Conflict,
        Some(code) if code == SqlState::UNIQUE_VIOLATION => Failure::Broken(error),
        _ => Failure::Storage(error),
    }
}

impl BatchTx<'_> {
    /// Runs a statement with no rows to read.
    pub(super) fn execute(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> TxResult<u64> {
        self.tx
            .borrow_mut()
            .execute(sql, params)
            .map_err(|error| failure(super::storage(error)))
    }

    fn exists(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> TxResult<bool> {
        let row = self
            .tx
            .borrow_mut()
            .query_opt(sql, params)
            .map_err(|error| failure(super::storage(error)))?;
        Ok(row.is_some())
    }

    fn with_client<T>(
        &self,
        write: impl FnOnce(&mut postgres::Transaction<'_>) -> crate::Result<T>,
    ) -> TxResult<T> {
        write(&mut self.tx.borrow_mut()).map_err(failure)
    }

    /// Adds `delta` to the counts `session` is in: all sessions, its agent's, its user's,
    /// and theirs together.
    fn add_to_counts(&self, session: &Session, delta: i64) -> TxResult<()> {
        for key in count_keys(session) {
            self.execute(
                "INSERT INTO session_counts (key, count) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET count = session_counts.count + EXCLUDED.count",
                &[&key, &delta],
            )?;
        }
        Ok(())
    }
}

/// The count keys of a session, as `session_counts` names them.
pub(super) fn count_keys(session: &Session) -> [String; 4] {
    [
        "sessions".to_owned(),
        format!("agent:{}", session.agent_id),
        format!("user:{}", session.user_id),
        format!("pair:{}:{}", session.agent_id, session.user_id),
    ]
}

/// The count key of a listing's owners.
pub(super) fn owners_count_key(agent_id: Option<Uuid>, user_id: Option<Uuid>) -> String {
    match (agent_id, user_id) {
        (None, None) => "sessions".to_owned(),
        (Some(agent), None) => format!("agent:{agent}"),
        (None, Some(user)) => format!("user:{user}"),
        (Some(agent), Some(user)) => format!("pair:{agent}:{user}"),
    }
}

impl WriteOps for BatchTx<'_> {
    fn session(&self, id: Uuid) -> TxResult<Option<Session>> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE id = $1",
            schema::SESSION_COLUMNS
        );
        let row = self
            .tx
            .borrow_mut()
            .query_opt(&sql, &[&id])
            .map_err(|error| failure(super::storage(error)))?;
        row.map(|row| schema::session_from(&row))
            .transpose()
            .map_err(Failure::Broken)
    }

    fn session_id_taken(&self, id: Uuid) -> TxResult<bool> {
        self.exists("SELECT 1 FROM sessions WHERE id = $1", &[&id])
    }

    fn insert_session(&self, session: &Session) -> TxResult<()> {
        self.with_client(|tx| schema::put_session(tx, session))?;
        self.add_to_counts(session, 1)
    }

    fn update_session(&self, _old: &Session, new: &Session) -> TxResult<()> {
        self.with_client(|tx| schema::put_session(tx, new))
    }

    fn delete_session(&self, session: &Session) -> TxResult<()> {
        self.execute("DELETE FROM sessions WHERE id = $1", &[&session.id])?;
        self.add_to_counts(session, -1)
    }

    fn message_in(&self, message_id: Uuid, session_id: Uuid) -> TxResult<bool> {
        self.exists(
            "SELECT 1 FROM messages WHERE id = $1 AND session_id = $2",
            &[&message_id, &session_id],
        )
    }

    fn message_id_taken(&self, message_id: Uuid) -> TxResult<bool> {
        self.exists("SELECT 1 FROM messages WHERE id = $1", &[&message_id])
    }

    fn insert_message(&self, message: &Message) -> TxResult<()> {
        self.with_client(|tx| schema::insert_message(tx, message))
    }

    fn append_events(&self, events: &[Event]) -> TxResult<()> {
        for event in events {
            self.with_client(|tx| schema::insert_event(tx, event))?;
        }
        Ok(())
    }
}

/// The next event id the store hands out.
pub(super) fn stored_next_event_id(client: &mut impl GenericClient) -> crate::Result<u64> {
    let value: i64 = client
        .query_one(
            "SELECT value FROM sessiond_meta WHERE key = 'next_event_id'",
            &[],
        )
        .map_err(super::storage)?
        .get(0);
    Ok(uint(value))
}

/// Sets the next event id, inside the batch that used the ids before it.
pub(super) fn set_next_event_id(tx: &BatchTx<'_>, next: u64) -> TxResult<()> {
    tx.execute(
        "UPDATE sessiond_meta SET value = $1 WHERE key = 'next_event_id'",
        &[&int(next)],
    )
    .map(drop)
}
