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
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::oneshot;

use super::engine::{Engine, EngineSlot, WriteTx};
use super::keys;
use crate::domain::{Event, SessionError};
use crate::error::{Error, Result};
use crate::store::events::EventBus;
use crate::store::write::{Answer, Failure, Job, TxResult, WriterInbox, WriterQueue};
use crate::store::StoreMetrics;

/// Most writes one transaction takes: bounds how long a write waits behind others.
const MAX_BATCH: usize = 128;

/// A batch slower than this is logged, with where its time went.
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(100);

/// A write of the engine's own (a purge, a trim): runs over the trees themselves, records
/// no events and refuses nothing.
pub(super) struct Chore {
    work: ChoreWork,
    reply: oneshot::Sender<Answer<()>>,
}

type ChoreWork = Box<dyn Fn(&WriteTx<'_>) -> TxResult<()> + Send>;

impl Chore {
    /// A chore, and where its answer arrives once it is durable.
    pub(super) fn new(work: ChoreWork) -> (Chore, oneshot::Receiver<Answer<()>>) {
        let (reply, answer) = oneshot::channel();
        (Chore { work, reply }, answer)
    }
}

/// What the writer thread runs: the store's writes, and the engine's chores.
enum Queued {
    Write(Box<dyn Job>),
    Chore(Chore),
}

impl Queued {
    fn run(&self, tx: &WriteTx<'_>, first_event_id: u64) -> TxResult<Vec<Event>> {
        match self {
            Queued::Write(job) => job.run(tx, first_event_id),
            Queued::Chore(chore) => (chore.work)(tx).map(|()| Vec::new()),
        }
    }

    fn refuse(&self, refusal: SessionError) {
        match self {
            Queued::Write(job) => job.refuse(refusal),
            // A chore refuses nothing; answered after the commit as it is.
            Queued::Chore(_) => {}
        }
    }

    fn answer(self, durable: &Result<(), Arc<Error>>) {
        match self {
            Queued::Write(job) => job.answer(durable),
            Queued::Chore(chore) => {
                let answer = durable
                    .as_ref()
                    .map(|()| Ok(()))
                    .map_err(|error| Error::Flush(error.clone()));
                let _ = chore.reply.send(answer);
            }
        }
    }

    fn fail(self, error: Error) {
        match self {
            Queued::Write(job) => job.fail(error),
            Queued::Chore(chore) => {
                let _ = chore.reply.send(Err(error));
            }
        }
    }
}

/// Handle on the writer thread. Dropping it stops the thread and waits for it, so the
/// store's files are released when the last `Store` handle goes.
pub(super) struct Writer {
    queue: WriterQueue<Queued>,
    engines: Arc<EngineSlot>,
    bus: Arc<EventBus>,
}

/// While writes are refused, how often the writer checks whether the disk takes them again.
const RESTORE_INTERVAL: Duration = Duration::from_secs(1);

impl Writer {
    /// Starts the writer thread for the store in `path`; event ids continue from
    /// `next_event_id`.
    pub(super) fn start(
        engines: Arc<EngineSlot>,
        path: &Path,
        bus: Arc<EventBus>,
        next_event_id: u64,
        metrics: Arc<StoreMetrics>,
    ) -> Result<Writer> {
        // A new store's files must also be findable after power loss: sync their directory.
        File::open(path)?.sync_all()?;
        let mut thread_state = WriterThread {
            engines: engines.clone(),
            bus: bus.clone(),
            next_event_id,
            last_restore: None,
            metrics: metrics.clone(),
        };
        let queue = WriterQueue::start(metrics, move |inbox| thread_state.run(&inbox))?;
        Ok(Writer {
            queue,
            engines,
            bus,
        })
    }

    /// Queues a write for the next batch; the job is answered once it is durable.
    pub(super) fn submit(&self, job: Box<dyn Job>) -> Result<()> {
        self.queue.send(Queued::Write(job))
    }

    /// Queues a chore for the next batch.
    pub(super) fn submit_chore(&self, chore: Chore) -> Result<()> {
        self.queue.send(Queued::Chore(chore))
    }

    /// Flushes and syncs on the calling thread.
    pub(super) fn flush_now(&self) -> Result<()> {
        sync(&*self.engines.engine()?, &self.bus).map_err(|e| Error::Flush(Arc::new(e)))
    }
}

/// The writer thread's own state.
struct WriterThread {
    engines: Arc<EngineSlot>,
    bus: Arc<EventBus>,
    next_event_id: u64,
    /// When writes were refused and the writer last checked whether the disk takes them.
    last_restore: Option<Instant>,
    metrics: Arc<StoreMetrics>,
}

impl WriterThread {
    fn run(&mut self, inbox: &WriterInbox<Queued>) {
        loop {
            // While writes are refused, wake up to check whether the disk takes them again.
            let patience = self.engines.degraded().map(|_| RESTORE_INTERVAL);
            let Ok(batch) = inbox.next_batch(patience, MAX_BATCH) else {
                return;
            };
            if let Some(reason) = self.refusal() {
                for job in batch {
                    job.fail(Error::Degraded(reason.clone()));
                }
                continue;
            }
            if !batch.is_empty() {
                self.write(batch);
            }
        }
    }

    /// Why writes are refused now, if they are. While they are, checks (at most once a
    /// [`RESTORE_INTERVAL`]) whether the disk takes them again.
    fn refusal(&mut self) -> Option<String> {
        let reason = self.engines.degraded()?;
        if self
            .last_restore
            .is_some_and(|last| last.elapsed() < RESTORE_INTERVAL)
        {
            return Some(reason);
        }
        self.last_restore = Some(Instant::now());
        if self.engines.restore() {
            self.last_restore = None;
            if let Ok(engine) = self.engines.engine() {
                self.continue_ids_of(&engine);
            }
            return None;
        }
        self.engines.degraded()
    }

    /// Commits the batch, makes it durable, and answers each write.
    fn write(&mut self, batch: Vec<Queued>) {
        let engine = match self.engines.engine() {
            Ok(engine) => engine,
            Err(error) => {
                let reason = match error {
                    Error::Degraded(reason) => reason,
                    other => other.to_string(),
                };
                for job in batch {
                    job.fail(Error::Degraded(reason.clone()));
                }
                return;
            }
        };
        let started = Instant::now();
        let writes = batch.len();
        let first_event_id = self.next_event_id;
        let committed = commit(
            &engine.batch_trees,
            &self.bus,
            &mut self.next_event_id,
            batch,
        );
        let elapsed = started.elapsed();
        self.metrics.batch_writes.observe(writes as f64);
        self.metrics.commit_seconds.observe(elapsed.as_secs_f64());
        let durable = match committed.failure {
            Some(error) => Err(error),
            None if committed.changed => {
                let synced = sync(&engine, &self.bus);
                self.metrics
                    .sync_seconds
                    .observe((started.elapsed() - elapsed).as_secs_f64());
                synced
            }
            None => Ok(()),
        };
        drop(engine);
        let durable = durable.or_else(|error| self.recover(first_event_id, error));
        // Info, not a warning: a slow sync says the disk was busy, which is the machine's
        // state rather than a fault to act on.
        if started.elapsed() >= SLOW_BATCH {
            tracing::info!(
                writes,
                committed = ?elapsed,
                synced = ?started.elapsed() - elapsed,
                "slow write batch"
            );
        }
        let durable = durable.map_err(Arc::new);
        for job in committed.to_answer {
            job.answer(&durable);
        }
    }

    /// After the batch from `first_event_id` failed to reach the disk: reopens the engine
    /// (writes are refused from now on) and reads back what the disk kept. sled keeps a
    /// transaction whole or not at all, so the batch is either there in full — then it is
    /// durable once synced, and acknowledged — or not there at all, and refused. After a
    /// failed sync the batch is refused either way: what the reopened engine reads may be
    /// the page cache's copy, which the disk did not take.
    fn recover(&mut self, first_event_id: u64, failure: Error) -> Result<()> {
        let Some(engine) = self.engines.reopen_after(&failure) else {
            self.bus.discard_from(first_event_id);
            return Err(failure);
        };
        let kept = engine
            .trees
            .events
            .range(keys::event(first_event_id)..)
            .next()
            .is_some_and(|found| found.is_ok());
        self.continue_ids_of(&engine);
        let synced_before = !matches!(failure, Error::Flush(_));
        if kept && synced_before && sync(&engine, &self.bus).is_ok() {
            tracing::info!("the failed write batch was kept whole; it is acknowledged");
            return Ok(());
        }
        self.bus.discard_from(first_event_id);
        Err(failure)
    }

    /// Event ids go on after every stored one: an id that could name a stored record is
    /// never used again.
    fn continue_ids_of(&mut self, engine: &Engine) {
        if let Ok(stored_next) = super::event_records::next_event_id(&engine.trees.events) {
            self.next_event_id = self.next_event_id.max(stored_next);
        }
    }
}

/// What [`commit`] did with a batch.
struct Committed {
    /// The writes to answer after the flush (those that failed are answered already).
    to_answer: Vec<Queued>,
    /// Whether the transaction changed anything (else there is nothing to flush).
    changed: bool,
    /// The storage error the transaction failed with: whether the disk kept the batch is
    /// for recovery to find out.
    failure: Option<Error>,
}

/// Runs the batch in one transaction. A refused write is settled and the others go on (a
/// write refuses before it changes anything). A write that fails or panics is answered
/// with its error and the transaction runs again without it, so no write sees another's
/// uncommitted changes that end up discarded.
fn commit(
    trees: &[sled::Tree],
    bus: &EventBus,
    next_event_id: &mut u64,
    batch: Vec<Queued>,
) -> Committed {
    let mut batch: Vec<Option<Queued>> = batch.into_iter().map(Some).collect();
    // The events and next id of the transaction's last whole run: what sled commits, or
    // fails to commit and may still have kept (then recovery publishes them).
    let last_run = RefCell::new((Vec::new(), *next_event_id));
    loop {
        let outcome = trees.transaction(|views| {
            *last_run.borrow_mut() = (Vec::new(), *next_event_id);
            let tx = WriteTx::new(views, *next_event_id);
            let mut next_id = *next_event_id;
            let mut written = Vec::new();
            let mut changed = false;
            for (index, job) in batch.iter().enumerate() {
                let Some(job) = job else { continue };
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    job.run(&tx, next_id)
                }))
                .unwrap_or_else(|panic| {
                    Err(Failure::Broken(Error::Panicked(
                        crate::error::panic_message(panic.as_ref()),
                    )))
                });
                match ran {
                    Ok(mut events) => {
                        changed = true;
                        next_id += events.len() as u64;
                        written.append(&mut events);
                    }
                    Err(Failure::Refused(refusal)) => {
                        job.refuse(refusal);
                    }
                    Err(Failure::Broken(error)) => {
                        return Err(ConflictableTransactionError::Abort(BatchAbort::Write(
                            index, error,
                        )))
                    }
                    Err(Failure::Storage(error)) => {
                        return Err(ConflictableTransactionError::Abort(BatchAbort::Storage(
                            error,
                        )))
                    }
                    Err(Failure::Conflict) => return Err(ConflictableTransactionError::Conflict),
                }
            }
            *last_run.borrow_mut() = (written, next_id);
            Ok(changed)
        });
        match outcome {
            Ok(changed) => {
                let (written, next_id) = last_run.take();
                *next_event_id = next_id;
                bus.enqueue(written);
                let to_answer = batch.into_iter().flatten().collect();
                return Committed {
                    to_answer,
                    changed,
                    failure: None,
                };
            }
            Err(TransactionError::Abort(BatchAbort::Write(index, error))) => {
                if let Some(job) = batch[index].take() {
                    job.fail(error);
                }
            }
            Err(TransactionError::Abort(BatchAbort::Storage(error))) => {
                return failed_batch(batch, bus, next_event_id, &last_run, error);
            }
            Err(TransactionError::Storage(error)) => {
                return failed_batch(batch, bus, next_event_id, &last_run, error.into());
            }
        }
    }
}

/// Why a batch's transaction was given up.
enum BatchAbort {
    /// The write at this index failed alone: the batch runs again without it.
    Write(usize, Error),
    /// The engine failed: the whole batch fails.
    Storage(Error),
}

/// A batch whose transaction failed in the engine: its last run's events are queued (if
/// the disk kept the batch, recovery publishes them) and every write waits for recovery's
/// verdict.
fn failed_batch(
    batch: Vec<Option<Queued>>,
    bus: &EventBus,
    next_event_id: &mut u64,
    last_run: &RefCell<(Vec<Event>, u64)>,
    failure: Error,
) -> Committed {
    let (written, next_id) = last_run.take();
    *next_event_id = next_id;
    bus.enqueue(written);
    Committed {
        to_answer: batch.into_iter().flatten().collect(),
        changed: true,
        failure: Some(failure),
    }
}

/// Flushes, syncs, then publishes the events the flush made durable.
fn sync(engine: &Engine, bus: &EventBus) -> Result<()> {
    // Read before flushing: every event committed by now is covered by this flush.
    let durable_through = bus.committed_through();
    engine.sync()?;
    bus.publish_through(durable_through);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use uuid::Uuid;

    use crate::domain::{EventKind, Session, SessionError};
    use crate::error::Error;
    use crate::store::sled_backend::test_support::sled_of;
    use crate::store::test_support::{
        append_texts, appended, clocked_store, created_session, session_at, temp_store,
        text_message, T0,
    };
    use crate::store::write::{Announced, Work, WriteTime};
    use crate::store::{Store, StoreOptions};

    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_goes_on() {
        let (store, _clock, _dir) = clocked_store(T0);
        let session = created_session(&store, T0).await;
        let work: Work<()> = Box::new(|_| panic!("boom"));
        let panicked = store.write(WriteTime::At(T0), work).await;
        assert!(
            matches!(panicked, Err(Error::Panicked(ref m)) if m == "boom"),
            "{panicked:?}"
        );
        assert_eq!(append_texts(&store, session.id, 2).await.len(), 2);
        assert!(store.check().unwrap().is_clean());
    }

    #[tokio::test]
    async fn refused_writes_do_not_make_the_batch_run_again() {
        let (store, _clock, _dir) = clocked_store(T0);
        let session = created_session(&store, T0).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let work: Work<Session> = Box::new(move |ctx| {
            counted.fetch_add(1, Ordering::SeqCst);
            let old = ctx.active_session(session.id)?;
            let mut new = old.clone();
            new.renew(ctx.now);
            ctx.save_session(
                Some(&old),
                new,
                &[Announced::Session(EventKind::SessionRenewed)],
            )
        });
        let update = store.write(WriteTime::At(T0), work);
        // Queued together with the update, so that they share its batch.
        let refused = futures_util::future::join_all(
            (0..50).map(|_| store.append_message(Uuid::now_v7(), text_message("x", None))),
        );
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
        assert_eq!(store.counts(T0).await.unwrap().total, 1);
        assert!(store.check().unwrap().is_clean());
    }

    #[tokio::test]
    async fn nodes_large_enough_for_blob_files_are_synced_and_reopen_clean() {
        let (store, _clock, dir) = clocked_store(T0);
        // Large values make sled write whole tree nodes to files of their own in blobs/.
        let large = format!(r#"{{"notes":"{}"}}"#, "x".repeat(10 * 1024));
        for _ in 0..40 {
            let mut session = session_at(T0, 30, 5);
            session.metadata_json = large.clone();
            store.create_session(session.clone()).await.unwrap();
            for _ in 0..3 {
                let mut new = text_message(&"é".repeat(4_000), None);
                new.metadata_json = large.clone();
                appended(&store, session.id, new).await;
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
        assert_eq!(
            *sled_of(&store)
                .engines
                .engine()
                .unwrap()
                .files
                .synced_blobs
                .lock()
                .unwrap(),
            blobs
        );
        store.close().unwrap();
        let reopened = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(reopened.counts(T0).await.unwrap().total, 40);
        assert!(reopened.check().unwrap().is_clean());
        reopened.close().unwrap();
    }
}
