//! The durable store: typed access to sled trees. Nothing outside this module knows the
//! engine, the key layouts or the codec.
//!
//! Every write runs on the writer thread (`writer.rs`), batched with the writes waiting
//! beside it into one sled transaction, and is answered once it is on disk. Writes are
//! serialized: a read-modify-write of a session never loses an update, and a clock read
//! inside a write is ordered with the commit.

mod check;
mod codec;
mod engine;
mod events;
mod keys;
mod messages;
mod sessions;
mod write_ops;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, ConflictableTransactionResult};
use sled::Tree;

use crate::domain::SessionError;
use crate::error::{Error, Result};

pub use check::{CheckReport, TreeStats};
pub use events::{EventStream, Subscription, UnknownEventId, STREAM_BUFFER};
pub use messages::{Appended, MessagePage, MessageQuery};
pub use sessions::{SessionCounts, SessionPage, SessionQuery, StatusFilter};

use engine::{Engine, EngineSlot};
use writer::Writer;

/// The store layout this build writes. Bump it (and migrate in [`Store::open`]) when a key
/// layout or value encoding changes.
///
/// - 1: one event record per event, indexed per event.
/// - 2: one event record per write, holding all its events (tree `eventid_events`).
pub const FORMAT_VERSION: u32 = 2;

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
    /// Where the store lives.
    path: Arc<PathBuf>,
    /// The open engine, reopened after an I/O error.
    engines: Arc<EngineSlot>,
    /// Hands durable events to live subscribers.
    bus: Arc<events::EventBus>,
    /// Runs every write, in batches, and makes it durable.
    writer: Arc<Writer>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `path`.
    ///
    /// # Errors
    /// [`Error::NewerFormat`] for a store written by a newer sessiond; storage and I/O
    /// errors as sled reports them (including another process holding the lock).
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store> {
        let engines = Arc::new(EngineSlot::open(path, options)?);
        let engine = engines.engine()?;
        let meta = engine.db.open_tree("meta")?;
        upgrade_format(&engine.db, &meta, path)?;
        let next_event_id = events::next_event_id(&engine.trees.events)?;
        drop(engine);
        let bus = Arc::new(events::EventBus::new(next_event_id - 1));
        let writer = Writer::start(engines.clone(), path, bus.clone(), next_event_id)?;
        Ok(Store {
            path: Arc::new(path.to_path_buf()),
            engines,
            bus,
            writer: Arc::new(writer),
        })
    }

    /// The open engine: what every read goes through.
    fn engine(&self) -> Result<Arc<Engine>> {
        self.engines.engine()
    }

    /// The open engine's trees, for tests that look at the stored layout.
    #[cfg(test)]
    fn trees(&self) -> engine::Trees {
        self.engine().expect("an open engine").trees.clone()
    }

    /// Why the store refuses writes, while it does: after a write failed (a full disk,
    /// say), until the disk takes writes again. Reads go on meanwhile.
    pub fn degraded(&self) -> Option<String> {
        self.engines.degraded()
    }

    /// Flushes and syncs now, blocking the calling thread.
    ///
    /// # Errors
    /// [`Error::Flush`] when the flush or the file sync fails.
    pub fn flush(&self) -> Result<()> {
        self.writer.flush_now()
    }

    /// Closes the store: waits (up to a few seconds) until this is the last handle, drops it,
    /// and waits until sled has released its file lock, so the directory can be reopened at
    /// once — by this process or another.
    ///
    /// # Errors
    /// [`Error::Io`] when the lock is still held after the wait.
    pub fn close(self) -> Result<()> {
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        while Arc::strong_count(&self.writer) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let others = Arc::strong_count(&self.writer) - 1;
        if others > 0 {
            return Err(Error::Io(std::io::Error::other(format!(
                "the store is still held by {others} other handle(s) (routes or event streams not dropped); it closes when the last one is dropped"
            ))));
        }
        let path = self.path.clone();
        drop(self);
        // sled's background threads keep the lock a moment after the last handle drops.
        engine::wait_for_release(&path, deadline)
    }

    /// Bytes the store occupies on disk, as sled counts them.
    ///
    /// # Errors
    /// I/O errors reading the directory.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.engine()?.db.size_on_disk()?)
    }
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

/// How long [`Store::close`] waits for other handles and for the file lock.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

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
        Some(FORMAT_VERSION) => events::drop_v1_records(db),
        Some(older) => {
            tracing::info!(
                from = older,
                to = FORMAT_VERSION,
                "upgrading the store format"
            );
            events::migrate_v1_records(db)?;
            // The version comes after the copy: a crash before it reruns the (idempotent)
            // copy. The old records go only once the version says they are not needed.
            db.flush()?;
            meta.insert(keys::FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())?;
            db.flush()?;
            events::drop_v1_records(db)
        }
        None => {
            meta.insert(keys::FORMAT_VERSION, &FORMAT_VERSION.to_be_bytes())?;
            Ok(())
        }
    }
}

/// Why a transaction closure stopped: the request was refused, or the store is broken.
enum Failure {
    Refused(SessionError),
    Broken(Error),
}

type TxResult<T> = ConflictableTransactionResult<T, Failure>;

fn refuse<T>(error: SessionError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(Failure::Refused(error)))
}

fn broken(error: Error) -> ConflictableTransactionError<Failure> {
    ConflictableTransactionError::Abort(Failure::Broken(error))
}

/// Settles a write that refuses nothing: a refusal there would be a broken invariant.
fn settle_unrefused<T>(outcome: Result<T, SessionError>) -> Result<T> {
    outcome.map_err(|refused| {
        Error::corrupt(format!("a write that refuses nothing refused: {refused}"))
    })
}

/// Decodes inside a transaction.
fn decode_tx<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> TxResult<T> {
    codec::decode(bytes).map_err(broken)
}

/// Encodes inside a transaction.
fn encode_tx<T: serde::Serialize>(value: &T) -> TxResult<Vec<u8>> {
    codec::encode(value).map_err(broken)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::domain::{NewMessage, Session, TimeoutConfig, Timestamp};
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

    /// Appends `new` at the clock's time; it must be accepted.
    pub(crate) async fn appended(
        store: &Store,
        session_id: Uuid,
        new: NewMessage,
        clock: &Arc<crate::domain::ManualClock>,
    ) -> crate::domain::Message {
        let outcome = store.append_message(session_id, new, clock.clone()).await;
        outcome.expect("stored").expect("accepted").message
    }

    /// Appends `count` plain user messages ("m0", "m1", …) at the clock's time.
    pub(crate) async fn append_texts(
        store: &Store,
        session_id: Uuid,
        clock: &Arc<crate::domain::ManualClock>,
        count: usize,
    ) -> Vec<crate::domain::Message> {
        let mut messages = Vec::with_capacity(count);
        for i in 0..count {
            let new = text_message(&format!("m{i}"), None);
            messages.push(appended(store, session_id, new, clock).await);
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

    /// A store in a fresh temporary directory (kept alive by the returned guard).
    pub(crate) fn temp_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), &StoreOptions::default()).expect("open store");
        (store, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (store, dir) = test_support::temp_store();
        store.close().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let stored = db
            .open_tree("meta")
            .unwrap()
            .get(keys::FORMAT_VERSION)
            .unwrap()
            .unwrap();
        assert_eq!(stored.as_ref(), FORMAT_VERSION.to_be_bytes());
    }
}
