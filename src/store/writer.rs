//! The write path. Every write runs on one writer thread, which takes all the writes waiting,
//! runs them in one sled transaction, makes that durable with one flush and one fdatasync,
//! publishes their events, and only then answers each writer.
//!
//! Why one transaction per batch: sled 0.34 serializes transactions and rolls its I/O buffer
//! twice in each, a fixed cost that dominated a one-write transaction. Why not
//! `flush_async`: with sled 0.34.7 it deadlocks once 7 or more callers await it at once. Why
//! the extra fdatasync: sled's flush ends in `sync_file_range`, which neither flushes the
//! drive's write cache nor the file's size metadata, so it does not survive power loss.

use std::cell::RefCell;
use std::fs::File;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};
use tokio::sync::oneshot;

use super::events::{EventBus, EventLog};
use super::{Failure, TxResult};
use crate::domain::{Event, SessionError};
use crate::error::{Error, Result};

/// Most writes one transaction takes: bounds how long a write waits behind others.
const MAX_BATCH: usize = 128;

/// A batch slower than this is logged, with where its time went.
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(100);

/// Every tree a write may change.
#[derive(Clone)]
pub(super) struct WriteTrees {
    pub(super) sessions: Tree,
    pub(super) messages: Tree,
    pub(super) message_locations: Tree,
    pub(super) children: Tree,
    pub(super) user_sessions: Tree,
    pub(super) agent_sessions: Tree,
    pub(super) expirations: Tree,
    pub(super) warnings: Tree,
    pub(super) counters: Tree,
    pub(super) purges: Tree,
    pub(super) events: Tree,
    pub(super) event_index: Tree,
}

/// The trees of [`WriteTrees`] inside the batch transaction.
pub(super) struct WriteTx<'a> {
    pub(super) sessions: &'a TransactionalTree,
    pub(super) messages: &'a TransactionalTree,
    pub(super) message_locations: &'a TransactionalTree,
    pub(super) children: &'a TransactionalTree,
    pub(super) user_sessions: &'a TransactionalTree,
    pub(super) agent_sessions: &'a TransactionalTree,
    pub(super) expirations: &'a TransactionalTree,
    pub(super) warnings: &'a TransactionalTree,
    pub(super) counters: &'a TransactionalTree,
    pub(super) purges: &'a TransactionalTree,
    events: &'a TransactionalTree,
    event_index: &'a TransactionalTree,
}

impl<'a> WriteTx<'a> {
    /// A log for the events of one write, numbered from `first_id`.
    pub(super) fn event_log(&self, first_id: u64) -> EventLog<'a> {
        EventLog::new(self.events, self.event_index, first_id)
    }
}

/// One write: runs inside a batch transaction, given the first free event id, and returns
/// its result and the events it recorded. It may run more than once (when another write of
/// its batch is refused, the batch runs again without that one), so it must only change the
/// store through the transaction.
pub(super) type Work<T> =
    Box<dyn Fn(&WriteTx<'_>, u64) -> TxResult<(T, Vec<Event>)> + Send + 'static>;

type Answer<T> = Result<Result<T, SessionError>>;

/// A queued write, its outcome once settled, and where to send the answer.
struct Pending<T> {
    work: Work<T>,
    outcome: RefCell<Option<Result<T, SessionError>>>,
    reply: oneshot::Sender<Answer<T>>,
}

/// A queued write of any result type.
trait Job: Send {
    /// Runs the write in the batch transaction and keeps its result.
    fn run(&self, tx: &WriteTx<'_>, first_event_id: u64) -> TxResult<Vec<Event>>;
    /// Settles the write as refused: it changes nothing.
    fn refuse(&self, refusal: SessionError);
    /// Answers the writer: its outcome once `durable` succeeded, else the failure.
    fn answer(self: Box<Self>, durable: &Result<(), String>);
    /// Answers the writer with a failure of its own.
    fn fail(self: Box<Self>, error: Error);
}

impl<T: Send> Job for Pending<T> {
    fn run(&self, tx: &WriteTx<'_>, first_event_id: u64) -> TxResult<Vec<Event>> {
        let (value, events) = (self.work)(tx, first_event_id)?;
        *self.outcome.borrow_mut() = Some(Ok(value));
        Ok(events)
    }

    fn refuse(&self, refusal: SessionError) {
        *self.outcome.borrow_mut() = Some(Err(refusal));
    }

    fn answer(self: Box<Self>, durable: &Result<(), String>) {
        let answer = match (durable, self.outcome.into_inner()) {
            (Err(error), _) => Err(Error::Flush(error.clone())),
            (Ok(()), Some(outcome)) => Ok(outcome),
            (Ok(()), None) => Err(Error::corrupt("a write was never run")),
        };
        // The writer may have stopped waiting (its request was dropped); nothing to do then.
        let _ = self.reply.send(answer);
    }

    fn fail(self: Box<Self>, error: Error) {
        let _ = self.reply.send(Err(error));
    }
}

/// Handle on the writer thread. Dropping it stops the thread and waits for it, so the
/// store's files are released when the last `Store` handle goes.
pub(super) struct Writer {
    /// `None` only while dropping: closing the channel is what stops the thread.
    queue: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<thread::JoinHandle<()>>,
    db: sled::Db,
    log: Arc<File>,
    bus: Arc<EventBus>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// Starts the writer thread for the store in `path`; event ids continue from
    /// `next_event_id`.
    pub(super) fn start(
        db: sled::Db,
        path: &Path,
        trees: WriteTrees,
        bus: Arc<EventBus>,
        next_event_id: u64,
    ) -> Result<Writer> {
        // sled keeps its whole log in the file `db`. Values stay far below sled's blob
        // threshold (a quarter segment, 128 KiB), so no separate blob files hold data.
        let log = Arc::new(File::open(path.join("db"))?);
        // A new store's files must also be findable after power loss: sync their directory.
        File::open(path)?.sync_all()?;
        let (queue, waiting) = mpsc::channel::<Box<dyn Job>>();
        let (thread_db, thread_log, thread_bus) = (db.clone(), log.clone(), bus.clone());
        let thread = thread::Builder::new()
            .name("sessiond-writer".into())
            .spawn(move || {
                let mut next_event_id = next_event_id;
                while let Ok(first) = waiting.recv() {
                    let batch: Vec<Box<dyn Job>> = std::iter::once(first)
                        .chain(waiting.try_iter().take(MAX_BATCH - 1))
                        .collect();
                    let started = std::time::Instant::now();
                    let writes = batch.len();
                    let batch = commit(&trees, &thread_bus, &mut next_event_id, batch);
                    let committed = started.elapsed();
                    let durable = sync(&thread_db, &thread_log, &thread_bus)
                        .map_err(|error| error.to_string());
                    if let Err(error) = &durable {
                        tracing::error!(%error, "flush to disk failed");
                    }
                    if started.elapsed() >= SLOW_BATCH {
                        tracing::warn!(
                            writes,
                            ?committed,
                            synced = ?started.elapsed() - committed,
                            "slow write batch"
                        );
                    }
                    for job in batch {
                        job.answer(&durable);
                    }
                }
            })?;
        Ok(Writer {
            queue: Some(queue),
            thread: Some(thread),
            db,
            log,
            bus,
        })
    }

    /// Runs `work` in the next batch; answers once it is on disk (or was refused).
    pub(super) async fn write<T: Send + 'static>(&self, work: Work<T>) -> Answer<T> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending {
            work,
            outcome: RefCell::new(None),
            reply,
        });
        let stopped = || Error::Flush("the writer has stopped".into());
        self.queue
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Flushes and syncs on the calling thread.
    pub(super) fn flush_now(&self) -> Result<()> {
        sync(&self.db, &self.log, &self.bus).map_err(|e| Error::Flush(e.to_string()))
    }
}

/// Runs the batch in one transaction. A write that is refused or fails is settled and the
/// transaction runs again without it, so no write sees another's uncommitted changes that
/// end up discarded. Returns the writes to answer after the flush.
fn commit(
    trees: &WriteTrees,
    bus: &EventBus,
    next_event_id: &mut u64,
    batch: Vec<Box<dyn Job>>,
) -> Vec<Box<dyn Job>> {
    let mut batch: Vec<Option<Box<dyn Job>>> = batch.into_iter().map(Some).collect();
    // Refused writes, answered after the flush too: a refusal may rest on this batch's writes.
    let mut refused = Vec::new();
    let all = (
        &trees.sessions,
        &trees.messages,
        &trees.message_locations,
        &trees.children,
        &trees.user_sessions,
        &trees.agent_sessions,
        &trees.expirations,
        &trees.warnings,
        &trees.counters,
        &trees.purges,
        &trees.events,
        &trees.event_index,
    );
    loop {
        let outcome = all.transaction(
            |(
                sessions,
                messages,
                message_locations,
                children,
                user_sessions,
                agent_sessions,
                expirations,
                warnings,
                counters,
                purges,
                events,
                event_index,
            )| {
                let tx = WriteTx {
                    sessions,
                    messages,
                    message_locations,
                    children,
                    user_sessions,
                    agent_sessions,
                    expirations,
                    warnings,
                    counters,
                    purges,
                    events,
                    event_index,
                };
                let mut next_id = *next_event_id;
                let mut written = Vec::new();
                for (index, job) in batch.iter().enumerate() {
                    let Some(job) = job else { continue };
                    match job.run(&tx, next_id) {
                        Ok(mut events) => {
                            next_id += events.len() as u64;
                            written.append(&mut events);
                        }
                        Err(ConflictableTransactionError::Abort(failure)) => {
                            return Err(ConflictableTransactionError::Abort((index, failure)))
                        }
                        Err(ConflictableTransactionError::Conflict) => {
                            return Err(ConflictableTransactionError::Conflict)
                        }
                        Err(ConflictableTransactionError::Storage(error)) => {
                            return Err(ConflictableTransactionError::Storage(error))
                        }
                    }
                }
                Ok((written, next_id))
            },
        );
        match outcome {
            Ok((written, next_id)) => {
                *next_event_id = next_id;
                bus.enqueue(written);
                return batch.into_iter().flatten().chain(refused).collect();
            }
            Err(TransactionError::Abort((index, Failure::Refused(refusal)))) => {
                if let Some(job) = batch[index].take() {
                    job.refuse(refusal);
                    refused.push(job);
                }
            }
            Err(TransactionError::Abort((index, Failure::Broken(error)))) => {
                if let Some(job) = batch[index].take() {
                    job.fail(error);
                }
            }
            Err(TransactionError::Storage(error)) => {
                let error = Error::from(error);
                for job in batch.into_iter().flatten().chain(refused) {
                    job.fail(Error::Flush(error.to_string()));
                }
                return Vec::new();
            }
        }
    }
}

/// Flushes, syncs, then publishes the events the flush made durable.
fn sync(db: &sled::Db, log: &File, bus: &EventBus) -> Result<()> {
    // Read before flushing: every event committed by now is covered by this flush.
    let durable_through = bus.committed_through();
    db.flush()?;
    log.sync_data()?;
    bus.publish_through(durable_through);
    Ok(())
}
