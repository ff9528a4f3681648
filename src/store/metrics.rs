//! What the store counts and times as it works: its writer's batches, the writes it refuses
//! or fails, what the writes did, and the events it hands to streams. The store's own
//! instruments, made unregistered at open; the server registers them with the rest
//! ([`StoreMetrics::register`]).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::domain::{EventKind, SessionError};
use crate::error::Error;

/// The store's instruments. Cheap to update from any thread.
#[derive(Clone)]
pub struct StoreMetrics {
    /// Writes per batch.
    pub(super) batch_writes: Histogram,
    /// Seconds from a batch's first write to its commit (sled: the transaction; PostgreSQL:
    /// the statements before COMMIT).
    pub(super) commit_seconds: Histogram,
    /// Seconds to make a committed batch durable (sled: flush and fdatasync; PostgreSQL:
    /// the COMMIT, which waits for the WAL's fsync).
    pub(super) sync_seconds: Histogram,
    /// Writes queued and not yet taken into a batch.
    pub(super) queue_depth: IntGauge,
    /// Writes refused, by reason: the contract's error code of a rule that refused it, or
    /// STORAGE_UNAVAILABLE while the store refuses writes.
    writes_refused: IntCounterVec,
    /// Writes that failed, by reason: `storage` (the engine failed), `broken` (the write
    /// itself), `stopped` (the writer had stopped).
    writes_failed: IntCounterVec,
    /// Messages stored.
    messages_appended: IntCounter,
    /// Renewals, by kind: `activity` (a message), `heartbeat`, `manual`.
    renewals: IntCounterVec,
    /// Durable events handed to this server's streams, by type.
    events_published: IntCounterVec,
    /// Stream subscribers cut off for falling behind.
    pub(super) streams_cut_off: IntCounter,
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreMetrics").finish_non_exhaustive()
    }
}

/// What renewed a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RenewalKind {
    /// A message appended.
    Activity,
    /// A heartbeat.
    Heartbeat,
    /// An explicit renewal.
    Manual,
}

impl RenewalKind {
    fn label(self) -> &'static str {
        match self {
            RenewalKind::Activity => "activity",
            RenewalKind::Heartbeat => "heartbeat",
            RenewalKind::Manual => "manual",
        }
    }
}

/// Why writes fail: the engine failed, the write itself, the writer had stopped.
const FAILURES: [&str; 3] = ["storage", "broken", "stopped"];

/// The refusal while the store refuses writes, as the contract names it.
const STORAGE_UNAVAILABLE: &str = "STORAGE_UNAVAILABLE";

// The instruments' names and help are literals of this crate: making one cannot fail.

/// A counter.
pub(crate) fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::with_opts(Opts::new(name, help)).expect("a valid counter")
}

/// A gauge.
pub(crate) fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::with_opts(Opts::new(name, help)).expect("a valid gauge")
}

/// A histogram over `buckets`.
pub(crate) fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("a valid histogram")
}

/// Durations of a write batch's steps: from under a millisecond (a cached commit) to the
/// seconds of a struggling disk.
const BATCH_SECONDS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Writes per batch, up to the writer's largest batch.
const BATCH_WRITES: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

impl StoreMetrics {
    /// Fresh instruments, at zero.
    pub(crate) fn new() -> Self {
        let counters = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid counter")
        };
        let metrics = StoreMetrics {
            batch_writes: histogram(
                "sessiond_writer_batch_writes",
                "Writes per batch the writer commits together.",
                &BATCH_WRITES,
            ),
            commit_seconds: histogram(
                "sessiond_writer_commit_seconds",
                "Seconds to run a write batch's transaction up to its commit.",
                &BATCH_SECONDS,
            ),
            sync_seconds: histogram(
                "sessiond_writer_sync_seconds",
                "Seconds to make a committed batch durable (sled: flush and fdatasync; PostgreSQL: COMMIT).",
                &BATCH_SECONDS,
            ),
            queue_depth: gauge(
                "sessiond_writer_queue_depth",
                "Writes queued for the writer and not yet in a batch.",
            ),
            writes_refused: counters(
                "sessiond_writes_refused_total",
                "Writes refused, by the error code answered.",
                "reason",
            ),
            writes_failed: counters(
                "sessiond_writes_failed_total",
                "Writes that failed: storage (the engine), broken (the write), stopped (the writer).",
                "reason",
            ),
            messages_appended: counter(
                "sessiond_messages_appended_total",
                "Messages stored.",
            ),
            renewals: counters(
                "sessiond_renewals_total",
                "Session renewals, by what renewed it: activity, heartbeat or manual.",
                "kind",
            ),
            events_published: counters(
                "sessiond_events_published_total",
                "Durable events handed to this server's event streams, by type.",
                "type",
            ),
            streams_cut_off: counter(
                "sessiond_streams_cut_off_total",
                "Event stream subscribers cut off for falling behind.",
            ),
        };
        // Served at zero from the start, so that a rate over them is 0 rather than absent.
        for kind in [
            RenewalKind::Activity,
            RenewalKind::Heartbeat,
            RenewalKind::Manual,
        ] {
            metrics.renewals.with_label_values(&[kind.label()]);
        }
        for kind in EventKind::ALL {
            metrics.events_published.with_label_values(&[kind.name()]);
        }
        for reason in FAILURES {
            metrics.writes_failed.with_label_values(&[reason]);
        }
        metrics
            .writes_refused
            .with_label_values(&[STORAGE_UNAVAILABLE]);
        metrics
    }

    /// Registers every instrument with `registry`.
    ///
    /// # Errors
    /// An instrument of the same name is registered there already.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.batch_writes.clone()))?;
        registry.register(Box::new(self.commit_seconds.clone()))?;
        registry.register(Box::new(self.sync_seconds.clone()))?;
        registry.register(Box::new(self.queue_depth.clone()))?;
        registry.register(Box::new(self.writes_refused.clone()))?;
        registry.register(Box::new(self.writes_failed.clone()))?;
        registry.register(Box::new(self.messages_appended.clone()))?;
        registry.register(Box::new(self.renewals.clone()))?;
        registry.register(Box::new(self.events_published.clone()))?;
        registry.register(Box::new(self.streams_cut_off.clone()))?;
        Ok(())
    }

    /// Counts a write refused by a rule.
    pub(super) fn refused(&self, refusal: &SessionError) {
        self.writes_refused
            .with_label_values(&[refusal.code()])
            .inc();
    }

    /// Counts a write that was not done: refused while the store refuses writes, or failed.
    pub(super) fn failed(&self, error: &Error) {
        let [storage, broken, stopped] = FAILURES;
        let (counter, reason) = match error {
            Error::Degraded(_) => (&self.writes_refused, STORAGE_UNAVAILABLE),
            Error::WriterStopped => (&self.writes_failed, stopped),
            Error::Corrupt(_) | Error::Panicked(_) | Error::Codec(_) => {
                (&self.writes_failed, broken)
            }
            _ => (&self.writes_failed, storage),
        };
        counter.with_label_values(&[reason]).inc();
    }

    /// Counts a durable message.
    pub(super) fn appended(&self) {
        self.messages_appended.inc();
    }

    /// Counts a durable renewal.
    pub(super) fn renewed(&self, kind: RenewalKind) {
        self.renewals.with_label_values(&[kind.label()]).inc();
    }

    /// Counts an event handed to the streams.
    pub(super) fn published(&self, kind: EventKind) {
        self.events_published
            .with_label_values(&[kind.name()])
            .inc();
    }
}
