//! How the events of a write are stored in sled, and read back for replay.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::codec;
use super::engine::Engine;
use super::keys::{self, EventOwner};
use crate::domain::{Event, EventData, EventFilter, EventKind, Session, Timestamp};
use crate::error::Result;
use crate::store::events::EventReplay;

/// How the events of one write are stored: one record, keyed by the first event's id, the
/// others following with consecutive ids. Every write's events concern one session, so the
/// record names its owners once and has one index entry per owner.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredEvents {
    pub(super) session_id: Uuid,
    pub(super) agent_id: Uuid,
    pub(super) user_id: Uuid,
    pub(super) entries: Vec<StoredEntry>,
}

/// One event of a record. A message event refers to its message instead of copying it.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredEntry {
    pub(super) at: Timestamp,
    pub(super) kind: EventKind,
    data: StoredData,
}

#[derive(Serialize, Deserialize)]
enum StoredData {
    Session(Session),
    MessageSeq(u64),
}

impl StoredEvents {
    pub(super) fn owners(&self) -> [EventOwner; 3] {
        owners(self.session_id, self.agent_id, self.user_id)
    }

    /// When the record's newest event happened.
    fn newest_at(&self) -> Timestamp {
        self.entries
            .iter()
            .map(|entry| entry.at)
            .max()
            .unwrap_or(Timestamp::from_micros(0))
    }
}

/// The tree of event records: first event id (BE) -> [`StoredEvents`].
pub(super) const RECORDS_TREE: &str = "eventid_events";

/// Format 1's tree: one record per event.
const V1_EVENTS_TREE: &str = "eventid_event";

/// An event as format 1 stored it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct V1StoredEvent {
    at: Timestamp,
    kind: EventKind,
    session_id: Uuid,
    agent_id: Uuid,
    user_id: Uuid,
    data: StoredData,
}

/// Copies format 1's per-event records as one-event records of format 2. The index keys
/// (owner ++ id) already name those records, so the index stays as it is. Idempotent.
pub(super) fn migrate_v1_records(db: &sled::Db) -> Result<()> {
    let old = db.open_tree(V1_EVENTS_TREE)?;
    let records = db.open_tree(RECORDS_TREE)?;
    for entry in old.iter() {
        let (key, value) = entry?;
        let event: V1StoredEvent = codec::decode(&value)?;
        let record = StoredEvents {
            session_id: event.session_id,
            agent_id: event.agent_id,
            user_id: event.user_id,
            entries: vec![StoredEntry {
                at: event.at,
                kind: event.kind,
                data: event.data,
            }],
        };
        records.insert(key, codec::encode(&record)?)?;
    }
    Ok(())
}

/// Drops format 1's records once the store says format 2: until then an older sessiond can
/// still open the store as it was.
pub(super) fn drop_v1_records(db: &sled::Db) -> Result<()> {
    db.drop_tree(V1_EVENTS_TREE)?;
    Ok(())
}

impl StoredEvents {
    /// The record of one write's events (consecutive ids, one session): its first id and
    /// itself, or `None` for no events.
    pub(super) fn of(events: &[Event]) -> Option<(u64, StoredEvents)> {
        let first = events.first()?;
        let record = StoredEvents {
            session_id: first.session_id,
            agent_id: first.agent_id,
            user_id: first.user_id,
            entries: events
                .iter()
                .map(|event| StoredEntry {
                    at: event.at,
                    kind: event.kind,
                    data: match &event.data {
                        EventData::Session(s) => StoredData::Session(s.clone()),
                        EventData::Message { message, .. } => StoredData::MessageSeq(message.seq),
                    },
                })
                .collect(),
        };
        Some((first.id, record))
    }
}

fn owners(session_id: Uuid, agent_id: Uuid, user_id: Uuid) -> [EventOwner; 3] {
    [
        EventOwner::Session(session_id),
        EventOwner::Agent(agent_id),
        EventOwner::User(user_id),
    ]
}

/// An event record the sweeper removes, and the index entries that go with it.
pub(super) struct TrimmedRecord {
    pub(super) first_id: u64,
    pub(super) index_keys: Vec<OwnerEventKey>,
}

/// An `ownerideventid` key.
pub(super) type OwnerEventKey = [u8; keys::OWNER_EVENT_LEN];

/// Where an index entry's stretch of the log ends: the last event id it names (its value),
/// or, for an entry written before values were kept, its key's id (it covers the one
/// record there).
pub(super) fn index_entry_end(key: &[u8], value: &[u8]) -> Result<u64> {
    if value.is_empty() {
        keys::parse_owner_event(key)
    } else {
        keys::parse_event(value)
    }
}

/// The id after the newest stored event. A log with no event starts at the current time in
/// microseconds, so a new store's ids are above those of any store made before it: a reader
/// that kept its Last-Event-ID across a wiped or replaced store gets a replay, not silence.
/// (The newest record is never trimmed, so only a new store has none.)
pub(super) fn next_event_id(events: &sled::Tree) -> Result<u64> {
    Ok(match events.last()? {
        Some((key, value)) => {
            let record: StoredEvents = codec::decode(&value)?;
            keys::parse_event(&key)? + record.entries.len() as u64
        }
        None => Timestamp::now().as_micros().max(1),
    })
}

impl Engine {
    /// The first id of the newest event record.
    pub(super) fn newest_event_record(&self) -> Result<Option<u64>> {
        match self.trees.events.last()? {
            Some((key, _)) => Ok(Some(keys::parse_event(&key)?)),
            None => Ok(None),
        }
    }

    /// The oldest records before `newest` whose events all happened before `cutoff`, at
    /// most `limit`, with the index entries to remove with each; and how many events they
    /// hold. Records go oldest first, so an agent's or a user's entry goes with the last
    /// record of theirs it covers.
    pub(super) fn records_before(
        &self,
        newest: u64,
        cutoff: Timestamp,
        limit: usize,
    ) -> Result<(Vec<TrimmedRecord>, usize)> {
        let (mut doomed, mut events) = (Vec::new(), 0);
        for entry in self.trees.events.range(..keys::event(newest)).take(limit) {
            let (key, value) = entry?;
            let record: StoredEvents = codec::decode(&value)?;
            if record.newest_at() >= cutoff {
                break;
            }
            let first_id = keys::parse_event(&key)?;
            let last_id = first_id + record.entries.len() as u64 - 1;
            let mut index_keys = Vec::new();
            for owner in record.owners() {
                if let Some((key, end)) = self.index_entry_covering(owner, first_id)? {
                    if end <= last_id {
                        index_keys.push(key);
                    }
                }
            }
            doomed.push(TrimmedRecord {
                first_id,
                index_keys,
            });
            events += record.entries.len();
        }
        Ok((doomed, events))
    }

    /// The owner's index entry whose stretch of the log holds `id`: its key and the last
    /// id it covers.
    pub(super) fn index_entry_covering(
        &self,
        owner: EventOwner,
        id: u64,
    ) -> Result<Option<(OwnerEventKey, u64)>> {
        let entry = self
            .trees
            .event_index
            .range(keys::owner_event(owner, 0)..=keys::owner_event(owner, id))
            .next_back()
            .transpose()?;
        let Some((key, value)) = entry else {
            return Ok(None);
        };
        let end = index_entry_end(&key, &value)?;
        Ok((end >= id).then(|| {
            let mut owned = [0; keys::OWNER_EVENT_LEN];
            owned.copy_from_slice(&key);
            (owned, end)
        }))
    }

    pub(super) fn replay(&self, replay: EventReplay) -> Result<Vec<Event>> {
        let EventReplay {
            filter,
            after,
            through,
            limit,
        } = replay;
        let owner = match filter {
            EventFilter::Session(id) | EventFilter::RepliesTo { session_id: id, .. } => {
                EventOwner::Session(id)
            }
            EventFilter::Agent(id) => EventOwner::Agent(id),
            EventFilter::User(id) => EventOwner::User(id),
        };
        if after >= through {
            return Ok(Vec::new());
        }
        // The owner's stretch holding `after + 1` may start at or before `after`.
        let earlier = self
            .trees
            .event_index
            .range(keys::owner_event(owner, 0)..=keys::owner_event(owner, after))
            .next_back();
        let later = self
            .trees
            .event_index
            .range(keys::owner_event(owner, after + 1)..=keys::owner_event(owner, through));
        let mut found = Vec::new();
        for entry in earlier.into_iter().chain(later) {
            let (key, value) = entry?;
            let (start, end) = (
                keys::parse_owner_event(&key)?,
                index_entry_end(&key, &value)?,
            );
            // An entry with a value names its last event; one without, only its record.
            if !value.is_empty() && end <= after {
                continue;
            }
            for record in self
                .trees
                .events
                .range(keys::event(start)..=keys::event(end))
            {
                let (key, value) = record?;
                for event in self.record_events(keys::parse_event(&key)?, &value, owner)? {
                    if event.id > after && event.id <= through && filter.matches(&event) {
                        found.push(event);
                        if found.len() == limit {
                            return Ok(found);
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    /// The events of the record at `first_id`, stored as `bytes`, if it is one of
    /// `owner`'s; skips message events whose session or message was deleted since.
    fn record_events(&self, first_id: u64, bytes: &[u8], owner: EventOwner) -> Result<Vec<Event>> {
        let record: StoredEvents = codec::decode(bytes)?;
        if !record.owners().contains(&owner) {
            return Ok(Vec::new());
        }
        // Read once, for the first message event: a record concerns one session.
        let mut session_metadata_json: Option<Option<String>> = None;
        let mut events = Vec::with_capacity(record.entries.len());
        for (id, entry) in (first_id..).zip(record.entries) {
            let data = match entry.data {
                StoredData::Session(session) => EventData::Session(session),
                StoredData::MessageSeq(seq) => {
                    if session_metadata_json.is_none() {
                        session_metadata_json = Some(
                            self.session(record.session_id)?
                                .map(|session| session.metadata_json),
                        );
                    }
                    let Some(Some(metadata)) = &session_metadata_json else {
                        continue;
                    };
                    let Some(message) = self.message_at(record.session_id, seq)? else {
                        continue;
                    };
                    EventData::Message {
                        message,
                        session_metadata_json: metadata.clone(),
                    }
                }
            };
            events.push(Event {
                id,
                at: entry.at,
                kind: entry.kind,
                session_id: record.session_id,
                agent_id: record.agent_id,
                user_id: record.user_id,
                data,
            });
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled_backend::test_support::{stored_format_version, trees};
    use crate::store::test_support::{
        appended, clocked_store, session_at, stored_events, text_message, T0,
    };
    use crate::store::{Store, StoreOptions, FORMAT_VERSION};

    /// Agents' and users' entries cover stretches of write batches that hold other
    /// owners' records too: a replay still finds exactly an owner's events, and trimming
    /// leaves no entry behind.
    #[tokio::test]
    async fn owners_sharing_write_batches_replay_only_their_own_events() {
        let (store, clock, _dir) = clocked_store(T0);
        let sessions: Vec<_> = (0..4).map(|_| session_at(T0, 30, 5)).collect();
        for session in &sessions {
            store.create_session(session.clone()).await.unwrap();
        }
        // Queued together, so that the writes of all four share batches.
        let appends = sessions.iter().flat_map(|session| {
            (0..20).map(|i| appended(&store, session.id, text_message(&format!("{i}"), None)))
        });
        futures_util::future::join_all(appends).await;

        let records = trees(&store).events.len();
        let agent_entries = trees(&store).event_index.scan_prefix([b'a']).count();
        assert!(
            agent_entries < records / 2,
            "{agent_entries} agent entries for {records} records"
        );
        for session in &sessions {
            let ids = |events: Vec<Event>| events.iter().map(|e| e.id).collect::<Vec<_>>();
            let by_session = ids(stored_events(&store, EventFilter::Session(session.id)).await);
            let by_agent = ids(stored_events(&store, EventFilter::Agent(session.agent_id)).await);
            let by_user = ids(stored_events(&store, EventFilter::User(session.user_id)).await);
            // The clock stands still, so no append renews.
            assert_eq!(by_session.len(), 21, "created, then a message each");
            assert_eq!(by_agent, by_session);
            assert_eq!(by_user, by_session);
        }
        assert!(store.check().unwrap().is_clean());

        clock.set(T0 + std::time::Duration::from_secs(3600));
        store
            .trim_events(T0 + std::time::Duration::from_secs(3600))
            .await
            .unwrap();
        let report = store.check().unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        // Only the newest record is kept, with one entry per owner.
        assert_eq!(trees(&store).events.len(), 1);
        assert_eq!(trees(&store).event_index.len(), 3);
    }

    #[tokio::test]
    async fn a_format_1_store_is_upgraded_and_its_events_still_replay() {
        let dir = tempfile::tempdir().unwrap();
        let session = session_at(Timestamp::from_millis(1_795_255_200_000), 30, 5);
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert(keys::FORMAT_VERSION, &1u32.to_be_bytes())
                .unwrap();
            let old = V1StoredEvent {
                at: session.created_at,
                kind: EventKind::SessionCreated,
                session_id: session.id,
                agent_id: session.agent_id,
                user_id: session.user_id,
                data: StoredData::Session(session.clone()),
            };
            db.open_tree(V1_EVENTS_TREE)
                .unwrap()
                .insert(keys::event(7), codec::encode(&old).unwrap())
                .unwrap();
            let index = db.open_tree("ownerideventid").unwrap();
            for owner in owners(session.id, session.agent_id, session.user_id) {
                index.insert(keys::owner_event(owner, 7), &[]).unwrap();
            }
            db.flush().unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let replayed = stored_events(&store, EventFilter::Agent(session.agent_id)).await;
        assert_eq!(replayed.len(), 1);
        assert_eq!(
            (replayed[0].id, replayed[0].kind),
            (7, EventKind::SessionCreated)
        );
        assert_eq!(replayed[0].data, EventData::Session(session));
        assert_eq!(store.bus.committed_through(), 7);
        assert!(store.check().unwrap().is_clean());
        store.close().unwrap();
        let db = sled::open(dir.path()).unwrap();
        assert!(!db
            .tree_names()
            .iter()
            .any(|name| name == V1_EVENTS_TREE.as_bytes()));
        drop(db);
        assert_eq!(stored_format_version(dir.path()), FORMAT_VERSION);
    }
}
