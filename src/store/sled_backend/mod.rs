//! The embedded engine: sled trees, their key layouts, bincode values and the batching
//! writer thread. The store's rules never see any of it; they reach it through
//! [`Backend`] and [`WriteOps`](super::write::WriteOps).
//!
//! - `engine.rs`: the trees (declared once), the open sled instance, and how it is
//!   reopened after an I/O error.
//! - `writer.rs`: the writer thread, which runs writes in batches, one transaction and one
//!   sync each.
//! - `write_ops.rs`: the operations of a write over the trees.
//! - `reads.rs` and `event_records.rs`: the reads, and how a write's events are stored.
//! - `keys.rs`, `codec.rs`: key layouts and the value encoding; `check.rs`: `sessiond check`.

mod check;
mod codec;
mod engine;
mod event_records;
mod keys;
mod reads;
mod write_ops;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sled::transaction::UnabortableTransactionError;
use sled::Tree;
use uuid::Uuid;

pub use check::{CheckReport, TreeStats};

use super::backend::{Backend, Reading, Release};
use super::events::{EventBus, EventReplay};
use super::messages::{MessagePage, MessageQuery};
use super::sessions::{SessionCounts, SessionPage, SessionQuery};
use super::write::{broken, settle_unrefused, Failure, Job, TxResult};
use super::{Progress, StoreMetrics, StoreOptions};
use crate::domain::{Event, Message, Session, SessionError, Timestamp};
use crate::error::{Error, Result};
use engine::{Engine, EngineSlot};
use write_ops::MESSAGES_PER_PURGE_WRITE;
use writer::{Chore, Writer};

/// The store layout this build writes. Bump it (and migrate in [`SledBackend::open`]) when
/// a key layout or value encoding changes.
///
/// - 1: one event record per event, indexed per event.
/// - 2: one event record per write, holding all its events (tree `eventid_events`).
/// - 3: deadline index entries keyed by the second their deadline falls in, rounded up.
pub const FORMAT_VERSION: u32 = 3;

/// How long closing waits for sled's file lock.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The store in a sled database.
pub(super) struct SledBackend {
    path: PathBuf,
    /// The open engine, reopened after an I/O error.
    engines: Arc<EngineSlot>,
    bus: Arc<EventBus>,
    /// Runs every write, in batches, and makes it durable.
    writer: Writer,
}

impl SledBackend {
    /// Opens (or creates) the store in `path`, upgrading an older layout.
    ///
    /// # Errors
    /// [`Error::NewerFormat`] for a store written by a newer sessiond; storage and I/O
    /// errors as sled reports them (including another process holding the lock).
    pub(super) fn open(
        path: &Path,
        options: &StoreOptions,
        metrics: Arc<StoreMetrics>,
    ) -> Result<SledBackend> {
        let engines = Arc::new(EngineSlot::open(path, options)?);
        let engine = engines.engine()?;
        let meta = engine.db.open_tree("meta")?;
        upgrade_format(&engine.db, &meta, path)?;
        let next_event_id = event_records::next_event_id(&engine.trees.events)?;
        drop(engine);
        let bus = Arc::new(EventBus::new(next_event_id - 1, metrics.clone()));
        let writer = Writer::start(engines.clone(), path, bus.clone(), next_event_id, metrics)?;
        Ok(SledBackend {
            path: path.to_path_buf(),
            engines,
            bus,
            writer,
        })
    }

    /// Reads on the calling thread: sled answers from its page cache, and a read that
    /// must go to disk blocks for one page, which costs less than handing every read to
    /// another thread.
    fn read_now<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Engine) -> Result<T>,
    ) -> Reading<'static, T> {
        let result = self.engines.engine().and_then(|engine| read(&engine));
        Box::pin(std::future::ready(result))
    }

    /// Reads on a blocking thread: for reads that may walk many pages (listings).
    fn read_blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Engine) -> Result<T> + Send + 'static,
    ) -> Reading<'static, T> {
        let engines = self.engines.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read(&*engines.engine()?))
                .await
                .map_err(|joined| Error::Panicked(joined.to_string()))?
        })
    }

    /// Runs a chore of this engine's own in the writer's next batch; answers once durable.
    async fn chore(
        &self,
        work: impl Fn(&engine::WriteTx<'_>) -> TxResult<()> + Send + 'static,
    ) -> Result<()> {
        let (chore, done) = Chore::new(Box::new(work));
        self.writer.submit_chore(chore)?;
        settle_unrefused(done.await.map_err(|_| Error::WriterStopped)??)
    }

    /// Removes a deleted session's messages, newest first, in writes of at most
    /// [`MESSAGES_PER_PURGE_WRITE`], then its purge marker. Safe to repeat after a crash.
    async fn purge_messages(&self, session_id: Uuid) -> Result<()> {
        loop {
            // Its own statement: the engine handle is dropped before the write is awaited.
            let last = self.engines.engine()?.last_message_seq(session_id)?;
            let Some(high) = last else { break };
            let low = high.saturating_sub(MESSAGES_PER_PURGE_WRITE - 1).max(1);
            self.chore(move |tx| tx.remove_messages(session_id, low..=high))
                .await?;
        }
        self.chore(move |tx| tx.finish_purge(session_id)).await
    }
}

impl Backend for SledBackend {
    fn submit(&self, job: Box<dyn Job>) -> Result<()> {
        self.writer.submit(job)
    }

    fn engine(&self) -> &'static str {
        "sled"
    }

    fn bus(&self) -> &Arc<EventBus> {
        &self.bus
    }

    fn catch_up_events(&self, _through: u64) -> Reading<'_, ()> {
        // One process holds the store: every event it stored, it published.
        Box::pin(async { Ok(()) })
    }

    fn degraded(&self) -> Option<String> {
        self.engines.degraded()
    }

    fn flush(&self) -> Result<()> {
        self.writer.flush_now()
    }

    fn session(&self, id: Uuid) -> Reading<'_, Option<Session>> {
        self.read_now(|engine| engine.session(id))
    }

    fn list_sessions(&self, query: SessionQuery, now: Timestamp) -> Reading<'_, SessionPage> {
        self.read_blocking(move |engine| engine.list_sessions(&query, now))
    }

    fn counts(&self, now: Timestamp) -> Reading<'_, SessionCounts> {
        self.read_now(|engine| engine.counts(now))
    }

    fn sessions_with_deadlines_between(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> Reading<'_, Vec<Uuid>> {
        self.read_now(|engine| engine.sessions_with_deadlines_between(from, to))
    }

    fn sessions_expired_by(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Reading<'_, Vec<(Timestamp, Uuid)>> {
        self.read_now(|engine| engine.sessions_expired_by(cutoff, limit))
    }

    fn message(&self, session_id: Uuid, message_id: Uuid) -> Reading<'_, Option<Message>> {
        self.read_now(|engine| engine.message(session_id, message_id))
    }

    fn thread(
        &self,
        session_id: Uuid,
        message_id: Uuid,
        limit: usize,
    ) -> Reading<'_, std::result::Result<MessagePage, SessionError>> {
        self.read_now(|engine| engine.thread(session_id, message_id, limit))
    }

    fn page_messages<'a>(
        &'a self,
        session: &'a Session,
        query: &'a MessageQuery,
    ) -> Reading<'a, std::result::Result<MessagePage, SessionError>> {
        self.read_now(|engine| engine.page_messages(session, query))
    }

    fn replay(&self, replay: EventReplay) -> Reading<'_, Vec<Event>> {
        self.read_now(|engine| engine.replay(replay))
    }

    fn finish_deletion(&self, session_id: Uuid) -> Reading<'_, ()> {
        Box::pin(async move {
            if self.engines.engine()?.purge_pending(session_id)? {
                self.purge_messages(session_id).await?;
            }
            Ok(())
        })
    }

    fn finish_deletions(&self) -> Reading<'_, usize> {
        Box::pin(async move {
            let pending = self.engines.engine()?.pending_purges()?;
            for &session_id in &pending {
                self.purge_messages(session_id).await?;
            }
            Ok(pending.len())
        })
    }

    fn trim_events(&self, cutoff: Timestamp) -> Reading<'_, usize> {
        // Records per write: bounds how long the writes batched with it wait.
        const BATCH: usize = 64;
        Box::pin(async move {
            let Some(newest) = self.engines.engine()?.newest_event_record()? else {
                return Ok(0);
            };
            let mut trimmed = 0;
            loop {
                let (doomed, events) = self
                    .engines
                    .engine()?
                    .records_before(newest, cutoff, BATCH)?;
                trimmed += events;
                let more = doomed.len() == BATCH;
                if doomed.is_empty() {
                    break;
                }
                self.chore(move |tx| {
                    for record in &doomed {
                        tx.remove_events(record)?;
                    }
                    Ok(())
                })
                .await?;
                if !more {
                    break;
                }
            }
            Ok(trimmed)
        })
    }

    fn check(&self, progress: &dyn Progress) -> Result<CheckReport> {
        self.engines.engine()?.check(progress)
    }

    fn tree_stats(&self, progress: &dyn Progress) -> Result<Vec<TreeStats>> {
        self.engines.engine()?.tree_stats(progress)
    }

    fn size_on_disk(&self) -> Result<u64> {
        Ok(self.engines.engine()?.db.size_on_disk()?)
    }

    fn stored_bytes(&self) -> Reading<'_, u64> {
        // A walk of the store's few files.
        self.read_now(|engine| Ok(engine.db.size_on_disk()?))
    }

    fn release(&self) -> Release {
        let path = self.path.clone();
        // sled's background threads keep the lock a moment after the last handle drops.
        Box::new(move |deadline| engine::wait_for_release(&path, deadline))
    }

    #[cfg(test)]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// How long [`Store::close`](super::Store::close) waits for other handles and for the
/// file lock.
pub(super) fn close_deadline() -> std::time::Instant {
    std::time::Instant::now() + CLOSE_WAIT
}

/// sled's errors become the library's here, so that no engine type leaves the store. An
/// I/O error stays one (it decides between a 503 and a 500); corruption sled detects
/// while running is logged as corruption.
impl From<sled::Error> for Error {
    fn from(error: sled::Error) -> Self {
        match error {
            sled::Error::Io(io) => Error::Io(io),
            sled::Error::Corruption { .. } => Error::corrupt(error.to_string()),
            other => Error::Storage(Box::new(other)),
        }
    }
}

/// An operation of a sled transaction failed: a conflict runs the transaction again, any
/// other failure fails the batch.
impl From<UnabortableTransactionError> for Failure {
    fn from(error: UnabortableTransactionError) -> Self {
        match error {
            UnabortableTransactionError::Conflict => Failure::Conflict,
            UnabortableTransactionError::Storage(error) => Failure::Storage(error.into()),
        }
    }
}

/// Decodes inside a transaction.
fn decode_tx<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> TxResult<T> {
    codec::decode(bytes).map_err(broken)
}

/// Encodes inside a transaction.
fn encode_tx<T: serde::Serialize>(value: &T) -> TxResult<Vec<u8>> {
    codec::encode(value).map_err(broken)
}

/// Writes the deadline index anew from the sessions, keyed as this build keys it.
/// Idempotent.
fn rebuild_deadline_index(db: &sled::Db) -> Result<()> {
    let trees = engine::Trees::open(db)?;
    trees.expirations.clear()?;
    trees.warnings.clear()?;
    for value in trees.sessions.iter().values() {
        let session: Session = codec::decode(&value?)?;
        trees
            .expirations
            .insert(keys::deadline(session.expires_at(), session.id), &[])?;
        trees
            .warnings
            .insert(keys::deadline(session.warns_at(), session.id), &[])?;
    }
    Ok(())
}

/// Brings the store to [`FORMAT_VERSION`], refusing one written by a newer sessiond.
fn upgrade_format(db: &sled::Db, meta: &Tree, path: &Path) -> Result<()> {
    let found = match meta.get(keys::FORMAT_VERSION)? {
        None => None,
        Some(bytes) => Some(
            <[u8; 4]>::try_from(bytes.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| Error::corrupt("format_version is not a u32"))?,
        ),
    };
    match found {
        Some(found) if found > FORMAT_VERSION => Err(Error::NewerFormat {
            path: path.display().to_string(),
            found,
            supported: FORMAT_VERSION,
        }),
        // A crash may have come between writing the version and dropping the old records.
        Some(FORMAT_VERSION) => event_records::drop_v1_records(db),
        Some(older) => {
            tracing::info!(
                from = older,
                to = FORMAT_VERSION,
                "upgrading the store format"
            );
            if older < 2 {
                event_records::migrate_v1_records(db)?;
            }
            rebuild_deadline_index(db)?;
            // The version comes after the copy: a crash before it reruns the (idempotent)
            // copy. The old records go only once the version says they are not needed.
            db.flush()?;
            meta.insert(keys::FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())?;
            db.flush()?;
            event_records::drop_v1_records(db)
        }
        None => {
            meta.insert(keys::FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())?;
            Ok(())
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::engine::Trees;
    use super::SledBackend;
    use crate::store::Store;

    /// The sled engine under a store opened on sled.
    pub(crate) fn sled_of(store: &Store) -> &SledBackend {
        store
            .backend
            .as_any()
            .downcast_ref::<SledBackend>()
            .expect("a store on sled")
    }

    /// The format version recorded in the closed store at `path`.
    pub(in crate::store::sled_backend) fn stored_format_version(path: &std::path::Path) -> u32 {
        let db = sled::open(path).expect("the store opens");
        let stored = db
            .open_tree("meta")
            .expect("a meta tree")
            .get(super::keys::FORMAT_VERSION)
            .expect("meta reads")
            .expect("a format version");
        u32::from_be_bytes(stored.as_ref().try_into().expect("four bytes"))
    }

    /// The open engine's trees, for tests that look at the stored layout.
    pub(in crate::store::sled_backend) fn trees(store: &Store) -> Trees {
        sled_of(store)
            .engines
            .engine()
            .expect("an open engine")
            .trees
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;
    use crate::store::Store;

    #[test]
    fn a_store_from_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path(), &StoreOptions::default())
            .unwrap()
            .close()
            .unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let meta = db.open_tree("meta").unwrap();
            meta.insert(keys::FORMAT_VERSION, &(FORMAT_VERSION + 1).to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(dir.path(), &StoreOptions::default()).unwrap_err();
        assert!(
            matches!(err, Error::NewerFormat { found, .. } if found == FORMAT_VERSION + 1),
            "{err}"
        );
    }

    #[test]
    fn open_waits_for_a_handle_still_holding_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let held = sled::open(dir.path()).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        release.join().unwrap();
        store.close().unwrap();
    }

    #[test]
    fn engine_errors_keep_their_kind_and_their_cause() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let io = Error::from(sled::Error::Io(full));
        assert!(matches!(&io, Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull));
        assert!(io.is_unavailable());
        let flush = Error::Flush(Arc::new(io));
        assert!(flush.is_unavailable());
        assert!(std::error::Error::source(&flush).is_some());
        assert!(Error::WriterStopped.is_unavailable());
        let broken_commit = Error::Flush(Arc::new(Error::Corrupt("a broken invariant".into())));
        assert!(!broken_commit.is_unavailable());
        let unsupported = Error::from(sled::Error::Unsupported("x".into()));
        assert!(!unsupported.is_unavailable());
        assert!(std::error::Error::source(&unsupported).is_some());
        let codec = codec::decode::<u64>(&[]).unwrap_err();
        assert!(!codec.is_unavailable());
    }

    #[test]
    fn a_new_store_records_its_format_version() {
        let (store, dir) = temp_store();
        store.close().unwrap();
        assert_eq!(
            test_support::stored_format_version(dir.path()),
            FORMAT_VERSION
        );
    }
}
