//! The durable event log, and the bus that hands new events to live subscribers.
//!
//! Ordering: event ids are allocated under one lock held across the transaction that writes
//! them (sled serializes transactions anyway), so id order is commit order, and events
//! enter the bus's pending queue in id order. The commit thread publishes pending events
//! only after the flush that made them durable, so a subscriber never sees an event a
//! crash could take back. Subscribing and publishing share the bus lock: a new subscriber
//! replays the store up to the id published when it subscribed, and gets everything later
//! live — no gap and no duplicate at the seam.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sled::transaction::TransactionalTree;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::keys::{self, EventOwner};
use super::{codec, encode_tx, Store, TxResult};
use crate::domain::{
    DueNotices, Event, EventData, EventFilter, EventKind, Message, Session, Timestamp,
};
use crate::error::Result;

/// How an event is stored: a message event refers to its message instead of copying it.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredEvent {
    pub(super) at: Timestamp,
    pub(super) kind: EventKind,
    pub(super) session_id: Uuid,
    pub(super) agent_id: Uuid,
    pub(super) user_id: Uuid,
    data: StoredData,
}

#[derive(Serialize, Deserialize)]
enum StoredData {
    Session(Session),
    MessageSeq(u64),
}

/// Events written by one transaction, numbered from the next free id.
pub(super) struct EventLog<'a> {
    events: &'a TransactionalTree,
    index: &'a TransactionalTree,
    next_id: u64,
    written: Vec<Event>,
}

impl<'a> EventLog<'a> {
    pub(super) fn new(
        events: &'a TransactionalTree,
        index: &'a TransactionalTree,
        first_id: u64,
    ) -> Self {
        EventLog {
            events,
            index,
            next_id: first_id,
            written: Vec::new(),
        }
    }

    fn record(
        &mut self,
        at: Timestamp,
        kind: EventKind,
        session: &Session,
        data: EventData,
    ) -> TxResult<()> {
        let id = self.next_id;
        self.next_id += 1;
        let stored = StoredEvent {
            at,
            kind,
            session_id: session.id,
            agent_id: session.agent_id,
            user_id: session.user_id,
            data: match &data {
                EventData::Session(s) => StoredData::Session(s.clone()),
                EventData::Message(m) => StoredData::MessageSeq(m.seq),
            },
        };
        self.events.insert(&keys::event(id), encode_tx(&stored)?)?;
        for owner in owners(session.id, session.agent_id, session.user_id) {
            self.index.insert(&keys::owner_event(owner, id), &[])?;
        }
        self.written.push(Event {
            id,
            at,
            kind,
            session_id: session.id,
            agent_id: session.agent_id,
            user_id: session.user_id,
            data,
        });
        Ok(())
    }

    /// Records a session event carrying the session as it is now.
    pub(super) fn session(
        &mut self,
        at: Timestamp,
        kind: EventKind,
        session: &Session,
    ) -> TxResult<()> {
        self.record(at, kind, session, EventData::Session(session.clone()))
    }

    /// Records a `message` event.
    pub(super) fn message(
        &mut self,
        at: Timestamp,
        session: &Session,
        message: &Message,
    ) -> TxResult<()> {
        self.record(
            at,
            EventKind::Message,
            session,
            EventData::Message(message.clone()),
        )
    }

    /// Records the lifecycle notices that fell due.
    pub(super) fn notices(
        &mut self,
        at: Timestamp,
        session: &Session,
        due: DueNotices,
    ) -> TxResult<()> {
        if due.expiring {
            self.session(at, EventKind::SessionExpiring, session)?;
        }
        if due.expired {
            self.session(at, EventKind::SessionExpired, session)?;
        }
        Ok(())
    }

    pub(super) fn finish(self) -> Vec<Event> {
        self.written
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

impl Store {
    /// Subscribes to events matching `filter` published from now on.
    pub fn subscribe(&self, filter: EventFilter, capacity: usize) -> Subscription {
        self.bus.subscribe(filter, capacity)
    }

    /// Ends every live subscription.
    pub fn close_subscriptions(&self) {
        self.bus.close_all();
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
        let range = keys::owner_event(owner, after + 1)..=keys::owner_event(owner, through);
        let mut found = Vec::new();
        for key in self.event_index.range(range).keys() {
            let id = keys::parse_owner_event(&key?)?;
            if let Some(event) = self.event(id)? {
                if filter.matches(&event) {
                    found.push(event);
                    if found.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    fn event(&self, id: u64) -> Result<Option<Event>> {
        let Some(bytes) = self.events.get(keys::event(id))? else {
            return Ok(None);
        };
        let stored: StoredEvent = codec::decode(&bytes)?;
        let data = match stored.data {
            StoredData::Session(session) => EventData::Session(session),
            StoredData::MessageSeq(seq) => match self.message_at(stored.session_id, seq)? {
                Some(message) => EventData::Message(message),
                None => return Ok(None),
            },
        };
        Ok(Some(Event {
            id,
            at: stored.at,
            kind: stored.kind,
            session_id: stored.session_id,
            agent_id: stored.agent_id,
            user_id: stored.user_id,
            data,
        }))
    }

    /// Removes events that happened before `cutoff`, oldest first, in batches. The newest
    /// event is always kept, so ids keep increasing across restarts.
    ///
    /// # Errors
    /// Storage failures.
    pub(crate) fn trim_events(&self, cutoff: Timestamp) -> Result<usize> {
        const BATCH: usize = 512;
        let Some((newest, _)) = self.events.last()? else {
            return Ok(0);
        };
        let newest = keys::parse_event(&newest)?;
        let mut trimmed = 0;
        loop {
            let mut index = sled::Batch::default();
            let mut events = sled::Batch::default();
            let mut n = 0;
            for entry in self.events.range(..keys::event(newest)).take(BATCH) {
                let (key, value) = entry?;
                let stored: StoredEvent = codec::decode(&value)?;
                if stored.at >= cutoff {
                    break;
                }
                let id = keys::parse_event(&key)?;
                for owner in owners(stored.session_id, stored.agent_id, stored.user_id) {
                    index.remove(&keys::owner_event(owner, id));
                }
                events.remove(key);
                n += 1;
            }
            if n == 0 {
                break;
            }
            // Index entries first: a crash in between leaves index entries without their
            // event, which readers skip, never an event that cannot be found.
            self.event_index.apply_batch(index)?;
            self.events.apply_batch(events)?;
            trimmed += n;
            if n < BATCH {
                break;
            }
        }
        Ok(trimmed)
    }

    /// Runs a write that records events: allocates their ids, and queues them for
    /// publication once the write is durable. `write` gets the first free event id.
    pub(super) fn sequenced<T, E>(
        &self,
        write: impl FnOnce(u64) -> Result<Result<(T, Vec<Event>), E>>,
    ) -> Result<Result<T, E>> {
        let mut next_id = self
            .next_event_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outcome = write(*next_id)?;
        Ok(outcome.map(|(value, events)| {
            if let Some(last) = events.last() {
                *next_id = last.id + 1;
            }
            self.bus.enqueue(events);
            value
        }))
    }
}

/// The id after the newest stored event.
pub(super) fn next_event_id(events: &sled::Tree) -> Result<u64> {
    Ok(match events.last()? {
        Some((key, _)) => keys::parse_event(&key)? + 1,
        None => 1,
    })
}
