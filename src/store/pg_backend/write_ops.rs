//! [`WriteOps`] over one batch's PostgreSQL transaction, keeping the session counts in step
//! with the sessions. Messages go with their session (`ON DELETE CASCADE`).

use std::cell::RefCell;
use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::GenericClient;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::schema::{self, int, uint, Execute};
use crate::domain::{Event, Message, Session};
use crate::error::Error;
use crate::store::write::{Failure, TxResult, WriteOps};

/// Statements prepared on the writer's connection, by their text: each is parsed and
/// planned once per connection, not once per use.
pub(super) type Statements = RefCell<HashMap<&'static str, postgres::Statement>>;

/// A batch's transaction, as its writes see it.
pub(super) struct BatchTx<'c, 's> {
    pub(super) tx: RefCell<postgres::Transaction<'c>>,
    pub(super) statements: &'s Statements,
    /// The batch's events, stored with one statement before the commit.
    pub(super) events: RefCell<Vec<Event>>,
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

impl BatchTx<'_, '_> {
    /// `sql`, prepared once per connection.
    fn statement(&self, sql: &'static str) -> crate::Result<postgres::Statement> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.borrow_mut().prepare(sql).map_err(super::storage)?;
        self.statements.borrow_mut().insert(sql, statement.clone());
        Ok(statement)
    }

    /// Runs a statement with no rows to read.
    pub(super) fn run(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> TxResult<u64> {
        Execute::execute(self, sql, params).map_err(failure)
    }

    fn row(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> TxResult<Option<postgres::Row>> {
        let statement = self.statement(sql).map_err(failure)?;
        self.tx
            .borrow_mut()
            .query_opt(&statement, params)
            .map_err(|error| failure(super::storage(error)))
    }

    /// Adds `delta` to the counts `session` is in: all sessions, its agent's, its user's,
    /// and theirs together.
    fn add_to_counts(&self, session: &Session, delta: i64) -> TxResult<()> {
        for key in count_keys(session) {
            self.run(
                "INSERT INTO session_counts (key, count) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET count = session_counts.count + EXCLUDED.count",
                &[&key, &delta],
            )?;
        }
        Ok(())
    }

    /// Stores the batch's events.
    pub(super) fn store_events(&self) -> TxResult<()> {
        let events = self.events.take();
        if events.is_empty() {
            return Ok(());
        }
        schema::insert_events(self, &events).map_err(failure)
    }
}

impl Execute for BatchTx<'_, '_> {
    fn execute(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> crate::Result<u64> {
        let statement = self.statement(sql)?;
        self.tx
            .borrow_mut()
            .execute(&statement, params)
            .map_err(super::storage)
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

impl WriteOps for BatchTx<'_, '_> {
    fn session(&self, id: Uuid) -> TxResult<Option<Session>> {
        const SQL: &str = concat!(
            "SELECT ",
            schema::session_columns!(),
            " FROM sessions WHERE id = $1"
        );
        self.row(SQL, &[&id])?
            .map(|row| schema::session_from(&row))
            .transpose()
            .map_err(Failure::Broken)
    }

    fn session_id_taken(&self, id: Uuid) -> TxResult<bool> {
        Ok(self
            .row("SELECT 1 FROM sessions WHERE id = $1", &[&id])?
            .is_some())
    }

    fn insert_session(&self, session: &Session) -> TxResult<()> {
        schema::put_session(self, session).map_err(failure)?;
        self.add_to_counts(session, 1)
    }

    fn update_session(&self, _old: &Session, new: &Session) -> TxResult<()> {
        schema::put_session(self, new).map_err(failure)
    }

    fn delete_session(&self, session: &Session) -> TxResult<()> {
        self.run("DELETE FROM sessions WHERE id = $1", &[&session.id])?;
        self.add_to_counts(session, -1)
    }

    fn message_in(&self, message_id: Uuid, session_id: Uuid) -> TxResult<bool> {
        Ok(self
            .row(
                "SELECT 1 FROM messages WHERE id = $1 AND session_id = $2",
                &[&message_id, &session_id],
            )?
            .is_some())
    }

    fn message_id_taken(&self, message_id: Uuid) -> TxResult<bool> {
        Ok(self
            .row("SELECT 1 FROM messages WHERE id = $1", &[&message_id])?
            .is_some())
    }

    fn insert_message(&self, message: &Message) -> TxResult<()> {
        schema::insert_message(self, message).map_err(failure)
    }

    fn append_events(&self, events: &[Event]) -> TxResult<()> {
        self.events.borrow_mut().extend_from_slice(events);
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
pub(super) fn set_next_event_id(tx: &BatchTx<'_, '_>, next: u64) -> TxResult<()> {
    tx.run(
        "UPDATE sessiond_meta SET value = $1 WHERE key = 'next_event_id'",
        &[&int(next)],
    )
    .map(drop)
}
