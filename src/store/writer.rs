//! The write path. Every write runs on one writer thread, which takes all the writes waiting,
//! runs them in one sled transaction, makes that durable with one flush and one fdatasync,
//! publishes their events, and only then answers each writer.
//!
//! Why one transaction per batch: sled 0.34 serializes transactions and rolls its I/O buffer
//! twice in each, a fixed cost that dominated a one-write transaction. Why not
//! `flush_async`: with sled 0.34.7 it deadlocks once 7 or more callers await it at once. Why
//! the extra fdatasync: sled's flush ends in `sync_file_range`, which neither flushes the
//! drive's write cache nor the file's size metadata, so it does not survive power loss;
//! nor does sled sync the blob files it writes for large tree nodes, so the writer does.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::oneshot;

use super::events::{EventBus, EventLog};
use super::{broken, Failure, Trees, TxResult};
use crate::domain::{Event, SessionError};
use crate::error::{Error, Result};

/// Most writes one transaction takes: bounds how long a write waits behind others.
const MAX_BATCH: usize = 128;

/// A batch slower than this is logged, with where its time went.
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(100);

/// The trees of [`Trees`] inside the batch transaction.
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
    pub(super) events: &'a TransactionalTree,
    pub(super) event_index: &'a TransactionalTree,
}

impl<'a> WriteTx<'a> {
    /// A log for the events of one write, numbered from `first_id`.
    pub(super) fn event_log(&self, first_id: u64) -> EventLog<'a> {
        EventLog::new(self.events, self.event_index, first_id)
    }
}

/// One write: runs inside a batch transaction, given the first free event id, and returns
/// its result and the events it recorded. It must decide to refuse before it changes
/// anything: a refusal is answered as it is while the rest of the batch commits. It may run
/// more than once (when another write of its batch fails, the batch runs again without that
/// one), so it must only change the store through the transaction.
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
    files: Arc<StoreFiles>,
    bus: Arc<EventBus>,
}

/// The files a flush must sync for the data to survive power loss.
struct StoreFiles {
    /// sled's log: every write goes there.
    log: File,
    /// sled writes a tree node larger than a quarter segment (128 KiB) to a file of its own
    /// here, and never syncs it.
    blobs: PathBuf,
    /// Blob files already synced (their contents never change).
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl StoreFiles {
    fn sync(&self) -> Result<()> {
        self.log.sync_data()?;
        let listing = match std::fs::read_dir(&self.blobs) {
            Ok(listing) => listing,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut present = HashSet::new();
        let mut new_files = false;
        for entry in listing {
            let name = entry?.file_name();
            if !synced.contains(&name) {
                File::open(self.blobs.join(&name))?.sync_all()?;
                new_files = true;
            }
            present.insert(name);
        }
        if new_files {
            File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
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
        trees: Trees,
        bus: Arc<EventBus>,
        next_event_id: u64,
    ) -> Result<Writer> {
        let files = Arc::new(StoreFiles {
            log: File::open(path.join("db"))?,
            blobs: path.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        });
        // A new store's files must also be findable after power loss: sync their directory.
        File::open(path)?.sync_all()?;
        let (queue, waiting) = mpsc::channel::<Box<dyn Job>>();
        let (thread_db, thread_files, thread_bus) = (db.clone(), files.clone(), bus.clone());
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
                    let durable = if batch.changed {
                        sync(&thread_db, &thread_files, &thread_bus)
                            .map_err(|error| error.to_string())
                    } else {
                        Ok(())
                    };
                    if let Err(error) = &durable {
                        tracing::error!(%error, "flush to disk failed");
                    }
                    // Info, not a warning: a slow sync says the disk was busy, which
                    // is the machine's state rather than a fault to act on.
                    if started.elapsed() >= SLOW_BATCH {
                        tracing::info!(
                            writes,
                            ?committed,
                            synced = ?started.elapsed() - committed,
                            "slow write batch"
                        );
                    }
                    for job in batch.to_answer {
                        job.answer(&durable);
                    }
                }
            })?;
        Ok(Writer {
            queue: Some(queue),
            thread: Some(thread),
            db,
            files,
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
        sync(&self.db, &self.files, &self.bus).map_err(|e| Error::Flush(e.to_string()))
    }
}

/// What [`commit`] did with a batch.
struct Committed {
    /// The writes to answer after the flush (those that failed are answered already).
    to_answer: Vec<Box<dyn Job>>,
    /// Whether the transaction changed anything (else there is nothing to flush).
    changed: bool,
}

/// Runs the batch in one transaction. A refused write is settled and the others go on (a
/// write refuses before it changes anything). A write that fails or panics is answered
/// with its error and the transaction runs again without it, so no write sees another's
/// uncommitted changes that end up discarded.
fn commit(
    trees: &Trees,
    bus: &EventBus,
    next_event_id: &mut u64,
    batch: Vec<Box<dyn Job>>,
) -> Committed {
    let mut batch: Vec<Option<Box<dyn Job>>> = batch.into_iter().map(Some).collect();
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
                let mut changed = false;
                for (index, job) in batch.iter().enumerate() {
                    let Some(job) = job else { continue };
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job.run(&tx, next_id)
                    }))
                    .unwrap_or_else(|panic| {
                        Err(broken(Error::Panicked(crate::error::panic_message(
                            panic.as_ref(),
                        ))))
                    });
                    match ran {
                        Ok(mut events) => {
                            changed = true;
                            next_id += events.len() as u64;
                            written.append(&mut events);
                        }
                        Err(ConflictableTransactionError::Abort(Failure::Refused(refusal))) => {
                            job.refuse(refusal);
                        }
                        Err(ConflictableTransactionError::Abort(Failure::Broken(error))) => {
                            return Err(ConflictableTransactionError::Abort((index, error)))
                        }
                        Err(ConflictableTransactionError::Conflict) => {
                            return Err(ConflictableTransactionError::Conflict)
                        }
                        Err(ConflictableTransactionError::Storage(error)) => {
                            return Err(ConflictableTransactionError::Storage(error))
                        }
                    }
                }
                Ok((written, next_id, changed))
            },
        );
        match outcome {
            Ok((written, next_id, changed)) => {
                *next_event_id = next_id;
                bus.enqueue(written);
                let to_answer = batch.into_iter().flatten().collect();
                return Committed { to_answer, changed };
            }
            Err(TransactionError::Abort((index, error))) => {
                if let Some(job) = batch[index].take() {
                    job.fail(error);
                }
            }
            Err(TransactionError::Storage(error)) => {
                // sled may have applied part of the batch before failing: never reuse an id
                // that could already name a stored record.
                if let Ok(stored_next) = super::events::next_event_id(&trees.events) {
                    *next_event_id = (*next_event_id).max(stored_next);
                }
                let error = Error::from(error);
                for job in batch.into_iter().flatten() {
                    job.fail(Error::Flush(error.to_string()));
                }
                return Committed {
                    to_answer: Vec::new(),
                    changed: false,
                };
            }
        }
    }
}

/// Flushes, syncs, then publishes the events the flush made durable.
fn sync(db: &sled::Db, files: &StoreFiles, bus: &EventBus) -> Result<()> {
    // Read before flushing: every event committed by now is covered by this flush.
    let durable_through = bus.committed_through();
    db.flush()?;
    files.sync()?;
    bus.publish_through(durable_through);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use uuid::Uuid;

    use crate::domain::{EventKind, ManualClock, SessionError, Timestamp};
    use crate::error::Error;
    use crate::store::test_support::{
        append_texts, appended, created_session, session_at, temp_store, text_message,
    };
    use crate::store::{Store, StoreOptions};

    const T0: Timestamp = Timestamp::from_millis(1_795_255_200_000);

    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_goes_on() {
        let (store, _dir) = temp_store();
        let session = created_session(&store, T0).await;
        let clock = Arc::new(ManualClock::new(T0));
        let panicked = store
            .update_session(session.id, clock.clone(), |_, _| panic!("boom"))
            .await;
        assert!(
            matches!(panicked, Err(Error::Panicked(ref m)) if m == "boom"),
            "{panicked:?}"
        );
        assert_eq!(append_texts(&store, session.id, &clock, 2).await.len(), 2);
        assert!(store.check().unwrap().is_clean());
    }

    #[tokio::test]
    async fn refused_writes_do_not_make_the_batch_run_again() {
        let (store, _dir) = temp_store();
        let session = created_session(&store, T0).await;
        let clock = Arc::new(ManualClock::new(T0));
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let update = store.update_session(session.id, clock.clone(), move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(Some(EventKind::SessionRenewed))
        });
        // Queued together with the update, so that they share its batch.
        let refused =
            futures_util::future::join_all((0..50).map(|_| {
                store.append_message(Uuid::now_v7(), text_message("x", None), clock.clone())
            }));
        let (updated, refused) = tokio::join!(update, refused);
        assert!(updated.unwrap().is_ok());
        assert!(refused
            .into_iter()
            .all(|r| matches!(r, Ok(Err(SessionError::NotFound(_))))));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_import_over_a_stored_session_is_refused() {
        let (store, _dir) = temp_store();
        let session = created_session(&store, T0).await;
        let again = store
            .import_session(session.clone(), vec![text_message("m", None)])
            .await
            .unwrap();
        assert!(matches!(again, Err(SessionError::AlreadyExists(id)) if id == session.id));
        assert_eq!(store.counts(T0).unwrap().total, 1);
        assert!(store.check().unwrap().is_clean());
    }

    #[tokio::test]
    async fn nodes_large_enough_for_blob_files_are_synced_and_reopen_clean() {
        let (store, dir) = temp_store();
        // Large values make sled write whole tree nodes to files of their own in blobs/.
        let large = format!(r#"{{"notes":"{}"}}"#, "x".repeat(10 * 1024));
        let clock = Arc::new(ManualClock::new(T0));
        for _ in 0..40 {
            let mut session = session_at(T0, 30, 5);
            session.metadata_json = large.clone();
            store.create_session(session.clone()).await.unwrap();
            for _ in 0..3 {
                let mut new = text_message(&"é".repeat(4_000), None);
                new.metadata_json = large.clone();
                appended(&store, session.id, new, &clock).await;
            }
        }
        store.flush().unwrap();
        let blobs: std::collections::HashSet<_> = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert!(
            !blobs.is_empty(),
            "no blob file was written; the test needs larger values"
        );
        // Every blob file present after the flush was synced by it.
        assert_eq!(*store.writer.files.synced_blobs.lock().unwrap(), blobs);
        store.close().unwrap();
        let reopened = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(reopened.counts(T0).unwrap().total, 40);
        assert!(reopened.check().unwrap().is_clean());
        reopened.close().unwrap();
    }
}
