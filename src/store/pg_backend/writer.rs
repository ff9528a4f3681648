//! The write path on PostgreSQL. One writer thread per node takes every write waiting, runs
//! them in one transaction (their writes sent together, one statement per table), commits
//! with synchronous commit, publishes their events, and only then answers each writer. Each statement is prepared once per connection.
//!
//! The transaction begins by locking the row of the next event id, and holds it to the
//! commit: the batches of every node commit one at a time, in the order of their ids, and
//! no two of them change the same session at once.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use super::write_ops::{self, BatchTx, Statements};
use crate::domain::Event;
use crate::error::{Error, Result};
use crate::store::events::EventBus;
use crate::store::write::{Failure, Job, WriterInbox, WriterQueue};
use crate::store::StoreMetrics;

/// Most writes one transaction takes: bounds how long a write waits behind others.
const MAX_BATCH: usize = 128;

/// How long the writer waits before connecting again after the database went away.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// Handle on the writer thread. Dropping it stops the thread and waits for it.
pub(super) struct Writer {
    queue: WriterQueue<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer; it publishes each batch's events on `bus` before answering it.
    pub(super) fn start(
        config: postgres::Config,
        bus: Arc<EventBus>,
        metrics: Arc<StoreMetrics>,
    ) -> Result<Writer> {
        let thread_metrics = metrics.clone();
        let queue = WriterQueue::start(metrics, move |inbox| {
            run(&config, &inbox, &bus, &thread_metrics);
        })?;
        Ok(Writer { queue })
    }

    pub(super) fn submit(&self, job: Box<dyn Job>) -> Result<()> {
        self.queue.send(job)
    }
}

fn run(
    config: &postgres::Config,
    jobs: &WriterInbox<Box<dyn Job>>,
    bus: &EventBus,
    metrics: &StoreMetrics,
) {
    let mut connection: Option<(postgres::Client, Statements)> = None;
    while let Ok(batch) = jobs.next_batch(None, MAX_BATCH) {
        metrics.batch_writes.observe(batch.len() as f64);
        let connected = match connection.take() {
            Some(open) if !open.0.is_closed() => Ok(open),
            _ => config
                .connect(NoTls)
                .map(|client| (client, Statements::default()))
                .map_err(super::storage),
        };
        let (mut client, statements) = match connected {
            Ok(open) => open,
            Err(error) => {
                tracing::warn!(%error, "cannot reach the database; refusing this batch of writes");
                let error = Arc::new(error);
                for job in batch {
                    job.answer(&Err(error.clone()));
                }
                thread::sleep(RECONNECT_PAUSE);
                continue;
            }
        };
        commit(&mut client, &statements, batch, bus, metrics);
        connection = Some((client, statements));
    }
}

/// Why a run of the batch's transaction was given up.
enum BatchAbort {
    /// The write at this index failed alone: the batch runs again without it.
    Write(usize, Error),
    /// The batch failed, or met a conflict and runs again.
    Batch(Failure),
}

impl From<Failure> for BatchAbort {
    fn from(failure: Failure) -> Self {
        BatchAbort::Batch(failure)
    }
}

/// Runs the batch in one transaction and answers every write of it. A write that fails or
/// panics is answered with its error and the batch runs again without it, so that no
/// write's changes are left half made; a conflict runs it again; a failure of the database
/// fails every write not yet answered.
fn commit(
    client: &mut postgres::Client,
    statements: &Statements,
    batch: Vec<Box<dyn Job>>,
    bus: &EventBus,
    metrics: &StoreMetrics,
) {
    let mut batch: Vec<Option<Box<dyn Job>>> = batch.into_iter().map(Some).collect();
    let outcome = loop {
        match run_batch(client, statements, &batch, metrics) {
            Err(BatchAbort::Batch(Failure::Conflict)) => continue,
            Err(BatchAbort::Write(index, error)) => {
                if let Some(job) = batch[index].take() {
                    job.fail(error);
                }
            }
            Err(BatchAbort::Batch(failure)) => break Err(failure),
            Ok(events) => break Ok(events),
        }
    };
    match outcome {
        Ok(events) => {
            publish(client, statements, bus, events);
            for job in batch.into_iter().flatten() {
                job.answer(&Ok(()));
            }
        }
        Err(failure) => {
            let error = Arc::new(match failure {
                Failure::Storage(error) | Failure::Broken(error) => error,
                Failure::Refused(refused) => Error::corrupt(refused.to_string()),
                Failure::Conflict => Error::corrupt("a conflict after the batch ended"),
            });
            tracing::error!(%error, "a write batch failed in the database");
            for job in batch.into_iter().flatten() {
                job.answer(&Err(error.clone()));
            }
        }
    }
}

/// Publishes a committed batch's events, before its writes are answered, so that a stream
/// opened after an answer never shows that write's events as new. Events other nodes
/// committed before the batch go first: they are read here when this node's follower has
/// not published them yet (the bus skips any it publishes meanwhile).
fn publish(
    client: &mut postgres::Client,
    statements: &Statements,
    bus: &EventBus,
    events: Vec<Event>,
) {
    let Some(first) = events.first().map(|event| event.id) else {
        return;
    };
    let published = bus.published_through();
    let mut durable = Vec::new();
    if published + 1 < first {
        match earlier_events(client, statements, published, first) {
            Ok(earlier) => durable = earlier,
            Err(error) => {
                // The follower publishes them, and these after them.
                tracing::warn!(%error, "reading other nodes' events failed; the follower publishes this batch's");
                return;
            }
        }
    }
    durable.extend(events);
    bus.publish_durable(durable);
}

/// The committed events with ids in (`after`, `before`).
fn earlier_events(
    client: &mut postgres::Client,
    statements: &Statements,
    after: u64,
    before: u64,
) -> Result<Vec<Event>> {
    const SQL: &str = concat!(
        "SELECT ",
        super::schema::event_columns!(),
        " FROM events WHERE id > $1 AND id < $2 ORDER BY id"
    );
    let statement = write_ops::prepared(client, statements, SQL)?;
    let (after, before) = (super::schema::int(after), super::schema::int(before));
    client
        .query(&statement, &[&after, &before])
        .map_err(super::storage)?
        .iter()
        .map(super::schema::event_from)
        .collect()
}

/// One run of the batch's transaction, to its commit; returns the events it stored. A
/// refused write changed nothing (writes refuse before they change anything).
fn run_batch(
    client: &mut postgres::Client,
    statements: &Statements,
    batch: &[Option<Box<dyn Job>>],
    metrics: &StoreMetrics,
) -> std::result::Result<Vec<Event>, BatchAbort> {
    let storage = |error| write_ops::failure(super::storage(error));
    let started = Instant::now();
    let mut tx = client.transaction().map_err(storage)?;
    let next: i64 = tx
        .query_one(
            "SELECT value FROM sessiond_meta WHERE key = 'next_event_id' FOR UPDATE",
            &[],
        )
        .map_err(storage)?
        .get(0);
    let batch_tx = BatchTx::new(tx, statements);
    let first_id = super::schema::uint(next);
    let mut next_id = first_id;
    for (index, job) in batch.iter().enumerate() {
        let Some(job) = job else { continue };
        let ran =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(&batch_tx, next_id)))
                .unwrap_or_else(|panic| {
                    Err(Failure::Broken(Error::Panicked(
                        crate::error::panic_message(panic.as_ref()),
                    )))
                });
        match ran {
            Ok(events) => next_id += events.len() as u64,
            Err(Failure::Refused(refusal)) => job.refuse(refusal),
            Err(Failure::Broken(error)) => return Err(BatchAbort::Write(index, error)),
            Err(failure) => return Err(failure.into()),
        }
    }
    let events = batch_tx.send_writes()?;
    if !events.is_empty() {
        write_ops::set_next_event_id(&batch_tx, next_id)?;
        // Delivered at the commit, to every node's follower.
        batch_tx.run(super::follower::NOTIFY, &[])?;
    }
    let committing = Instant::now();
    metrics
        .commit_seconds
        .observe((committing - started).as_secs_f64());
    let committed = batch_tx.tx.into_inner().commit();
    metrics
        .sync_seconds
        .observe(committing.elapsed().as_secs_f64());
    committed.map_err(storage)?;
    Ok(events)
}
