//! Offline verification and statistics of a store (`sessiond check`, `sessiond stats`).
//!
//! `check` walks every tree once and looks up the other side of each link, so it needs no
//! memory proportional to the store except the recounted counters.

use std::collections::HashMap;

use uuid::Uuid;

use super::codec;
use super::engine::Engine;
use super::event_records::{index_entry_end, StoredEvents};
use super::keys;
use crate::domain::{Message, Session};
use crate::error::Result;
use crate::store::Progress;

/// Most problems listed in a report; the rest are only counted.
const MAX_LISTED: usize = 100;

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Sessions, messages and events seen.
    pub sessions: u64,
    /// Messages seen.
    pub messages: u64,
    /// Events seen.
    pub events: u64,
    /// Deletions whose messages are still being removed (finished at the next start).
    pub pending_purges: u64,
    /// The first problems found, readable.
    pub problems: Vec<String>,
    /// How many problems in all.
    pub problem_count: u64,
}

impl CheckReport {
    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(text);
        }
    }

    /// Whether the store is consistent.
    pub fn is_clean(&self) -> bool {
        self.problem_count == 0
    }
}

/// One tree's size.
#[derive(Debug, Clone)]
pub struct TreeStats {
    /// The tree's name.
    pub name: &'static str,
    /// Entries.
    pub entries: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Engine {
    pub(super) fn tree_stats(&self, progress: &dyn Progress) -> Result<Vec<TreeStats>> {
        let mut stats = Vec::new();
        for (name, tree) in self.trees.named() {
            // sled counts a tree's entries only by reading them all, so no stage has a length.
            progress.stage(&format!("reading {name}"), None);
            let (mut entries, mut bytes) = (0, 0);
            for entry in tree.iter() {
                let (key, value) = entry?;
                entries += 1;
                bytes += (key.len() + value.len()) as u64;
                progress.advance(1);
            }
            stats.push(TreeStats {
                name,
                entries,
                bytes,
            });
        }
        Ok(stats)
    }

    /// Each scan is a stage of `progress`. The session counter gives the first its length;
    /// the sessions read give the lengths of the scans of their index entries and messages
    /// (estimates, exact on a clean store).
    pub(super) fn check(&self, progress: &dyn Progress) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let pending: std::collections::HashSet<Uuid> = self.pending_purges()?.into_iter().collect();
        report.pending_purges = pending.len() as u64;
        progress.stage(
            "checking sessions",
            Some(self.counter(keys::Counter::Sessions)?),
        );
        let counted_messages = self.check_sessions(&mut report, progress)?;
        // Each session has four index entries: user, agent, expiry, warning.
        progress.stage(
            "checking session indexes",
            Some(report.sessions.saturating_mul(4)),
        );
        self.check_session_indexes(&mut report, progress)?;
        self.check_messages(&mut report, &pending, counted_messages, progress)?;
        self.check_events(&mut report, progress)?;
        Ok(report)
    }

    /// Checks every session record; returns the messages they count, all told.
    fn check_sessions(&self, report: &mut CheckReport, progress: &dyn Progress) -> Result<u64> {
        let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut counted_messages: u64 = 0;
        for entry in self.trees.sessions.iter() {
            let (key, value) = entry?;
            report.sessions += 1;
            progress.advance(1);
            let session: Session = match codec::decode(&value) {
                Ok(session) => session,
                Err(error) => {
                    report.problem(format!(
                        "session record {:?} does not decode: {error}",
                        hex(&key)
                    ));
                    continue;
                }
            };
            let id = session.id;
            counted_messages = counted_messages.saturating_add(session.message_count);
            if key.as_ref() != keys::session(id) {
                report.problem(format!("session {id} is stored under another key"));
            }
            let expected = [
                (
                    &self.trees.user_sessions,
                    keys::owned_session(session.user_id, id).to_vec(),
                    "user index",
                ),
                (
                    &self.trees.agent_sessions,
                    keys::owned_session(session.agent_id, id).to_vec(),
                    "agent index",
                ),
                (
                    &self.trees.expirations,
                    keys::deadline(session.expires_at(), id).to_vec(),
                    "expiry index",
                ),
                (
                    &self.trees.warnings,
                    keys::deadline(session.warns_at(), id).to_vec(),
                    "warning index",
                ),
            ];
            for (tree, key, what) in expected {
                if !tree.contains_key(key)? {
                    report.problem(format!("session {id} has no {what} entry"));
                }
            }
            // Seqs must run 1..=messageCount with nothing beyond.
            let mut expected_seq = 1;
            for message_key in self.trees.messages.scan_prefix(keys::session(id)).keys() {
                let (_, seq) = keys::parse_message(&message_key?)?;
                if seq != expected_seq {
                    report.problem(format!(
                        "session {id}: expected message {expected_seq}, found {seq}"
                    ));
                }
                expected_seq = seq + 1;
            }
            if expected_seq - 1 != session.message_count {
                report.problem(format!(
                    "session {id}: messageCount is {} but messages run to {}",
                    session.message_count,
                    expected_seq - 1
                ));
            }
            for counter in super::write_ops::counters_of(&session) {
                *counts.entry(keys::counter(counter)).or_default() += 1;
            }
        }
        for entry in self.trees.counters.iter() {
            let (key, value) = entry?;
            let stored = keys::parse_count(&value)?;
            let actual = counts.remove(key.as_ref()).unwrap_or(0);
            if stored != actual {
                report.problem(format!(
                    "counter {} says {stored}, the data has {actual}",
                    hex(&key)
                ));
            }
        }
        for (key, actual) in counts {
            report.problem(format!(
                "counter {} is missing; the data has {actual}",
                hex(&key)
            ));
        }
        Ok(counted_messages)
    }

    /// Every index entry must point to a session whose values put it there.
    fn check_session_indexes(
        &self,
        report: &mut CheckReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        for (tree, what) in [
            (&self.trees.user_sessions, "user"),
            (&self.trees.agent_sessions, "agent"),
        ] {
            for key in tree.iter().keys() {
                let key = key?;
                progress.advance(1);
                let id = keys::parse_owned_session(&key)?;
                let owner = Uuid::from_slice(&key[..keys::ID_LEN]).unwrap_or_default();
                match self.session(id) {
                    Ok(Some(s))
                        if (if what == "user" {
                            s.user_id
                        } else {
                            s.agent_id
                        }) == owner => {}
                    Ok(_) => report.problem(format!(
                        "{what} index entry for session {id} points to no matching session"
                    )),
                    Err(error) => {
                        report.problem(format!("{what} index entry for session {id}: {error}"))
                    }
                }
            }
        }
        for (tree, what) in [
            (&self.trees.expirations, "expiry"),
            (&self.trees.warnings, "warning"),
        ] {
            for key in tree.iter().keys() {
                let (at, id) = keys::parse_deadline(&key?)?;
                progress.advance(1);
                let matches = |s: &Session| {
                    let deadline = if what == "expiry" {
                        s.expires_at()
                    } else {
                        s.warns_at()
                    };
                    keys::deadline_bucket(deadline) == at
                };
                match self.session(id) {
                    Ok(Some(s)) if matches(&s) => {}
                    Ok(_) => report.problem(format!(
                        "{what} index entry for session {id} at {at} is stale"
                    )),
                    Err(error) => {
                        report.problem(format!("{what} index entry for session {id}: {error}"))
                    }
                }
            }
        }
        Ok(())
    }

    /// `counted` is the messages the sessions count: the length of the scans of messages
    /// and of their id index.
    fn check_messages(
        &self,
        report: &mut CheckReport,
        pending: &std::collections::HashSet<Uuid>,
        counted: u64,
        progress: &dyn Progress,
    ) -> Result<()> {
        progress.stage("checking messages", Some(counted));
        for entry in self.trees.messages.iter() {
            let (key, value) = entry?;
            report.messages += 1;
            progress.advance(1);
            let (session_id, seq) = keys::parse_message(&key)?;
            if pending.contains(&session_id) {
                continue;
            }
            if !self
                .trees
                .sessions
                .contains_key(keys::session(session_id))?
            {
                report.problem(format!(
                    "message {seq} of session {session_id} has no session"
                ));
                continue;
            }
            let message: Message = match codec::decode(&value) {
                Ok(message) => message,
                Err(error) => {
                    report.problem(format!(
                        "message {seq} of session {session_id} does not decode: {error}"
                    ));
                    continue;
                }
            };
            if message.session_id != session_id || message.seq != seq {
                report.problem(format!(
                    "message {} is stored under session {session_id} seq {seq}",
                    message.id
                ));
            }
            match self
                .trees
                .message_locations
                .get(keys::session(message.id))?
            {
                Some(location) if location.as_ref() == key.as_ref() => {}
                _ => report.problem(format!("message {} has no id index entry", message.id)),
            }
            if let Some(parent_id) = message.parent_id {
                let parent_seq = match self.trees.message_locations.get(keys::session(parent_id))? {
                    Some(location) if keys::parse_message(&location)?.0 == session_id => {
                        Some(keys::parse_message(&location)?.1)
                    }
                    _ => {
                        report.problem(format!(
                            "message {}'s parent {parent_id} is not in its session",
                            message.id
                        ));
                        None
                    }
                };
                // A reply to the message just before it needs no entry.
                let needs_entry = parent_seq.is_some_and(|parent_seq| parent_seq + 1 != seq);
                if needs_entry
                    && !self
                        .trees
                        .children
                        .contains_key(keys::child(parent_id, seq))?
                {
                    report.problem(format!("message {} has no reply index entry", message.id));
                }
            }
        }
        progress.stage("checking message ids", Some(counted));
        for entry in self.trees.message_locations.iter() {
            let (id_key, location) = entry?;
            progress.advance(1);
            let (session_id, seq) = keys::parse_message(&location)?;
            if pending.contains(&session_id) {
                continue;
            }
            let found = self.message_at(session_id, seq)?;
            if found.is_none_or(|m| m.id.as_bytes() != id_key.as_ref()) {
                report.problem(format!(
                    "id index entry {} points to no such message",
                    hex(&id_key)
                ));
            }
        }
        progress.stage("checking replies", None);
        for entry in self.trees.children.iter() {
            let (key, value) = entry?;
            progress.advance(1);
            let (parent_id, seq) = keys::parse_child(&key)?;
            let session_id = keys::parse_session(&value)?;
            if pending.contains(&session_id) {
                continue;
            }
            match self.trees.message_locations.get(keys::session(parent_id))? {
                Some(location) if keys::parse_message(&location)?.0 == session_id => {}
                _ => {
                    report.problem(format!(
                        "reply index entry under unknown message {parent_id}"
                    ));
                    continue;
                }
            }
            if self
                .message_at(session_id, seq)?
                .is_none_or(|m| m.parent_id != Some(parent_id))
            {
                report.problem(format!(
                    "reply index entry ({parent_id}, {seq}) points to no reply"
                ));
            }
        }
        Ok(())
    }

    fn check_events(&self, report: &mut CheckReport, progress: &dyn Progress) -> Result<()> {
        progress.stage("checking events", None);
        // Each record holds ids first..first + len; the next record starts after them.
        let mut next_free: u64 = 0;
        for entry in self.trees.events.iter() {
            let (key, value) = entry?;
            progress.advance(1);
            let first_id = keys::parse_event(&key)?;
            let record: StoredEvents = match codec::decode(&value) {
                Ok(record) => record,
                Err(error) => {
                    report.problem(format!("event record {first_id} does not decode: {error}"));
                    continue;
                }
            };
            if record.entries.is_empty() {
                report.problem(format!("event record {first_id} holds no event"));
            }
            if first_id < next_free {
                report.problem(format!(
                    "event record {first_id} overlaps the record before it (ids up to {})",
                    next_free - 1
                ));
            }
            next_free = first_id + record.entries.len() as u64;
            report.events += record.entries.len() as u64;
            for owner in record.owners() {
                if self.index_entry_covering(owner, first_id)?.is_none() {
                    report.problem(format!(
                        "event record {first_id} is missing an index entry for {owner:?}"
                    ));
                }
            }
        }
        // Each entry's stretch ends in a record of its owner (trimming removes an entry
        // with the last record it covers).
        progress.stage("checking event index", None);
        for entry in self.trees.event_index.iter() {
            let (key, value) = entry?;
            progress.advance(1);
            let end = index_entry_end(&key, &value)?;
            let last_record = self
                .trees
                .events
                .range(..=keys::event(end))
                .next_back()
                .transpose()?;
            let owner = keys::parse_owner(&key)?;
            let belongs = match last_record {
                Some((_, record)) => codec::decode::<StoredEvents>(&record)
                    .is_ok_and(|record| record.owners().contains(&owner)),
                None => false,
            };
            if !belongs {
                report.problem(format!(
                    "event index entry for {owner:?} ends at {end}, in no record of theirs"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::sled_backend::test_support::trees;
    use crate::store::test_support::{append_texts, clocked_store, created_session, T0};
    use crate::store::Store;

    async fn populated() -> (Store, tempfile::TempDir, Session) {
        let (store, _clock, dir) = clocked_store(T0);
        let session = created_session(&store, T0).await;
        append_texts(&store, session.id, 5).await;
        (store, dir, session)
    }

    #[tokio::test]
    async fn a_consistent_store_is_clean() {
        let (store, _dir, _) = populated().await;
        let report = store.check().unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!((report.sessions, report.messages), (1, 5));
        assert!(report.events >= 6);
    }

    #[tokio::test]
    async fn a_missing_message_a_stale_index_and_a_wrong_counter_are_reported() {
        let (store, _dir, session) = populated().await;
        trees(&store)
            .messages
            .remove(keys::message(session.id, 3))
            .unwrap();
        trees(&store)
            .user_sessions
            .insert(keys::owned_session(Uuid::new_v4(), Uuid::now_v7()), &[])
            .unwrap();
        trees(&store)
            .counters
            .insert(
                keys::counter(keys::Counter::Sessions),
                &keys::count_value(7),
            )
            .unwrap();
        let report = store.check().unwrap();
        let all = report.problems.join("\n");
        assert!(all.contains("expected message 3, found 4"), "{all}");
        assert!(all.contains("id index entry"), "{all}");
        assert!(all.contains("user index entry"), "{all}");
        assert!(all.contains("says 7, the data has 1"), "{all}");
    }
}
