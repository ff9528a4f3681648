//! The durable event log, and the bus that hands new events to live subscribers.
//!
//! Ordering: event ids are allocated by the writer thread, in the order its writes commit,
//! and events enter the bus's pending queue in id order. The writer publishes pending
//! events only after the flush that made them durable, so a subscriber never sees an event
//! a crash could take back. Subscribing and publishing share the bus lock: a new subscriber
//! replays the store up to the id published when it subscribed, and gets everything later
//! live — no gap and no duplicate at the seam.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::engine::Engine;
use super::keys::{self, EventOwner};
use super::writer::{Work, WriteTime};
use super::{codec, settle_unrefused, Store};
use crate::domain::{
    DueNotices, Event, EventData, EventFilter, EventKind, Message, Session, Timestamp,
};
use crate::error::Result;

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

/// The events of one write, numbered from the next free id; stored by [`EventLog::finish`].
pub(super) struct EventLog {
    first_id: u64,
    written: Vec<Event>,
}

impl EventLog {
    /// A log numbering its events from `first_id`.
    pub(super) fn new(first_id: u64) -> Self {
        EventLog {
            first_id,
            written: Vec::new(),
        }
    }

    fn record(&mut self, at: Timestamp, kind: EventKind, session: &Session, data: EventData) {
        let id = self.first_id + self.written.len() as u64;
        self.written.push(Event {
            id,
            at,
            kind,
            session_id: session.id,
            agent_id: session.agent_id,
            user_id: session.user_id,
            data,
        });
    }

    /// Records a session event carrying the session as it is now.
    pub(super) fn session(&mut self, at: Timestamp, kind: EventKind, session: &Session) {
        self.record(at, kind, session, EventData::Session(session.clone()));
    }

    /// Records a `message` event.
    pub(super) fn message(&mut self, at: Timestamp, session: &Session, message: &Message) {
        self.record(
            at,
            EventKind::Message,
            session,
            EventData::Message {
                message: message.clone(),
                session_metadata_json: session.metadata_json.clone(),
            },
        );
    }

    /// Records the lifecycle notices that fell due.
    pub(super) fn notices(&mut self, at: Timestamp, session: &Session, due: DueNotices) {
        if due.expiring {
            self.session(at, EventKind::SessionExpiring, session);
        }
        if due.expired {
            self.session(at, EventKind::SessionExpired, session);
        }
    }

    /// The recorded events, in id order.
    pub(super) fn finish(self) -> Vec<Event> {
        self.written
    }
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

/// A live subscription: events published after it was made, and the id up to which the
/// store must be replayed first.
#[derive(Debug)]
pub struct Subscription {
    /// Live events, in id order. Ends when the subscriber falls too far behind (it should
    /// resume from the store) or the store closes.
    pub events: mpsc::Receiver<Arc<Event>>,
    /// Every event with an id up to this one was published before the subscription: read
    /// those from the store.
    pub replay_through: u64,
}

struct Subscriber {
    filter: EventFilter,
    sender: mpsc::Sender<Arc<Event>>,
}

#[derive(Default)]
struct BusState {
    /// Committed events not yet known to be durable, in id order.
    pending: VecDeque<Arc<Event>>,
    /// The newest id committed (pending or published).
    committed_through: u64,
    /// The newest id handed to subscribers.
    published_through: u64,
    subscribers: Vec<Subscriber>,
}

/// Hands durable events to live subscribers. Never waits for a subscriber: one that falls
/// `capacity` events behind is cut off.
pub(crate) struct EventBus {
    state: Mutex<BusState>,
}

impl EventBus {
    pub(super) fn new(last_id: u64) -> Self {
        EventBus {
            state: Mutex::new(BusState {
                committed_through: last_id,
                published_through: last_id,
                ..Default::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BusState> {
        // A panic while holding the lock leaves consistent data (every step is one push or
        // pop), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues committed events (in id order) until their flush completes.
    pub(super) fn enqueue(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut state = self.lock();
        for event in events {
            state.committed_through = event.id;
            state.pending.push_back(Arc::new(event));
        }
    }

    /// Drops the pending events from `first_id` on: their write was refused.
    pub(super) fn discard_from(&self, first_id: u64) {
        let mut state = self.lock();
        while state
            .pending
            .back()
            .is_some_and(|event| event.id >= first_id)
        {
            state.pending.pop_back();
        }
        state.committed_through = state
            .pending
            .back()
            .map_or(state.published_through, |event| event.id);
    }

    /// The newest committed id; read before a flush, it bounds what that flush makes durable.
    pub(super) fn committed_through(&self) -> u64 {
        self.lock().committed_through
    }

    /// Publishes every pending event up to `through`, in order.
    pub(super) fn publish_through(&self, through: u64) {
        let mut state = self.lock();
        while state
            .pending
            .front()
            .is_some_and(|event| event.id <= through)
        {
            let Some(event) = state.pending.pop_front() else {
                break;
            };
            state.subscribers.retain(|subscriber| {
                if !subscriber.filter.matches(&event) {
                    return !subscriber.sender.is_closed();
                }
                match subscriber.sender.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::info!(filter = ?subscriber.filter, "cut off a subscriber that fell behind");
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            state.published_through = event.id;
        }
    }

    fn subscribe(&self, filter: EventFilter, capacity: usize) -> Subscription {
        let (sender, events) = mpsc::channel(capacity);
        let mut state = self.lock();
        state.subscribers.push(Subscriber { filter, sender });
        Subscription {
            events,
            replay_through: state.published_through,
        }
    }

    /// Ends every subscription (at shutdown).
    pub(crate) fn close_all(&self) {
        self.lock().subscribers.clear();
    }
}

/// Buffer of a stream subscriber: how far it may fall behind before it is cut off.
pub const STREAM_BUFFER: usize = 8192;

/// A stream of events, in id order (see [`Store::events`]). `Sync`, as an HTTP body must be.
pub type EventStream = std::pin::Pin<Box<dyn Stream<Item = Arc<Event>> + Send + Sync>>;

/// Events read from the store per replay step.
const REPLAY_BATCH: usize = 256;

/// A resume point this store never issued: ahead of its newest event. The store was
/// replaced or restored since the reader saw that id; replaying "after" it would silently
/// skip everything until the new ids pass it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event id {given} is ahead of the newest event ({newest}): this store never issued it")]
pub struct UnknownEventId {
    /// The id the reader resumes after.
    pub given: u64,
    /// The newest id this store has published.
    pub newest: u64,
}

/// Where [`Store::events`] stands: what was sent, what the store still has to replay, and
/// the live subscription behind it.
struct EventCursor {
    store: Store,
    filter: EventFilter,
    /// The newest id sent (or skipped over).
    sent_through: u64,
    replay_through: u64,
    replayed: VecDeque<Event>,
    live: mpsc::Receiver<Arc<Event>>,
    ended: bool,
}

impl Store {
    /// Subscribes to events matching `filter` published from now on.
    pub fn subscribe(&self, filter: EventFilter, capacity: usize) -> Subscription {
        self.bus.subscribe(filter, capacity)
    }

    /// Ends every live subscription.
    pub fn close_subscriptions(&self) {
        self.bus.close_all();
    }

    /// Every event matching `filter` after the id `after` — from the store, then live as it
    /// becomes durable — each once, in id order. Without `after`, the events from now on;
    /// `Some(0)` replays every event still kept. A session's stream ends after its
    /// `session.expired` or `session.deleted`. Any stream ends when its reader falls
    /// [`STREAM_BUFFER`] events behind or the store closes: resume after the last id seen.
    ///
    /// # Errors
    /// [`UnknownEventId`] when `after` is ahead of every event this store has published.
    pub fn events(
        &self,
        filter: EventFilter,
        after: Option<u64>,
    ) -> Result<EventStream, UnknownEventId> {
        let subscription = self.subscribe(filter, STREAM_BUFFER);
        let newest = subscription.replay_through;
        if let Some(given) = after.filter(|&given| given > newest) {
            return Err(UnknownEventId { given, newest });
        }
        let cursor = EventCursor {
            store: self.clone(),
            filter,
            sent_through: after.unwrap_or(newest),
            replay_through: newest,
            replayed: VecDeque::new(),
            live: subscription.events,
            ended: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            cursor,
            |mut cursor| async move {
                if cursor.ended {
                    return None;
                }
                let event = loop {
                    if let Some(event) = cursor.replayed.pop_front() {
                        break Arc::new(event);
                    }
                    if cursor.sent_through < cursor.replay_through {
                        let batch = cursor.store.events_after(
                            cursor.filter,
                            cursor.sent_through,
                            cursor.replay_through,
                            REPLAY_BATCH,
                        );
                        match batch {
                            Ok(batch) if batch.is_empty() => {
                                cursor.sent_through = cursor.replay_through;
                            }
                            Ok(batch) => cursor.replayed.extend(batch),
                            Err(error) => {
                                tracing::error!(%error, "replaying events failed; ending the stream");
                                return None;
                            }
                        }
                        continue;
                    }
                    // Live: `None` when cut off for falling behind or at shutdown; the reader
                    // resumes after the last id it saw.
                    let event = cursor.live.recv().await?;
                    if event.id > cursor.sent_through {
                        break event;
                    }
                };
                cursor.sent_through = event.id;
                cursor.ended =
                    matches!(cursor.filter, EventFilter::Session(_)) && event.kind.ends_session();
                Some((event, cursor))
            },
        )))
    }

    /// Stored events matching `filter` with ids in `(after, through]`, oldest first, at most
    /// `limit`. Events whose message was deleted since are skipped.
    ///
    /// # Errors
    /// Storage failures and undecodable records.
    pub fn events_after(
        &self,
        filter: EventFilter,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.engine()?.events_after(filter, after, through, limit)
    }

    /// Removes event records whose events all happened before `cutoff`, oldest first, in
    /// writes of at most 64 records. The newest record is always kept, so ids keep
    /// increasing across restarts.
    ///
    /// # Errors
    /// Storage failures.
    pub(crate) async fn trim_events(&self, cutoff: Timestamp) -> Result<usize> {
        // Records per write: bounds how long the writes batched with it wait.
        const BATCH: usize = 64;
        let Some(newest) = self.engine()?.newest_event_record()? else {
            return Ok(0);
        };
        let mut trimmed = 0;
        loop {
            let (doomed, events) = self.engine()?.records_before(newest, cutoff, BATCH)?;
            trimmed += events;
            let more = doomed.len() == BATCH;
            if doomed.is_empty() {
                break;
            }
            let work: Work<()> = Box::new(move |ctx| {
                for first_id in &doomed {
                    ctx.tx.remove_events(*first_id)?;
                }
                Ok(())
            });
            settle_unrefused(self.writer.write(WriteTime::At(cutoff), work).await?)?;
            if !more {
                break;
            }
        }
        Ok(trimmed)
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
    fn newest_event_record(&self) -> Result<Option<u64>> {
        match self.trees.events.last()? {
            Some((key, _)) => Ok(Some(keys::parse_event(&key)?)),
            None => Ok(None),
        }
    }

    /// The oldest records before `newest` whose events all happened before `cutoff`, at
    /// most `limit`: their first ids and how many events they hold.
    fn records_before(
        &self,
        newest: u64,
        cutoff: Timestamp,
        limit: usize,
    ) -> Result<(Vec<u64>, usize)> {
        let (mut doomed, mut events) = (Vec::new(), 0);
        for entry in self.trees.events.range(..keys::event(newest)).take(limit) {
            let (key, value) = entry?;
            let record: StoredEvents = codec::decode(&value)?;
            if record.newest_at() >= cutoff {
                break;
            }
            doomed.push(keys::parse_event(&key)?);
            events += record.entries.len();
        }
        Ok((doomed, events))
    }

    pub(super) fn events_after(
        &self,
        filter: EventFilter,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
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
        // The owner's record holding `after + 1` may start at or before `after`.
        let earlier = self
            .trees
            .event_index
            .range(keys::owner_event(owner, 0)..=keys::owner_event(owner, after))
            .keys()
            .next_back();
        let later = self
            .trees
            .event_index
            .range(keys::owner_event(owner, after + 1)..=keys::owner_event(owner, through))
            .keys();
        let mut found = Vec::new();
        for key in earlier.into_iter().chain(later) {
            let first_id = keys::parse_owner_event(&key?)?;
            for event in self.record_events(first_id)? {
                if event.id > after && event.id <= through && filter.matches(&event) {
                    found.push(event);
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
            }
        }
        Ok(found)
    }

    /// The events of the record at `first_id` (none if it was trimmed), skipping message
    /// events whose session or message was deleted since.
    fn record_events(&self, first_id: u64) -> Result<Vec<Event>> {
        let Some(bytes) = self.trees.events.get(keys::event(first_id))? else {
            return Ok(Vec::new());
        };
        let record: StoredEvents = codec::decode(&bytes)?;
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
    use crate::store::test_support::session_at;
    use crate::store::{StoreOptions, FORMAT_VERSION};

    #[test]
    fn a_format_1_store_is_upgraded_and_its_events_still_replay() {
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
        let replayed = store
            .events_after(EventFilter::Agent(session.agent_id), 0, u64::MAX, 10)
            .unwrap();
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
        let version = db
            .open_tree("meta")
            .unwrap()
            .get(keys::FORMAT_VERSION)
            .unwrap();
        assert_eq!(version.unwrap().as_ref(), FORMAT_VERSION.to_be_bytes());
    }
}
