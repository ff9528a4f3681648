//! The open storage engine, and how the store gets it back after an I/O error.
//!
//! sled 0.34 fails every operation once it has seen an I/O error (a full disk, say), reads
//! of pages outside its cache included, until it is reopened; and opening it needs some
//! free space, for it zeroes the rest of its last segment. So the store keeps a disk
//! reserve: a file of allocated space beside sled's. When a write fails, the writer frees
//! the reserve, reopens sled (reads go on from the new handle) and refuses writes, without
//! touching sled, until the reserve can be allocated again: then the disk has room and
//! writes resume. A server started on a full disk does the same.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use sled::transaction::TransactionalTree;
use sled::Tree;

use crate::error::{Error, Result};
use crate::store::StoreOptions;

/// Declares the store's trees once: each field with the name sled stores it under. From
/// that come [`Trees`] (the open trees), [`WriteTx`] (the same trees inside a write's
/// transaction) and [`Trees::named`] (for statistics and checks).
macro_rules! trees {
    ($($(#[$doc:meta])* $field:ident: $name:expr,)*) => {
        /// The store's trees (all but `meta`): what a write may change and what reads
        /// look in.
        #[derive(Clone)]
        pub(super) struct Trees {
            $($(#[$doc])* pub(super) $field: Tree,)*
        }

        /// The trees of [`Trees`] inside a write's transaction.
        pub(super) struct WriteTx<'a> {
            $($(#[$doc])* pub(super) $field: &'a TransactionalTree,)*
            /// The first event id of the batch this transaction writes.
            pub(super) batch_first_event_id: u64,
        }

        impl Trees {
            pub(super) fn open(db: &sled::Db) -> Result<Trees> {
                Ok(Trees {
                    $($field: db.open_tree($name)?,)*
                })
            }

            /// Every tree with its stored name, in declaration order.
            pub(super) fn named(&self) -> Vec<(&'static str, &Tree)> {
                vec![$(($name, &self.$field),)*]
            }
        }

        impl<'a> WriteTx<'a> {
            /// The write's view of the trees, from the transaction over [`Trees::named`],
            /// for a batch whose events start at `batch_first_event_id`.
            pub(super) fn new(
                views: &'a [TransactionalTree],
                batch_first_event_id: u64,
            ) -> WriteTx<'a> {
                let mut views = views.iter();
                WriteTx {
                    $($field: views.next().expect("one transaction view per tree"),)*
                    batch_first_event_id,
                }
            }
        }
    };
}

trees! {
    /// session id -> Session.
    sessions: "sessionid_session",
    /// session id ++ seq (BE) -> Message. Keys are never overwritten.
    messages: "sessionidseq_message",
    /// message id -> session id ++ seq (BE).
    message_locations: "messageid_sessionidseq",
    /// parent message id ++ child seq (BE) -> session id. The replies of each message.
    children: "parentidseq",
    /// user id ++ session id -> ().
    user_sessions: "useridsessionid",
    /// agent id ++ session id -> ().
    agent_sessions: "agentidsessionid",
    /// expiresAt (BE micros) ++ session id -> (). One entry per stored session.
    expirations: "expiresatsessionid",
    /// warnsAt (BE micros) ++ session id -> (). One entry per stored session.
    warnings: "warnatsessionid",
    /// counter key -> u64 (BE): sessions in all, per agent, per user, per (agent, user).
    counters: "counterkey_count",
    /// session id -> (). Deleted sessions whose messages are still being removed.
    purges: "sessionid_purge",
    /// first event id (BE) -> the events of one write. The durable event log.
    events: super::event_records::RECORDS_TREE,
    /// owner kind ++ owner id ++ first event id (BE) -> last event id (BE): where the log
    /// holds an owner's events. A session's entry names one record; an agent's or a
    /// user's, the stretch of one write batch from its first event to the owner's last
    /// one in it (records of other owners in between are skipped when read). An entry
    /// written before values were kept is empty and names one record.
    event_index: "ownerideventid",
}

/// One open sled instance: its handle, its trees and the files a flush syncs.
pub(super) struct Engine {
    pub(super) db: sled::Db,
    pub(super) trees: Trees,
    /// The trees a write batch's transaction spans, in [`Trees::named`] order (the
    /// order [`WriteTx::new`] reads them in).
    pub(super) batch_trees: Vec<Tree>,
    pub(super) files: StoreFiles,
}

impl Engine {
    fn open(path: &Path, options: &StoreOptions) -> Result<Engine> {
        let db = open_db(path, options)?;
        let trees = Trees::open(&db)?;
        let files = StoreFiles {
            log: File::open(path.join("db"))?,
            blobs: path.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        };
        let batch_trees = trees
            .named()
            .into_iter()
            .map(|(_, tree)| tree.clone())
            .collect();
        Ok(Engine {
            db,
            trees,
            batch_trees,
            files,
        })
    }

    /// Flushes sled's buffers and syncs its files: what is committed is then on disk.
    ///
    /// # Errors
    /// The flush's error as it is; a failed sync as [`Error::Flush`]: the data may be in
    /// the page cache, readable, and still not on disk.
    pub(super) fn sync(&self) -> Result<()> {
        self.db.flush()?;
        self.files
            .sync()
            .map_err(|error| Error::Flush(std::sync::Arc::new(error)))
    }
}

/// The files a flush must sync for the data to survive power loss.
pub(super) struct StoreFiles {
    /// sled's log: every write goes there.
    log: File,
    /// sled writes a tree node larger than a quarter segment (128 KiB) to a file of its own
    /// here, and never syncs it.
    blobs: PathBuf,
    /// Blob files already synced (their contents never change).
    pub(super) synced_blobs: Mutex<HashSet<OsString>>,
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

/// The disk reserve's file, in the data directory.
const RESERVE_FILE: &str = "sessiond.reserve";

/// How long a read waits for the engine while it is being reopened: it holds a runtime
/// thread meanwhile, so not long; past it the read answers 503.
const REOPEN_WAIT: Duration = Duration::from_secs(1);

/// How long a reopen waits for reads still holding the failed engine.
const HOLDERS_WAIT: Duration = Duration::from_secs(5);

/// Where reads and the writer get the engine, and whether the store takes writes.
pub(super) struct EngineSlot {
    path: PathBuf,
    options: StoreOptions,
    /// The engine: `None` only while it is being reopened, or when reopening it failed.
    /// Every read takes it, so it is behind a read-write lock; it changes only under
    /// `state`'s lock, which waiting readers hold while they check it.
    current: RwLock<Option<Arc<Engine>>>,
    state: Mutex<SlotState>,
    /// Signalled when a reopened engine is in place.
    reopened: Condvar,
}

struct SlotState {
    /// Whether a reopen is under way: reads wait for it, briefly.
    reopening: bool,
    /// Why writes are refused, while they are.
    degraded: Option<String>,
}

impl EngineSlot {
    /// Opens the engine in `path` and allocates the disk reserve. On a full disk the
    /// reserve is given up to open the engine, which then starts refusing writes.
    pub(super) fn open(path: &Path, options: &StoreOptions) -> Result<EngineSlot> {
        let (engine, mut degraded) = match Engine::open(path, options) {
            Err(error) if is_disk_full(&error) && release_reserve(path) => {
                tracing::error!(%error, "opening the store on a full disk; its reserve was given up");
                (Engine::open(path, options)?, Some(refusal_reason(&error)))
            }
            opened => (opened?, None),
        };
        if degraded.is_none() {
            if let Err(error) = allocate_reserve(path, options.disk_reserve_bytes) {
                degraded = Some(refusal_reason(&error.into()));
            }
        }
        if let Some(reason) = &degraded {
            tracing::warn!(%reason, "the store refuses writes until the disk takes them");
        }
        Ok(EngineSlot {
            path: path.to_path_buf(),
            options: options.clone(),
            current: RwLock::new(Some(Arc::new(engine))),
            state: Mutex::new(SlotState {
                reopening: false,
                degraded,
            }),
            reopened: Condvar::new(),
        })
    }

    fn current(&self) -> Option<Arc<Engine>> {
        // A single assignment under the lock: a poisoned lock still holds a whole value.
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `engine` in place; the caller holds `state`'s lock.
    fn set_current(&self, engine: Option<Arc<Engine>>) -> Option<Arc<Engine>> {
        std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            engine,
        )
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Every change under the lock is a single assignment: a poisoned state is usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The engine; while it is being reopened, waits a moment for it.
    ///
    /// # Errors
    /// [`Error::Degraded`] when no engine is open (reopening failed).
    pub(super) fn engine(&self) -> Result<Arc<Engine>> {
        if let Some(engine) = self.current() {
            return Ok(engine);
        }
        let state = self.lock();
        let (state, _) = self
            .reopened
            .wait_timeout_while(state, REOPEN_WAIT, |state| {
                self.current().is_none() && state.reopening
            })
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.current() {
            Some(engine) => Ok(engine),
            None => Err(Error::Degraded(
                state
                    .degraded
                    .clone()
                    .unwrap_or_else(|| "the store is being reopened".into()),
            )),
        }
    }

    /// Why writes are refused, while they are.
    pub(super) fn degraded(&self) -> Option<String> {
        self.lock().degraded.clone()
    }

    /// After a failed write: refuses writes from now on, frees the disk reserve and
    /// reopens the engine, which sled needs before it works again. Returns the new engine,
    /// or `None` when it could not be opened (then [`EngineSlot::restore`] tries again).
    /// Only the writer thread calls this, with no engine of its own in hand.
    pub(super) fn reopen_after(&self, failure: &Error) -> Option<Arc<Engine>> {
        let reason = refusal_reason(failure);
        tracing::error!(%reason, "a write failed; the store reopens and refuses writes until the disk takes them");
        let failed = {
            let mut state = self.lock();
            state.degraded = Some(reason);
            state.reopening = true;
            self.set_current(None)
        };
        release_reserve(&self.path);
        if let Some(failed) = failed {
            // Reads in flight hold the failed engine for a moment; sled's lock goes with
            // the last handle.
            let deadline = Instant::now() + HOLDERS_WAIT;
            while Arc::strong_count(&failed) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            drop(failed);
        }
        self.reopen()
    }

    /// While writes are refused: reopens the engine if it is not open, then allocates the
    /// disk reserve; once both succeed, writes are taken again. Only the writer thread
    /// calls this. Returns whether writes are taken.
    pub(super) fn restore(&self) -> bool {
        let closed = self.current().is_none();
        if closed && self.reopen().is_none() {
            return false;
        }
        if let Err(error) = allocate_reserve(&self.path, self.options.disk_reserve_bytes) {
            let mut state = self.lock();
            state.degraded = Some(refusal_reason(&error.into()));
            return false;
        }
        self.lock().degraded = None;
        tracing::info!("the disk takes writes again; the store takes writes");
        true
    }

    fn reopen(&self) -> Option<Arc<Engine>> {
        let opened = wait_for_release(&self.path, Instant::now() + HOLDERS_WAIT)
            .and_then(|()| Engine::open(&self.path, &self.options));
        let mut state = self.lock();
        state.reopening = false;
        let reopened = match opened {
            Ok(engine) => {
                let engine = Arc::new(engine);
                self.set_current(Some(engine.clone()));
                Some(engine)
            }
            Err(error) => {
                tracing::error!(%error, "reopening the store failed; trying again in a moment");
                None
            }
        };
        drop(state);
        // Readers waiting for the engine answer now: with it, or with a 503.
        self.reopened.notify_all();
        reopened
    }
}

/// Why writes are refused after `failure`.
fn refusal_reason(failure: &Error) -> String {
    if is_disk_full(failure) {
        "the disk is full; writes resume once space is freed".into()
    } else {
        format!("writing to disk failed ({failure}); writes resume once the disk takes them")
    }
}

fn is_disk_full(error: &Error) -> bool {
    match error {
        Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
        Error::Flush(cause) => is_disk_full(cause),
        _ => false,
    }
}

/// Smallest reserve kept on a small file system: room for sled to reopen, which zeroes
/// the rest of its last segment (512 KiB at most), twice over.
const MIN_RESERVE: u64 = 1024 * 1024;

/// The reserve for the file system holding `path`: at most `wanted`, and at most a
/// sixteenth of the file system, so a small one is not taken up by it.
fn reserve_size(path: &Path, wanted: u64) -> u64 {
    match file_system_size(path) {
        Some(total) => wanted.min((total / 16).max(MIN_RESERVE)),
        None => wanted,
    }
}

#[cfg(unix)]
fn file_system_size(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer for one statvfs, filled on success.
    if unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let stats = unsafe { stats.assume_init() };
    #[allow(
        clippy::useless_conversion,
        reason = "the field types differ between platforms"
    )]
    Some(u64::from(stats.f_blocks).saturating_mul(u64::from(stats.f_frsize)))
}

#[cfg(not(unix))]
fn file_system_size(_path: &Path) -> Option<u64> {
    None
}

/// Makes sure the reserve file holds its share of allocated space (none when `wanted` is
/// 0).
fn allocate_reserve(path: &Path, wanted: u64) -> std::io::Result<()> {
    if wanted == 0 {
        return Ok(());
    }
    let bytes = reserve_size(path, wanted);
    let reserve = path.join(RESERVE_FILE);
    if std::fs::metadata(&reserve).is_ok_and(|found| found.len() >= bytes) {
        return Ok(());
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&reserve)?;
    if let Err(error) = allocate(&file, bytes) {
        // A half-allocated reserve would pass for a whole one next time.
        drop(file);
        let _ = std::fs::remove_file(&reserve);
        return Err(error);
    }
    file.sync_all()?;
    File::open(path)?.sync_all()
}

#[cfg(target_os = "linux")]
fn allocate(file: &File, bytes: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let length = libc::off_t::try_from(bytes).map_err(std::io::Error::other)?;
    // SAFETY: the descriptor is open for writing for the whole call.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, length) } {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => write_zeros(file, bytes),
        code => Err(std::io::Error::from_raw_os_error(code)),
    }
}

#[cfg(not(target_os = "linux"))]
fn allocate(file: &File, bytes: u64) -> std::io::Result<()> {
    write_zeros(file, bytes)
}

/// Allocates by writing: for file systems without `posix_fallocate`.
fn write_zeros(mut file: &File, bytes: u64) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    const CHUNK: usize = 1024 * 1024;
    let zeros = vec![0u8; CHUNK];
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut left = bytes;
    while left > 0 {
        let now = usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK));
        file.write_all(&zeros[..now])?;
        left -= now as u64;
    }
    Ok(())
}

/// Deletes the reserve file; whether there was one.
fn release_reserve(path: &Path) -> bool {
    match std::fs::remove_file(path.join(RESERVE_FILE)) {
        Ok(()) => true,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => {
            tracing::error!(%error, "deleting the disk reserve failed");
            false
        }
    }
}

/// How long to wait for a previous handle's file lock: sled 0.34's background threads can
/// hold it for a moment after the last `Db` handle is dropped.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Whether sled failed to open because another handle still holds the store's lock. sled
/// 0.34 reports it as an `Other` error carrying this message.
fn is_held_lock(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::WouldBlock
        || error.to_string().starts_with("could not acquire lock")
}

/// Waits until no sled handle holds the store's lock, or `deadline` passes.
pub(super) fn wait_for_release(path: &Path, deadline: Instant) -> Result<()> {
    let log = match File::open(path.join("db")) {
        Ok(log) => log,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    loop {
        match log.try_lock() {
            Ok(()) => return Ok(log.unlock()?),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Io(std::io::Error::other(
                    "the store is still locked after closing",
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}

fn open_db(path: &Path, options: &StoreOptions) -> Result<sled::Db> {
    let started = Instant::now();
    let damaged = |detail: String| Error::Damaged {
        path: path.display().to_string(),
        detail,
    };
    loop {
        // sled 0.34 panics on some damaged logs (a truncated one, for instance).
        let opened = crate::error::catch_quietly(|| {
            sled::Config::new()
                .path(path)
                .cache_capacity(options.cache_capacity_bytes)
                // sled records the choice in the store: a compressed store needs a build
                // with the feature, and the other way round.
                .use_compression(cfg!(feature = "compression"))
                .open()
        })
        .map_err(|panic| Error::engine_panicked(path, &panic))?;
        match opened {
            Err(sled::Error::Corruption { at, .. }) => {
                return Err(damaged(match at {
                    Some(at) => format!("the storage engine found corrupt data at {at}"),
                    None => "the storage engine found corrupt data".into(),
                }));
            }
            Err(sled::Error::Io(e)) if is_held_lock(&e) => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(Error::InUse(path.display().to_string()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}
