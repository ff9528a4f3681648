//! What every write is made of, whatever the engine: the operations a write may do inside
//! its transaction ([`WriteOps`], which an engine implements), the context one write works
//! in ([`WriteCtx`]: the transaction, the write's `now`, its event log), and the queued
//! write an engine runs and answers ([`Job`]).
//!
//! The rules every write shares are here, once: a change to a session goes through
//! [`WriteCtx::save_session`], which marks the lifecycle notices that fall due and records
//! the events that announce the change; the engine numbers, stores and publishes them.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use tokio::sync::oneshot;
use uuid::Uuid;

use super::events::EventLog;
use super::{Store, StoreMetrics};
use crate::domain::{Clock, Event, EventKind, Message, Session, SessionError, Timestamp};
use crate::error::{Error, Result};

/// Why a write stopped before the end of its transaction.
pub(super) enum Failure {
    /// The request was refused (a missing session, a stranger as author…): the write
    /// changed nothing and the rest of its batch goes on.
    Refused(SessionError),
    /// The write cannot be done (an undecodable record, a broken invariant, a panic): it
    /// fails alone and the rest of its batch goes on without it.
    Broken(Error),
    /// The engine failed: the whole batch fails, and whether the disk kept it is for the
    /// engine to find out.
    Storage(Error),
    /// The engine's transaction met a concurrent one and must run again.
    Conflict,
}

/// The result of an operation inside a write's transaction.
pub(super) type TxResult<T> = std::result::Result<T, Failure>;

pub(super) fn refuse<T>(error: SessionError) -> TxResult<T> {
    Err(Failure::Refused(error))
}

pub(super) fn broken(error: Error) -> Failure {
    Failure::Broken(error)
}

/// Settles a write that refuses nothing: a refusal there would be a broken invariant.
pub(super) fn settle_unrefused<T>(outcome: std::result::Result<T, SessionError>) -> Result<T> {
    outcome.map_err(|refused| {
        Error::corrupt(format!("a write that refuses nothing refused: {refused}"))
    })
}

/// The operations of one write, inside its batch's transaction. An engine implements them
/// over its own transaction, and its contract is:
/// - every operation is part of the one transaction of the write's batch: the batch is
///   applied whole or not at all, and is answered only once it is durable;
/// - each operation keeps the engine's indexes (deadlines, owners, counts, replies, the
///   event index) in step with the record it changes, so a read never sees half a write;
/// - operations read their own transaction's writes;
/// - a storage failure is [`Failure::Storage`] (or [`Failure::Conflict`]), never a
///   refusal; a record that cannot be decoded is [`Failure::Broken`].
pub(super) trait WriteOps {
    /// The stored session, expired or not.
    fn session(&self, id: Uuid) -> TxResult<Option<Session>>;

    /// Whether `id` names a stored session or one whose deletion is still under way.
    fn session_id_taken(&self, id: Uuid) -> TxResult<bool>;

    /// Stores a new session, with its owner index entries and counts.
    fn insert_session(&self, session: &Session) -> TxResult<()>;

    /// Stores `new` over `old` (the same session as stored), moving its deadlines.
    fn update_session(&self, old: &Session, new: &Session) -> TxResult<()>;

    /// Removes a stored session with its index entries and counts, and its messages as
    /// every reader sees them. An engine may leave the message records themselves to
    /// [`Backend::finish_deletion`](super::backend::Backend::finish_deletion).
    fn delete_session(&self, session: &Session) -> TxResult<()>;

    /// Whether `message_id` is a message of `session_id`.
    fn message_in(&self, message_id: Uuid, session_id: Uuid) -> TxResult<bool>;

    /// Whether `message_id` names a stored message of any session (or one whose session's
    /// deletion is still under way).
    fn message_id_taken(&self, message_id: Uuid) -> TxResult<bool>;

    /// Stores a message under its session and seq, which must be new, with its id's
    /// location and its parent's reply entry.
    fn insert_message(&self, message: &Message) -> TxResult<()>;

    /// Stores the events of one write (consecutive ids, one session) and indexes them by
    /// session, agent and user.
    fn append_events(&self, events: &[Event]) -> TxResult<()>;
}

/// What one write works in: the batch's transaction, the write's time (read once, when
/// the engine first runs it) and its event log, which the engine numbers, stores and
/// publishes after the commit.
pub(super) struct WriteCtx<'t> {
    pub(super) tx: &'t dyn WriteOps,
    pub(super) now: Timestamp,
    log: EventLog,
}

/// What a write that stores a session announces, in order, before the lifecycle notices.
pub(super) enum Announced<'m> {
    Session(EventKind),
    Message(&'m Message),
}

impl WriteCtx<'_> {
    /// The stored session, refusing a missing one or one expired at the write's time.
    pub(super) fn active_session(&self, id: Uuid) -> TxResult<Session> {
        let Some(session) = self.tx.session(id)? else {
            return refuse(SessionError::NotFound(id));
        };
        match session.check_active(self.now) {
            Ok(()) => Ok(session),
            Err(refused) => refuse(refused),
        }
    }

    /// Stores `new` over `old` (`None` for a new session) with the lifecycle notices that
    /// fall due at the write's time, then records what the write announces and the
    /// notices. Every write that changes a session goes through here.
    pub(super) fn save_session(
        &mut self,
        old: Option<&Session>,
        mut new: Session,
        announced: &[Announced<'_>],
    ) -> TxResult<Session> {
        let due = new.due_notices(self.now);
        new.mark_noticed(due);
        match old {
            None => self.tx.insert_session(&new)?,
            Some(old) if *old != new => self.tx.update_session(old, &new)?,
            Some(_) => {}
        }
        for announcement in announced {
            match announcement {
                Announced::Session(kind) => self.log.session(self.now, *kind, &new),
                Announced::Message(message) => self.log.message(self.now, &new, message),
            }
        }
        self.log.notices(self.now, &new, due);
        Ok(new)
    }

    /// Records a session event at the write's time, for a write that does not store the
    /// session (its deletion).
    pub(super) fn announce(&mut self, kind: EventKind, session: &Session) {
        self.log.session(self.now, kind, session);
    }
}

/// Where a write's time comes from.
pub(super) enum WriteTime {
    /// The store's clock, read once when the engine first runs the write.
    Now,
    /// This instant (a session's creation, a deletion's announcement).
    At(Timestamp),
}

/// One write: runs inside a batch transaction, in its [`WriteCtx`]. It must decide to
/// refuse before it changes anything: a refusal is answered as it is while the rest of the
/// batch commits. It may run more than once (when another write of its batch fails, the
/// batch runs again without that one), always with the same time, so it must only change
/// the store through the transaction.
pub(super) type Work<T> = Box<dyn Fn(&mut WriteCtx<'_>) -> TxResult<T> + Send + 'static>;

/// A write's answer: storage failures outside, refusals inside.
pub(super) type Answer<T> = Result<std::result::Result<T, SessionError>>;

/// A queued write, as an engine sees it: run it in a batch transaction, then answer it.
pub(super) trait Job: Send {
    /// Runs the write in the batch transaction, its events numbered from
    /// `first_event_id`, and stores those events; keeps its result and returns its events.
    fn run(&self, tx: &dyn WriteOps, first_event_id: u64) -> TxResult<Vec<Event>>;
    /// Settles the write as refused: it changes nothing.
    fn refuse(&self, refusal: SessionError);
    /// Answers the writer: its outcome once `durable` succeeded, else the failure.
    fn answer(self: Box<Self>, durable: &Result<(), Arc<Error>>);
    /// Answers the writer with a failure of its own.
    fn fail(self: Box<Self>, error: Error);
}

/// A queued write, its time, its outcome once settled, and where to send the answer.
struct Pending<T> {
    work: Work<T>,
    clock: Arc<dyn Clock>,
    time: WriteTime,
    now: Cell<Option<Timestamp>>,
    outcome: RefCell<Option<std::result::Result<T, SessionError>>>,
    reply: oneshot::Sender<Answer<T>>,
    metrics: Arc<StoreMetrics>,
}

impl<T: Send> Job for Pending<T> {
    fn run(&self, tx: &dyn WriteOps, first_event_id: u64) -> TxResult<Vec<Event>> {
        let now = self.now.get().unwrap_or_else(|| match self.time {
            WriteTime::Now => self.clock.now(),
            WriteTime::At(at) => at,
        });
        self.now.set(Some(now));
        let mut ctx = WriteCtx {
            tx,
            now,
            log: EventLog::new(first_event_id),
        };
        let value = (self.work)(&mut ctx)?;
        let events = ctx.log.finish();
        tx.append_events(&events)?;
        *self.outcome.borrow_mut() = Some(Ok(value));
        Ok(events)
    }

    fn refuse(&self, refusal: SessionError) {
        *self.outcome.borrow_mut() = Some(Err(refusal));
    }

    fn answer(self: Box<Self>, durable: &Result<(), Arc<Error>>) {
        let answer = match (durable, self.outcome.into_inner()) {
            (Err(error), _) => {
                self.metrics.failed(error);
                Err(Error::Flush(error.clone()))
            }
            (Ok(()), Some(outcome)) => {
                if let Err(refusal) = &outcome {
                    self.metrics.refused(refusal);
                }
                Ok(outcome)
            }
            (Ok(()), None) => {
                let error = Error::corrupt("a write was never run");
                self.metrics.failed(&error);
                Err(error)
            }
        };
        // The writer may have stopped waiting (its request was dropped); nothing to do then.
        let _ = self.reply.send(answer);
    }

    fn fail(self: Box<Self>, error: Error) {
        self.metrics.failed(&error);
        let _ = self.reply.send(Err(error));
    }
}

impl Store {
    /// Runs `work` in the engine's next batch at `time`; answers once it is durable (or
    /// was refused).
    pub(super) async fn write<T: Send + 'static>(
        &self,
        time: WriteTime,
        work: Work<T>,
    ) -> Answer<T> {
        let (reply, answer) = oneshot::channel();
        self.backend
            .submit(Box::new(Pending {
                work,
                clock: self.clock.clone(),
                time,
                now: Cell::new(None),
                outcome: RefCell::new(None),
                reply,
                metrics: self.metrics.clone(),
            }))
            .inspect_err(|error| self.metrics.failed(error))?;
        answer.await.map_err(|_| Error::WriterStopped)?
    }
}

/// A writer thread and the queue that feeds it, as every engine runs its writes: counts the
/// writes waiting in it, and stops the thread (closing the queue, then waiting for it) when
/// dropped, so the store's files or connection are released with the last handle.
pub(super) struct WriterQueue<T> {
    /// `None` only while dropping: closing the channel is what stops the thread.
    queue: Option<std::sync::mpsc::Sender<T>>,
    thread: Option<std::thread::JoinHandle<()>>,
    metrics: Arc<StoreMetrics>,
}

/// The writer thread's side of a [`WriterQueue`].
pub(super) struct WriterInbox<T> {
    waiting: std::sync::mpsc::Receiver<T>,
    metrics: Arc<StoreMetrics>,
}

/// The queue was closed: the store is closing.
pub(super) struct QueueClosed;

impl<T: Send + 'static> WriterQueue<T> {
    /// Starts the thread `sessiond-writer` on `run`, which takes its writes from the inbox.
    pub(super) fn start(
        metrics: Arc<StoreMetrics>,
        run: impl FnOnce(WriterInbox<T>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (queue, waiting) = std::sync::mpsc::channel();
        let inbox = WriterInbox {
            waiting,
            metrics: metrics.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("sessiond-writer".into())
            .spawn(move || run(inbox))?;
        Ok(WriterQueue {
            queue: Some(queue),
            thread: Some(thread),
            metrics,
        })
    }

    /// Queues `item` for the writer.
    ///
    /// # Errors
    /// [`Error::WriterStopped`] once the writer has stopped.
    pub(super) fn send(&self, item: T) -> Result<()> {
        let queue = self.queue.as_ref().ok_or(Error::WriterStopped)?;
        // Counted before it is sent: the writer may take it at once.
        self.metrics.queue_depth.inc();
        queue.send(item).map_err(|_| {
            self.metrics.queue_depth.dec();
            Error::WriterStopped
        })
    }
}

impl<T> Drop for WriterQueue<T> {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<T> WriterInbox<T> {
    /// Waits for a write (at most `patience`, when given: then the batch may be empty), and
    /// takes it with every other one waiting, `max` at most.
    ///
    /// # Errors
    /// [`QueueClosed`] once every handle on the queue is gone.
    pub(super) fn next_batch(
        &self,
        patience: Option<std::time::Duration>,
        max: usize,
    ) -> std::result::Result<Vec<T>, QueueClosed> {
        use std::sync::mpsc::RecvTimeoutError;
        let first = match patience {
            Some(patience) => match self.waiting.recv_timeout(patience) {
                Ok(item) => Some(item),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Err(QueueClosed),
            },
            None => Some(self.waiting.recv().map_err(|_| QueueClosed)?),
        };
        let batch: Vec<T> = first
            .into_iter()
            .chain(self.waiting.try_iter())
            .take(max)
            .collect();
        self.metrics
            .queue_depth
            .sub(i64::try_from(batch.len()).unwrap_or(i64::MAX));
        Ok(batch)
    }
}
