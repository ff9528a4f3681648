//! The events of a write as it records them, and the bus that hands durable events to
//! live subscribers.
//!
//! Ordering: the engine numbers events in the order its writes commit, and they enter the
//! bus's pending queue in id order. It publishes pending events only after they are
//! durable, so a subscriber never sees an event a crash could take back. Subscribing and
//! publishing share the bus lock: a new subscriber replays the store up to the id
//! published when it subscribed, and gets everything later live — no gap and no duplicate
//! at the seam.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use futures_util::Stream;
use tokio::sync::mpsc;

use super::{Store, StoreMetrics};
use crate::domain::{
    DueNotices, Event, EventData, EventFilter, EventKind, Message, Session, Timestamp,
};
use crate::error::Result;

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

/// An event as streams receive it: one allocation shared by every stream it goes to, with
/// room for the text a transport writes it as, so that a thousand streams of one session
/// render each event once.
#[derive(Debug)]
pub struct StreamEvent {
    event: Event,
    rendered: OnceLock<Arc<str>>,
}

impl StreamEvent {
    fn new(event: Event) -> Arc<StreamEvent> {
        Arc::new(StreamEvent {
            event,
            rendered: OnceLock::new(),
        })
    }

    /// The event as `render` writes it: rendered by the first stream that asks, shared by
    /// the others. Every stream must render an event the same way.
    pub fn rendered(&self, render: impl FnOnce(&Event) -> String) -> Arc<str> {
        self.rendered
            .get_or_init(|| render(&self.event).into())
            .clone()
    }
}

impl std::ops::Deref for StreamEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// A live subscription: events published after it was made, and the id up to which the
/// store must be replayed first.
#[derive(Debug)]
pub struct Subscription {
    /// Live events, in id order. Ends when the subscriber falls too far behind (it should
    /// resume from the store) or the store closes.
    pub events: LiveEvents,
    /// Every event with an id up to this one was published before the subscription: read
    /// those from the store.
    pub replay_through: u64,
}

/// The events of one publication: what one flush made durable, shared by every subscriber
/// it goes to. A subscriber gets each publication holding an event for it once, not each
/// event, so that a thousand streams of one session cost one hand-over per flush each.
type Published = Arc<[Arc<StreamEvent>]>;

/// The live events of a [`Subscription`]: those of each publication that match its filter.
#[derive(Debug)]
pub struct LiveEvents {
    filter: EventFilter,
    publications: mpsc::UnboundedReceiver<(Published, usize)>,
    /// The publication being read, and the index of its next event.
    reading: Option<(Published, usize)>,
    /// Matching events handed over and not yet taken: the sender cuts the subscriber off
    /// past its capacity.
    backlog: Arc<AtomicUsize>,
}

impl LiveEvents {
    /// The next live event, or `None` once the subscription has ended. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Arc<StreamEvent>> {
        loop {
            if let Some((publication, next)) = &mut self.reading {
                while let Some(event) = publication.get(*next) {
                    *next += 1;
                    if self.filter.matches(event) {
                        return Some(Arc::clone(event));
                    }
                }
                self.reading = None;
            }
            let (publication, matching) = self.publications.recv().await?;
            self.backlog.fetch_sub(matching, Ordering::Relaxed);
            self.reading = Some((publication, 0));
        }
    }
}

struct Subscriber {
    filter: EventFilter,
    publications: mpsc::UnboundedSender<(Published, usize)>,
    backlog: Arc<AtomicUsize>,
    capacity: usize,
}

#[derive(Default)]
struct BusState {
    /// Committed events not yet known to be durable, in id order.
    pending: VecDeque<Arc<StreamEvent>>,
    /// The newest id committed (pending or published).
    committed_through: u64,
    /// The newest id handed to subscribers.
    published_through: u64,
    subscribers: Vec<Subscriber>,
}

impl BusState {
    /// Hands `durable` (in id order, after every event published before) to the
    /// subscribers, as one publication.
    fn publish(&mut self, durable: Vec<Arc<StreamEvent>>, metrics: &StoreMetrics) {
        let Some(last) = durable.last() else {
            return;
        };
        self.published_through = last.id;
        for event in &durable {
            metrics.published(event.kind);
        }
        let publication: Published = durable.into();
        self.subscribers.retain(|subscriber| {
            let matching = publication
                .iter()
                .filter(|event| subscriber.filter.matches(event))
                .count();
            if matching == 0 {
                return !subscriber.publications.is_closed();
            }
            let backlog = subscriber.backlog.fetch_add(matching, Ordering::Relaxed);
            if backlog + matching > subscriber.capacity {
                tracing::info!(filter = ?subscriber.filter, "cut off a subscriber that fell behind");
                metrics.streams_cut_off.inc();
                return false;
            }
            subscriber
                .publications
                .send((Arc::clone(&publication), matching))
                .is_ok()
        });
    }
}

/// Hands durable events to live subscribers. Never waits for a subscriber: one that falls
/// `capacity` events behind is cut off.
pub(crate) struct EventBus {
    state: Mutex<BusState>,
    metrics: Arc<StoreMetrics>,
}

impl EventBus {
    pub(super) fn new(last_id: u64, metrics: Arc<StoreMetrics>) -> Self {
        EventBus {
            state: Mutex::new(BusState {
                committed_through: last_id,
                published_through: last_id,
                ..Default::default()
            }),
            metrics,
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
            state.pending.push_back(StreamEvent::new(event));
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

    /// The newest id handed to subscribers.
    pub(super) fn published_through(&self) -> u64 {
        self.lock().published_through
    }

    /// The newest committed id; read before a flush, it bounds what that flush makes durable.
    pub(super) fn committed_through(&self) -> u64 {
        self.lock().committed_through
    }

    /// Publishes every pending event up to `through`, in order.
    pub(super) fn publish_through(&self, through: u64) {
        let mut state = self.lock();
        let mut durable = Vec::new();
        while let Some(event) = state.pending.pop_front() {
            if event.id > through {
                state.pending.push_front(event);
                break;
            }
            durable.push(event);
        }
        state.publish(durable, &self.metrics);
    }

    /// Publishes `events`, durable already (committed by a database), in id order, skipping
    /// those published before: two publishers (a server's writer, with its own writes, and
    /// its follower, with every server's) may offer the same ones.
    pub(super) fn publish_durable(&self, events: Vec<Event>) {
        let mut state = self.lock();
        let published_through = state.published_through;
        let fresh: Vec<Arc<StreamEvent>> = events
            .into_iter()
            .filter(|event| event.id > published_through)
            .map(StreamEvent::new)
            .collect();
        if let Some(last) = fresh.last() {
            state.committed_through = state.committed_through.max(last.id);
        }
        state.publish(fresh, &self.metrics);
    }

    fn subscribe(&self, filter: EventFilter, capacity: usize) -> Subscription {
        let (sender, publications) = mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let mut state = self.lock();
        state.subscribers.push(Subscriber {
            filter,
            publications: sender,
            backlog: Arc::clone(&backlog),
            capacity,
        });
        Subscription {
            events: LiveEvents {
                filter,
                publications,
                reading: None,
                backlog,
            },
            replay_through: state.published_through,
        }
    }

    /// Ends every subscription (at shutdown).
    pub(crate) fn close_all(&self) {
        self.lock().subscribers.clear();
    }
}

/// Stored events to replay: those matching `filter` with ids in `(after, through]`,
/// oldest first, at most `limit`. Events whose message was deleted since are skipped.
#[derive(Clone, Copy, Debug)]
pub(super) struct EventReplay {
    pub(super) filter: EventFilter,
    pub(super) after: u64,
    pub(super) through: u64,
    pub(super) limit: usize,
}

/// Buffer of a stream subscriber: how far it may fall behind before it is cut off.
pub const STREAM_BUFFER: usize = 8192;

/// A stream of events, in id order (see [`Store::events`]). `Sync`, as an HTTP body must be.
pub type EventStream = std::pin::Pin<Box<dyn Stream<Item = Arc<StreamEvent>> + Send + Sync>>;

/// A stream that is `Sync` because it is only ever polled through `&mut`: the lock is
/// never taken. An engine's reads need only be `Send`.
struct Exclusive<S>(Mutex<S>);

impl<S: Stream + Unpin> Stream for Exclusive<S> {
    type Item = S::Item;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::pin::Pin::new(inner).poll_next(cx)
    }
}

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
    live: LiveEvents,
    ended: bool,
}

impl Store {
    /// Subscribes to events matching `filter` published from now on.
    pub fn subscribe(&self, filter: EventFilter, capacity: usize) -> Subscription {
        self.bus.subscribe(filter, capacity)
    }

    /// Waits, briefly, until this store has published every stored event through
    /// `through`: call it before [`Store::events`] with a reader's resume point, which
    /// another server sharing the store may have shown it first.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn catch_up_events(&self, through: u64) -> Result<()> {
        if through <= self.bus.published_through() {
            return Ok(());
        }
        self.backend.catch_up_events(through).await
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
        let stream = futures_util::stream::unfold(cursor, |mut cursor| async move {
            if cursor.ended {
                return None;
            }
            let event = loop {
                if let Some(event) = cursor.replayed.pop_front() {
                    break StreamEvent::new(event);
                }
                if cursor.sent_through < cursor.replay_through {
                    let replay = EventReplay {
                        filter: cursor.filter,
                        after: cursor.sent_through,
                        through: cursor.replay_through,
                        limit: REPLAY_BATCH,
                    };
                    let batch = cursor.store.backend.replay(replay).await;
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
        });
        Ok(Box::pin(Exclusive(Mutex::new(Box::pin(stream)))))
    }

    /// Removes events that all happened before `cutoff`, keeping the newest so that ids
    /// go on increasing across restarts. Returns how many went.
    ///
    /// # Errors
    /// Storage failures.
    pub(crate) async fn trim_events(&self, cutoff: Timestamp) -> Result<usize> {
        self.backend.trim_events(cutoff).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{session_at, T0};

    /// A bus holding, pending, a `session.renewed` event for each of `sessions` in turn, with
    /// ids from 1.
    fn bus_with_pending(sessions: &[&Session]) -> EventBus {
        let bus = EventBus::new(0, Arc::new(StoreMetrics::new()));
        let mut log = EventLog::new(1);
        for session in sessions {
            log.session(T0, EventKind::SessionRenewed, session);
        }
        bus.enqueue(log.finish());
        bus
    }

    /// The ids `live` has ready now, and whether it has ended.
    async fn ready_ids(live: &mut LiveEvents) -> (Vec<u64>, bool) {
        let mut ids = Vec::new();
        loop {
            let next = tokio::time::timeout(std::time::Duration::from_millis(20), live.recv());
            match next.await {
                Ok(Some(event)) => ids.push(event.id),
                Ok(None) => return (ids, true),
                Err(_) => return (ids, false),
            }
        }
    }

    #[tokio::test]
    async fn a_subscriber_gets_its_own_durable_events_once_each_in_order() {
        let (a, b) = (session_at(T0, 30, 5), session_at(T0, 30, 5));
        let bus = bus_with_pending(&[&a, &b, &a, &a, &b]);
        let mut live = bus.subscribe(EventFilter::Session(a.id), 16).events;
        bus.publish_through(3);
        assert_eq!(ready_ids(&mut live).await, (vec![1, 3], false));
        // Not durable yet: nothing.
        assert_eq!(ready_ids(&mut live).await, (vec![], false));
        bus.publish_through(5);
        assert_eq!(ready_ids(&mut live).await, (vec![4], false));
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_its_capacity_is_cut_off_after_what_it_was_given() {
        let a = session_at(T0, 30, 5);
        let bus = bus_with_pending(&[&a, &a, &a, &a]);
        let mut live = bus.subscribe(EventFilter::Session(a.id), 3).events;
        bus.publish_through(2);
        bus.publish_through(4);
        assert_eq!(ready_ids(&mut live).await, (vec![1, 2], true));
    }

    #[tokio::test]
    async fn events_taken_free_room_in_a_subscribers_capacity() {
        let a = session_at(T0, 30, 5);
        let bus = bus_with_pending(&[&a, &a, &a, &a]);
        let mut live = bus.subscribe(EventFilter::Session(a.id), 3).events;
        bus.publish_through(2);
        assert_eq!(ready_ids(&mut live).await, (vec![1, 2], false));
        bus.publish_through(4);
        assert_eq!(ready_ids(&mut live).await, (vec![3, 4], false));
    }
}
