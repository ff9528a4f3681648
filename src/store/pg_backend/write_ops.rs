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

/// `sql` as prepared on `client`'s connection: from `statements`, or prepared now and kept.
pub(super) fn prepared(
    client: &mut impl GenericClient,
    statements: &Statements,
    sql: &'static str,
) -> crate::Result<postgres::Statement> {
    if let Some(statement) = statements.borrow().get(sql) {
        return Ok(statement.clone());
    }
    let statement = client.prepare(sql).map_err(super::storage)?;
    statements.borrow_mut().insert(sql, statement.clone());
    Ok(statement)
}

/// A batch's transaction, as its writes see it. Reads go to the database once per session
/// and message; writes wait in memory and go with one statement per table before the
/// commit, so that a write costs the database round trips only for what it reads.
pub(super) struct BatchTx<'c, 's> {
    pub(super) tx: RefCell<postgres::Transaction<'c>>,
    pub(super) statements: &'s Statements,
    pending: RefCell<Pending>,
}

/// The batch's writes, not yet sent, and what it has read.
#[derive(Default)]
struct Pending {
    /// Sessions as this batch sees them: read, written (`Some`) or deleted (`None`).
    sessions: HashMap<Uuid, Option<Session>>,
    /// Sessions written, in the order first written; their rows come from `sessions`.
    written: Vec<Uuid>,
    /// Sessions deleted: their rows, and their messages with them, go first.
    deleted: Vec<Uuid>,
    messages: Vec<Message>,
    /// Message ids written, and their sessions.
    message_sessions: HashMap<Uuid, Uuid>,
    counts: HashMap<String, i64>,
    events: Vec<Event>,
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

impl<'c, 's> BatchTx<'c, 's> {
    /// `sql`, prepared once per connection.
    fn statement(&self, sql: &'static str) -> crate::Result<postgres::Statement> {
        prepared(&mut *self.tx.borrow_mut(), self.statements, sql)
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
    fn add_to_counts(&self, session: &Session, delta: i64) {
        let counts = &mut self.pending.borrow_mut().counts;
        for key in count_keys(session) {
            *counts.entry(key).or_default() += delta;
        }
    }

    /// Sends the batch's writes: deletions first (a session deleted and made again in one
    /// batch is then made anew), then sessions, messages, counts and events; returns the
    /// events.
    pub(super) fn send_writes(&self) -> TxResult<Vec<Event>> {
        let pending = self.pending.take();
        if !pending.deleted.is_empty() {
            self.run(
                "DELETE FROM sessions WHERE id = ANY($1)",
                &[&pending.deleted],
            )?;
        }
        let sessions: Vec<&Session> = pending
            .written
            .iter()
            .filter_map(|id| pending.sessions.get(id).and_then(Option::as_ref))
            .collect();
        if !sessions.is_empty() {
            schema::put_sessions(self, &sessions).map_err(failure)?;
        }
        if !pending.messages.is_empty() {
            schema::insert_messages(self, &pending.messages).map_err(failure)?;
        }
        let counts: Vec<(String, i64)> = pending
            .counts
            .into_iter()
            .filter(|(_, delta)| *delta != 0)
            .collect();
        if !counts.is_empty() {
            schema::add_to_counts(self, &counts).map_err(failure)?;
        }
        if !pending.events.is_empty() {
            schema::insert_events(self, &pending.events).map_err(failure)?;
        }
        Ok(pending.events)
    }

    /// A new batch transaction over `tx`.
    pub(super) fn new(tx: postgres::Transaction<'c>, statements: &'s Statements) -> Self {
        BatchTx {
            tx: RefCell::new(tx),
            statements,
            pending: RefCell::default(),
        }
    }

    /// Keeps `session` as this batch's version of its id, to be written.
    fn write_session(&self, session: &Session) {
        let mut pending = self.pending.borrow_mut();
        pending.sessions.insert(session.id, Some(session.clone()));
        if !pending.written.contains(&session.id) {
            pending.written.push(session.id);
        }
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
        if let Some(seen) = self.pending.borrow().sessions.get(&id) {
            return Ok(seen.clone());
        }
        const SQL: &str = concat!(
            "SELECT ",
            schema::session_columns!(),
            " FROM sessions WHERE id = $1"
        );
        let stored = self
            .row(SQL, &[&id])?
            .map(|row| schema::session_from(&row))
            .transpose()
            .map_err(Failure::Broken)?;
        self.pending
            .borrow_mut()
            .sessions
            .insert(id, stored.clone());
        Ok(stored)
    }

    fn session_id_taken(&self, id: Uuid) -> TxResult<bool> {
        Ok(self.session(id)?.is_some())
    }

    fn insert_session(&self, session: &Session) -> TxResult<()> {
        self.write_session(session);
        self.add_to_counts(session, 1);
        Ok(())
    }

    fn update_session(&self, _old: &Session, new: &Session) -> TxResult<()> {
        self.write_session(new);
        Ok(())
    }

    fn delete_session(&self, session: &Session) -> TxResult<()> {
        let id = session.id;
        {
            let mut pending = self.pending.borrow_mut();
            pending.sessions.insert(id, None);
            pending.written.retain(|written| *written != id);
            pending.messages.retain(|message| message.session_id != id);
            pending.message_sessions.retain(|_, owner| *owner != id);
            if !pending.deleted.contains(&id) {
                pending.deleted.push(id);
            }
        }
        self.add_to_counts(session, -1);
        Ok(())
    }

    fn message_in(&self, message_id: Uuid, session_id: Uuid) -> TxResult<bool> {
        if let Some(owner) = self.pending.borrow().message_sessions.get(&message_id) {
            return Ok(*owner == session_id);
        }
        if self.pending.borrow().deleted.contains(&session_id) {
            return Ok(false);
        }
        Ok(self
            .row(
                "SELECT 1 FROM messages WHERE id = $1 AND session_id = $2",
                &[&message_id, &session_id],
            )?
            .is_some())
    }

    fn message_id_taken(&self, message_id: Uuid) -> TxResult<bool> {
        if self
            .pending
            .borrow()
            .message_sessions
            .contains_key(&message_id)
        {
            return Ok(true);
        }
        Ok(self
            .row("SELECT 1 FROM messages WHERE id = $1", &[&message_id])?
            .is_some())
    }

    fn insert_message(&self, message: &Message) -> TxResult<()> {
        let mut pending = self.pending.borrow_mut();
        pending
            .message_sessions
            .insert(message.id, message.session_id);
        pending.messages.push(message.clone());
        Ok(())
    }

    fn append_events(&self, events: &[Event]) -> TxResult<()> {
        self.pending.borrow_mut().events.extend_from_slice(events);
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
