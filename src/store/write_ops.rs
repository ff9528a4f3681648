//! What a write can do inside its transaction: the operations the store's rules
//! (`writer.rs`'s [`WriteCtx`](super::writer::WriteCtx), and the writes in `sessions.rs`,
//! `messages.rs` and `events.rs`) are written in, and sled's implementation of them.
//!
//! An engine implements [`WriteOps`] over its own transaction. Its contract:
//! - every operation is part of the one transaction of the write's batch: the batch is
//!   applied whole or not at all, and is answered only once it is durable;
//! - each operation keeps the engine's indexes (deadlines, owners, counts, replies, the
//!   event index) in step with the record it changes, so a read never sees half a write;
//! - operations read their own transaction's writes;
//! - a storage failure is returned as a broken write (it aborts the batch), never as a
//!   refusal.

use std::ops::RangeInclusive;

use sled::transaction::TransactionalTree;
use uuid::Uuid;

use super::engine::WriteTx;
use super::events::StoredEvents;
use super::keys::{self, Counter};
use super::{broken, codec, decode_tx, encode_tx, TxResult};
use crate::domain::{Event, Message, Session, Timestamp};
use crate::error::Error;

/// Messages a session may have for its deletion to remove them in the same write; a longer
/// conversation is left to [`WriteOps::remove_messages`] in later writes, so that it does
/// not hold up the writes batched with the deletion.
pub(super) const MESSAGES_PER_PURGE_WRITE: u64 = 256;

/// The operations of one write, inside its batch's transaction.
pub(super) trait WriteOps {
    /// The stored session, expired or not.
    fn session(&self, id: Uuid) -> TxResult<Option<Session>>;

    /// Whether `id` names a stored session or one whose deletion is still under way.
    fn session_id_taken(&self, id: Uuid) -> TxResult<bool>;

    /// Stores a new session, with its owner index entries and counts.
    fn insert_session(&self, session: &Session) -> TxResult<()>;

    /// Stores `new` over `old` (the same session as stored), moving its deadlines.
    fn update_session(&self, old: &Session, new: &Session) -> TxResult<()>;

    /// Removes a stored session with its index entries and counts, and its messages:
    /// at once, or (a long conversation) marked for removal after. Returns whether they
    /// are left for later, when [`WriteOps::remove_messages`] then
    /// [`WriteOps::finish_purge`] must follow.
    fn delete_session(&self, session: &Session) -> TxResult<bool>;

    /// Whether `message_id` is a message of `session_id`.
    fn message_in(&self, message_id: Uuid, session_id: Uuid) -> TxResult<bool>;

    /// Stores a message under its session and seq, which must be new, with its id's
    /// location and its parent's reply entry.
    fn insert_message(&self, message: &Message) -> TxResult<()>;

    /// Removes the messages of a session with seqs in `seqs`, with their index entries.
    fn remove_messages(&self, session_id: Uuid, seqs: RangeInclusive<u64>) -> TxResult<()>;

    /// Clears the mark left by a deletion whose messages are now all removed.
    fn finish_purge(&self, session_id: Uuid) -> TxResult<()>;

    /// Stores the events of one write (consecutive ids, one session) and indexes them by
    /// session, agent and user.
    fn append_events(&self, events: &[Event]) -> TxResult<()>;

    /// Removes the record of events starting at `first_id`, with its index entries.
    fn remove_events(&self, first_id: u64) -> TxResult<()>;
}

/// The counters a session counts in.
pub(super) fn counters_of(session: &Session) -> [Counter; 4] {
    [
        Counter::Sessions,
        Counter::Agent(session.agent_id),
        Counter::User(session.user_id),
        Counter::Pair(session.agent_id, session.user_id),
    ]
}

impl WriteTx<'_> {
    fn add_to_counters(&self, session: &Session, delta: i64) -> TxResult<()> {
        for counter in counters_of(session) {
            let key = keys::counter(counter);
            let current = match self.counters.get(&key)? {
                Some(bytes) => keys::parse_count(&bytes).map_err(broken)?,
                None => 0,
            };
            let next = current.saturating_add_signed(delta);
            if next == 0 {
                self.counters.remove(key)?;
            } else {
                self.counters.insert(key, &keys::count_value(next))?;
            }
        }
        Ok(())
    }

    /// Writes `new` and moves its deadline entries if they changed since `old`.
    fn put_session(&self, old: Option<&Session>, new: &Session) -> TxResult<()> {
        self.sessions
            .insert(&keys::session(new.id), encode_tx(new)?)?;
        let moved = |old_at: Option<Timestamp>,
                     new_at: Timestamp,
                     tree: &TransactionalTree|
         -> TxResult<()> {
            if old_at != Some(new_at) {
                if let Some(old_at) = old_at {
                    tree.remove(&keys::deadline(old_at, new.id))?;
                }
                tree.insert(&keys::deadline(new_at, new.id), &[])?;
            }
            Ok(())
        };
        moved(
            old.map(Session::expires_at),
            new.expires_at(),
            self.expirations,
        )?;
        moved(old.map(Session::warns_at), new.warns_at(), self.warnings)?;
        Ok(())
    }
}

impl WriteOps for WriteTx<'_> {
    fn session(&self, id: Uuid) -> TxResult<Option<Session>> {
        self.sessions
            .get(keys::session(id))?
            .map(|bytes| decode_tx(&bytes))
            .transpose()
    }

    fn session_id_taken(&self, id: Uuid) -> TxResult<bool> {
        let key = keys::session(id);
        Ok(self.sessions.get(key)?.is_some() || self.purges.get(key)?.is_some())
    }

    fn insert_session(&self, session: &Session) -> TxResult<()> {
        self.put_session(None, session)?;
        self.user_sessions
            .insert(&keys::owned_session(session.user_id, session.id), &[])?;
        self.agent_sessions
            .insert(&keys::owned_session(session.agent_id, session.id), &[])?;
        self.add_to_counters(session, 1)
    }

    fn update_session(&self, old: &Session, new: &Session) -> TxResult<()> {
        self.put_session(Some(old), new)
    }

    fn delete_session(&self, session: &Session) -> TxResult<bool> {
        let id = session.id;
        self.sessions.remove(&keys::session(id))?;
        self.expirations
            .remove(&keys::deadline(session.expires_at(), id))?;
        self.warnings
            .remove(&keys::deadline(session.warns_at(), id))?;
        self.user_sessions
            .remove(&keys::owned_session(session.user_id, id))?;
        self.agent_sessions
            .remove(&keys::owned_session(session.agent_id, id))?;
        self.add_to_counters(session, -1)?;
        // The marker makes the removal resumable after a crash.
        let purge_later = session.message_count > MESSAGES_PER_PURGE_WRITE;
        if purge_later {
            self.purges.insert(&keys::session(id), &[])?;
        } else {
            self.remove_messages(id, 1..=session.message_count)?;
        }
        Ok(purge_later)
    }

    fn message_in(&self, message_id: Uuid, session_id: Uuid) -> TxResult<bool> {
        Ok(
            match self.message_locations.get(keys::session(message_id))? {
                Some(location) => keys::parse_message(&location).map_err(broken)?.0 == session_id,
                None => false,
            },
        )
    }

    fn insert_message(&self, message: &Message) -> TxResult<()> {
        let (session_id, seq) = (message.session_id, message.seq);
        let key = keys::message(session_id, seq);
        if self.messages.insert(&key, encode_tx(message)?)?.is_some() {
            return Err(broken(Error::corrupt(format!(
                "message {seq} of session {session_id} already existed"
            ))));
        }
        self.message_locations
            .insert(&keys::session(message.id), &key)?;
        if let Some(parent_id) = message.parent_id {
            // The value names the session, so an entry left by an interrupted purge can be
            // traced to its (deleted) session.
            self.children
                .insert(&keys::child(parent_id, seq), &keys::session(session_id))?;
        }
        Ok(())
    }

    fn remove_messages(&self, session_id: Uuid, seqs: RangeInclusive<u64>) -> TxResult<()> {
        for seq in seqs {
            let Some(bytes) = self.messages.remove(&keys::message(session_id, seq))? else {
                continue;
            };
            match codec::decode::<Message>(&bytes) {
                Ok(message) => {
                    self.message_locations.remove(&keys::session(message.id))?;
                    if let Some(parent_id) = message.parent_id {
                        self.children.remove(&keys::child(parent_id, seq))?;
                    }
                }
                Err(error) => {
                    tracing::warn!(%session_id, %error, "removing an undecodable message")
                }
            }
        }
        Ok(())
    }

    fn finish_purge(&self, session_id: Uuid) -> TxResult<()> {
        self.purges.remove(&keys::session(session_id))?;
        Ok(())
    }

    fn append_events(&self, events: &[Event]) -> TxResult<()> {
        let Some((first_id, record)) = StoredEvents::of(events) else {
            return Ok(());
        };
        self.events
            .insert(&keys::event(first_id), encode_tx(&record)?)?;
        for owner in record.owners() {
            self.event_index
                .insert(&keys::owner_event(owner, first_id), &[])?;
        }
        Ok(())
    }

    fn remove_events(&self, first_id: u64) -> TxResult<()> {
        let Some(bytes) = self.events.remove(&keys::event(first_id))? else {
            return Ok(());
        };
        let record: StoredEvents = decode_tx(&bytes)?;
        for owner in record.owners() {
            self.event_index
                .remove(&keys::owner_event(owner, first_id))?;
        }
        Ok(())
    }
}
