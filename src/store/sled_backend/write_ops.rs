//! sled's implementation of [`WriteOps`]: each operation over the trees of the batch's
//! transaction, keeping the index trees and counters in step with the records. Below it,
//! the chores only sled has: removing a long conversation's messages in later writes, and
//! trimming event records.

use std::ops::RangeInclusive;

use sled::transaction::TransactionalTree;
use uuid::Uuid;

use super::engine::WriteTx;
use super::event_records::{StoredEvents, TrimmedRecord};
use super::keys::{self, Counter};
use super::{codec, decode_tx, encode_tx};
use crate::domain::{Event, Message, Session, Timestamp};
use crate::error::Error;
use crate::store::write::{broken, TxResult, WriteOps};

/// Messages a session may have for its deletion to remove them in the same write; a longer
/// conversation is left to [`WriteTx::remove_messages`] in later writes, so that it does
/// not hold up the writes batched with the deletion.
pub(super) const MESSAGES_PER_PURGE_WRITE: u64 = 256;

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
            // Keys hold the deadline's second: a move within it changes no key.
            if old_at.map(keys::deadline_bucket) != Some(keys::deadline_bucket(new_at)) {
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

    fn delete_session(&self, session: &Session) -> TxResult<()> {
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
        // A long conversation is removed in later writes; the marker makes that resumable
        // after a crash, and keeps the id taken meanwhile.
        if session.message_count > MESSAGES_PER_PURGE_WRITE {
            self.purges.insert(&keys::session(id), &[])?;
        } else {
            self.remove_messages(id, 1..=session.message_count)?;
        }
        Ok(())
    }

    fn message_in(&self, message_id: Uuid, session_id: Uuid) -> TxResult<bool> {
        Ok(
            match self.message_locations.get(keys::session(message_id))? {
                Some(location) => keys::parse_message(&location).map_err(broken)?.0 == session_id,
                None => false,
            },
        )
    }

    fn message_id_taken(&self, message_id: Uuid) -> TxResult<bool> {
        Ok(self
            .message_locations
            .get(keys::session(message_id))?
            .is_some())
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
            // Most messages reply to the one before them: that reply is found at its
            // parent's seq + 1, without an entry (one write less per append).
            let parent_seq = match self.message_locations.get(keys::session(parent_id))? {
                Some(location) => keys::parse_message(&location).map_err(broken)?.1,
                None => {
                    return Err(broken(Error::corrupt(format!(
                        "the parent {parent_id} of message {} is not stored",
                        message.id
                    ))))
                }
            };
            if parent_seq + 1 != seq {
                // The value names the session, so an entry left by an interrupted purge can
                // be traced to its (deleted) session.
                self.children
                    .insert(&keys::child(parent_id, seq), &keys::session(session_id))?;
            }
        }
        Ok(())
    }

    fn append_events(&self, events: &[Event]) -> TxResult<()> {
        let Some((first_id, record)) = StoredEvents::of(events) else {
            return Ok(());
        };
        self.events
            .insert(&keys::event(first_id), encode_tx(&record)?)?;
        let last_id = keys::event(first_id + record.entries.len() as u64 - 1);
        let [session, agent, user] = record.owners();
        self.event_index
            .insert(&keys::owner_event(session, first_id), &last_id)?;
        // One entry per agent and per user per batch, however many of their records the
        // batch holds: each record moves its end (two writes fewer per append).
        for owner in [agent, user] {
            self.event_index.insert(
                &keys::owner_event(owner, self.batch_first_event_id),
                &last_id,
            )?;
        }
        Ok(())
    }
}

/// The chores: writes only this engine needs, run by the writer as
/// [`Chore`](super::writer::Chore)s.
impl WriteTx<'_> {
    /// Removes the messages of a session with seqs in `seqs`, with their index entries.
    pub(super) fn remove_messages(
        &self,
        session_id: Uuid,
        seqs: RangeInclusive<u64>,
    ) -> TxResult<()> {
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

    /// Clears the mark left by a deletion whose messages are now all removed.
    pub(super) fn finish_purge(&self, session_id: Uuid) -> TxResult<()> {
        self.purges.remove(&keys::session(session_id))?;
        Ok(())
    }

    /// Removes an event record with the index entries that only it still needed.
    pub(super) fn remove_events(&self, record: &TrimmedRecord) -> TxResult<()> {
        self.events.remove(&keys::event(record.first_id))?;
        for key in &record.index_keys {
            self.event_index.remove(key)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::store::sled_backend::keys;
    use crate::store::sled_backend::test_support::trees;
    use crate::store::test_support::{
        append_texts, appended, clocked_store, created_session, text_message, T0,
    };
    use crate::store::MessageQuery;

    /// A message missing from a session that is still stored is corruption, not a race.
    #[tokio::test]
    async fn a_message_missing_from_a_stored_session_is_corruption() {
        let before_ms = MessageQuery {
            limit: 10,
            before_ms: Some(i64::MAX),
            ..Default::default()
        };
        let (store, _clock, _dir) = clocked_store(T0);
        let session = created_session(&store, T0).await;
        append_texts(&store, session.id, 3).await;
        trees(&store)
            .messages
            .remove(keys::message(session.id, 2))
            .unwrap();
        let seen = store.session(session.id).await.unwrap().unwrap();
        assert!(matches!(
            store.page_messages(&seen, &before_ms).await,
            Err(Error::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn deleting_a_session_removes_its_messages_and_their_index_entries() {
        let (store, _clock, _dir) = clocked_store(T0);
        let session = created_session(&store, T0).await;
        let mut ids = Vec::new();
        for _ in 0..600 {
            ids.push(
                appended(&store, session.id, text_message("m", None))
                    .await
                    .id,
            );
        }
        store.delete_session(session.id, T0).await.unwrap().unwrap();
        assert!(trees(&store)
            .messages
            .scan_prefix(keys::session(session.id))
            .next()
            .is_none());
        assert!(ids.iter().all(|id| trees(&store)
            .message_locations
            .get(keys::session(*id))
            .unwrap()
            .is_none()));
        assert_eq!(trees(&store).children.iter().count(), 0);
        assert_eq!(store.check().unwrap().pending_purges, 0);
    }

    #[tokio::test]
    async fn deleting_a_short_conversation_leaves_other_sessions_alone() {
        let (store, _clock, _dir) = clocked_store(T0);
        let (doomed, kept) = (
            created_session(&store, T0).await,
            created_session(&store, T0).await,
        );
        for session in [&doomed, &kept] {
            let first = append_texts(&store, session.id, 2).await.remove(0);
            // A branch: the one reply with an entry of its own.
            appended(&store, session.id, text_message("again", Some(first.id))).await;
        }
        assert_eq!(trees(&store).children.len(), 2);
        let deleted = store.delete_session(doomed.id, T0).await.unwrap().unwrap();
        assert_eq!(deleted.message_count, 3);
        assert!(trees(&store)
            .messages
            .scan_prefix(keys::session(doomed.id))
            .next()
            .is_none());
        assert_eq!(trees(&store).message_locations.len(), 3);
        assert_eq!(trees(&store).children.len(), 1);
        assert_eq!(store.check().unwrap().pending_purges, 0);
        assert!(store.check().unwrap().is_clean());
    }

    /// Only a reply that does not follow its parent has an entry; the replies page finds
    /// the other one at its parent's seq + 1, also in a store that has an entry for it.
    #[tokio::test]
    async fn replies_are_found_with_and_without_their_own_entry() {
        let (store, _clock, _dir) = clocked_store(T0);
        let session = created_session(&store, T0).await;
        let messages = append_texts(&store, session.id, 3).await;
        let root = &messages[0];
        let branch = appended(&store, session.id, text_message("b", Some(root.id))).await;
        assert_eq!(
            trees(&store).children.len(),
            1,
            "only the branch has an entry"
        );
        let replies_of_root = || async {
            let session = store.session(session.id).await.unwrap().unwrap();
            let query = MessageQuery {
                limit: 10,
                parent_id: Some(root.id),
                ..Default::default()
            };
            let page = store
                .page_messages(&session, &query)
                .await
                .unwrap()
                .unwrap();
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>()
        };
        assert_eq!(replies_of_root().await, vec![branch.seq, messages[1].seq]);

        // As a store written before kept it: an entry for the adjacent reply too.
        trees(&store)
            .children
            .insert(
                keys::child(root.id, messages[1].seq),
                &keys::session(session.id),
            )
            .unwrap();
        assert_eq!(replies_of_root().await, vec![branch.seq, messages[1].seq]);
        assert!(store.check().unwrap().is_clean());
    }
}
