//! The durable store. Nothing outside this module knows the engine, the key layouts or
//! the codec.
//!
//! - `sessions.rs`, `messages.rs`, `events.rs`: what each write does (the rules, written
//!   once, over [`WriteOps`](write::WriteOps)) and the reads, as the rest of sessiond
//!   calls them;
//! - `write.rs`: the context every write works in, and the queued write;
//! - `backend.rs`: the trait an engine implements, and its contract;
//! - `sled_backend/`: the embedded engine.
//! - `pg_backend/`: PostgreSQL, for stores that outgrow one machine.
//!
//! Every write is answered once it is durable. Writes are serialized: a read-modify-write
//! of a session never loses an update, and a clock read inside a write is ordered with
//! the commit.

mod backend;
mod events;
mod messages;
pub(crate) mod metrics;
mod pg_backend;
mod sessions;
mod sled_backend;
mod write;

use std::path::Path;
use std::sync::Arc;

use crate::domain::{Clock, SystemClock};
use crate::error::{Error, Result};

pub use events::{
    EventStream, LiveEvents, StreamEvent, Subscription, UnknownEventId, STREAM_BUFFER,
};
pub use messages::{Appended, MessagePage, MessageQuery};
pub use metrics::StoreMetrics;
pub use pg_backend::{url_without_password, PgOptions};
pub use sessions::{SessionCounts, SessionPage, SessionQuery, StatusFilter};
pub use sled_backend::{CheckReport, TreeStats, FORMAT_VERSION};

use backend::Backend;
use sled_backend::SledBackend;

/// Told how far a long read or write of the whole store has got (`check`, `stats`, export,
/// import), so that the command running it can draw a bar. The store only counts; how it
/// is shown is the caller's.
pub trait Progress: Sync {
    /// A new stage of the work begins: what it does, and how many units it has when that
    /// is known without reading more.
    fn stage(&self, what: &str, units: Option<u64>);
    /// `units` more of the current stage are done.
    fn advance(&self, units: u64);
}

/// Progress that nobody watches.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _what: &str, _units: Option<u64>) {}
    fn advance(&self, _units: u64) {}
}

/// Writes a background task (the sweeper, the notifier) keeps in flight: enough to share
/// write batches, few enough that the requests batched with them wait little.
pub const BACKGROUND_WRITES: usize = 4;

/// How to open a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// sled's page cache budget in bytes; bounds resident memory.
    pub cache_capacity_bytes: u64,
    /// Disk space kept allocated in a file beside the store, given up when the disk is
    /// full so that the store can reopen and go on serving reads; at most a sixteenth of
    /// the file system (1 MiB at least); 0 keeps none.
    pub disk_reserve_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_bytes: 64 * 1024 * 1024,
            disk_reserve_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A cheap, cloneable handle on the store.
#[derive(Clone)]
pub struct Store {
    /// The engine: every read and write goes through it.
    backend: Arc<dyn Backend>,
    /// Hands durable events to live subscribers.
    bus: Arc<events::EventBus>,
    /// What a write's `now` is read from.
    clock: Arc<dyn Clock>,
    /// What the store counts and times; the engine and the bus share it.
    metrics: Arc<StoreMetrics>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `path`, on the system clock.
    ///
    /// # Errors
    /// [`Error::NewerFormat`] for a store written by a newer sessiond; storage and I/O
    /// errors (including another process holding the store).
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store> {
        Store::open_with_clock(path, options, Arc::new(SystemClock))
    }

    /// [`Store::open`] with the clock writes read their time from.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_with_clock(
        path: &Path,
        options: &StoreOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Store> {
        let metrics = Arc::new(StoreMetrics::new());
        let backend: Arc<dyn Backend> =
            Arc::new(SledBackend::open(path, options, metrics.clone())?);
        Ok(Store {
            bus: backend.bus().clone(),
            backend,
            clock,
            metrics,
        })
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://` or `postgresql://`),
    /// making its tables when it has none, with the clock writes read their time from.
    ///
    /// # Errors
    /// [`Error::NewerFormat`] for a database written by a newer sessiond;
    /// [`Error::Config`] for a URL that is not one; [`Error::Degraded`] when the database
    /// cannot be reached.
    pub async fn open_postgres(
        url: &str,
        options: &PgOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Store> {
        let metrics = Arc::new(StoreMetrics::new());
        let backend: Arc<dyn Backend> =
            Arc::new(pg_backend::PgBackend::open(url, options, metrics.clone()).await?);
        Ok(Store {
            bus: backend.bus().clone(),
            backend,
            clock,
            metrics,
        })
    }

    /// The clock the store's writes read their time from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The storage engine's name: `sled` or `postgres`.
    pub fn engine(&self) -> &'static str {
        self.backend.engine()
    }

    /// The store's instruments, to register with a metrics registry.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Why the store refuses writes, while it does: after a write failed (a full disk,
    /// say), until the disk takes writes again. Reads go on meanwhile.
    pub fn degraded(&self) -> Option<String> {
        self.backend.degraded()
    }

    /// Flushes and syncs now, blocking the calling thread.
    ///
    /// # Errors
    /// [`Error::Flush`] when the flush or the file sync fails.
    pub fn flush(&self) -> Result<()> {
        self.backend.flush()
    }

    /// Closes the store: waits (up to a few seconds) until this is the last handle, drops
    /// it, and waits until the engine has released its files, so the store can be
    /// reopened at once — by this process or another.
    ///
    /// # Errors
    /// [`Error::Io`] when another handle or the engine's lock is still held after the wait.
    pub fn close(self) -> Result<()> {
        let deadline = sled_backend::close_deadline();
        while Arc::strong_count(&self.backend) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let others = Arc::strong_count(&self.backend) - 1;
        if others > 0 {
            return Err(Error::Io(std::io::Error::other(format!(
                "the store is still held by {others} other handle(s) (routes or event streams not dropped); it closes when the last one is dropped"
            ))));
        }
        let release = self.backend.release();
        drop(self);
        release(deadline)
    }

    /// Bytes the store occupies on disk.
    ///
    /// # Errors
    /// I/O errors reading the directory.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.backend.size_on_disk()
    }

    /// Bytes the store occupies on disk, read as the store's other reads are.
    ///
    /// # Errors
    /// Storage and I/O errors.
    pub async fn stored_bytes(&self) -> Result<u64> {
        self.backend.stored_bytes().await
    }

    /// Entries and bytes per tree (a full scan).
    ///
    /// # Errors
    /// Storage failures.
    pub fn tree_stats(&self) -> Result<Vec<TreeStats>> {
        self.tree_stats_with_progress(&NoProgress)
    }

    /// [`Store::tree_stats`], telling `progress` of each tree and entry it reads.
    ///
    /// # Errors
    /// Storage failures.
    pub fn tree_stats_with_progress(&self, progress: &dyn Progress) -> Result<Vec<TreeStats>> {
        self.backend.tree_stats(progress)
    }

    /// Verifies every record against its index entries and counters, and that every value
    /// decodes. Read-only.
    ///
    /// # Errors
    /// Storage failures (problems in the data go into the report).
    pub fn check(&self) -> Result<CheckReport> {
        self.check_with_progress(&NoProgress)
    }

    /// [`Store::check`], telling `progress` of each scan and entry it reads.
    ///
    /// # Errors
    /// As [`Store::check`].
    pub fn check_with_progress(&self, progress: &dyn Progress) -> Result<CheckReport> {
        self.backend.check(progress)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// The instant the store's tests start at: a whole second, as the deadline index
    /// keeps them.
    pub(crate) const T0: Timestamp = Timestamp::from_millis(1_795_255_200_000);
    use crate::domain::{ManualClock, NewMessage, Session, TimeoutConfig, Timestamp};
    use uuid::Uuid;

    /// A session with a fresh agent and user, created at `now` (not stored).
    pub(crate) fn session_at(
        now: Timestamp,
        timeout_minutes: u32,
        warning_threshold_minutes: u32,
    ) -> Session {
        let timeout = TimeoutConfig {
            timeout_minutes,
            auto_renew: true,
            max_duration_minutes: 720,
            warning_threshold_minutes,
        };
        Session::new(
            Uuid::now_v7(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            timeout,
            "{}".into(),
            now,
        )
    }

    /// A 30-minute session created at `now` and stored.
    pub(crate) async fn created_session(store: &Store, now: Timestamp) -> Session {
        let session = session_at(now, 30, 5);
        store
            .create_session(session.clone())
            .await
            .expect("a session can be stored");
        session
    }

    /// Appends `new` at the store clock's time; it must be accepted.
    pub(crate) async fn appended(
        store: &Store,
        session_id: Uuid,
        new: NewMessage,
    ) -> crate::domain::Message {
        let outcome = store.append_message(session_id, new).await;
        outcome.expect("stored").expect("accepted").message
    }

    /// Appends `count` plain user messages ("m0", "m1", …) at the store clock's time.
    pub(crate) async fn append_texts(
        store: &Store,
        session_id: Uuid,
        count: usize,
    ) -> Vec<crate::domain::Message> {
        let mut messages = Vec::with_capacity(count);
        for i in 0..count {
            let new = text_message(&format!("m{i}"), None);
            messages.push(appended(store, session_id, new).await);
        }
        messages
    }

    /// A plain user message replying to `parent_id` (or to the newest message).
    pub(crate) fn text_message(content: &str, parent_id: Option<Uuid>) -> NewMessage {
        NewMessage {
            content: content.into(),
            parent_id,
            author_id: None,
            metadata_json: "{}".into(),
            attachments: Vec::new(),
        }
    }

    /// Every stored event matching `filter`, oldest first.
    pub(crate) async fn stored_events(
        store: &Store,
        filter: crate::domain::EventFilter,
    ) -> Vec<crate::domain::Event> {
        let replay = events::EventReplay {
            filter,
            after: 0,
            through: u64::MAX,
            limit: usize::MAX,
        };
        store.backend.replay(replay).await.expect("the store reads")
    }

    /// A store in a fresh temporary directory (kept alive by the returned guard), on the
    /// system clock.
    pub(crate) fn temp_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), &StoreOptions::default()).expect("open store");
        (store, dir)
    }

    /// A store in a fresh temporary directory, on a manual clock set to `now`.
    pub(crate) fn clocked_store(now: Timestamp) -> (Store, Arc<ManualClock>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::new(now));
        let store = Store::open_with_clock(dir.path(), &StoreOptions::default(), clock.clone())
            .expect("open store");
        (store, clock, dir)
    }
}
