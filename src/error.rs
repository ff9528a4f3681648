//! The library's error type.

/// Errors from the store, its files and start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage engine failed other than on I/O (which is [`Error::Io`]).
    #[error("storage error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A file or socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A stored value could not be encoded or decoded.
    #[error("codec error: {0}")]
    Codec(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored data breaks an invariant of the layout.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The store was written by a newer sessiond.
    #[error("the store at {path} has format version {found}, newer than the {supported} this sessiond supports; upgrade sessiond")]
    NewerFormat {
        /// The data directory.
        path: String,
        /// The version found in the store.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The store refuses writes until the disk takes them again (after a write failed on a
    /// full disk, say); reads go on.
    #[error("the store is not taking writes: {0}")]
    Degraded(String),
    /// Making a batch of writes durable failed; each of its writes answers with the cause.
    #[error("flush to disk failed: {0}")]
    Flush(#[source] std::sync::Arc<Error>),
    /// The writer thread has stopped (the store is closing): no write can be taken.
    #[error("the store's writer has stopped")]
    WriterStopped,
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// Another process (or handle) holds the store.
    #[error("the store in {0} is in use (is sessiond running on it?)")]
    InUse(String),
    /// A write panicked; it changed nothing, and the writes batched with it went on.
    #[error("a write failed unexpectedly: {0}")]
    Panicked(String),
    /// The store's files are damaged: the storage engine failed on them.
    #[error("the store in {path} is damaged ({detail}); restore it from a backup, or move the directory aside to start with an empty store")]
    Damaged {
        /// The data directory.
        path: String,
        /// What failed.
        detail: String,
    },
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `work`, turning a panic into `Err(message)` without the panic's report on stderr:
/// for code that fails by panicking on bad input (the storage engine on damaged files),
/// where the caller reports the failure itself, in one line.
pub(crate) fn catch_quietly<T>(work: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static SWAP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _swap = SWAP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    std::panic::set_hook(report);
    outcome.map_err(|panic| panic_message(panic.as_ref()))
}

impl Error {
    /// Whether the store cannot serve this now (a disk failing or full, the store
    /// closing) rather than the request or the data being at fault: the API answers 503.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Io(_) | Error::Degraded(_) | Error::WriterStopped => true,
            Error::Flush(cause) => cause.is_unavailable(),
            _ => false,
        }
    }

    /// The store in `path` is damaged: the storage engine panicked on it with `panic`.
    pub(crate) fn engine_panicked(path: &std::path::Path, panic: &str) -> Self {
        Error::Damaged {
            path: path.display().to_string(),
            detail: format!("the storage engine failed reading it: {panic}"),
        }
    }

    /// A corruption error, logged where it is found.
    pub fn corrupt(what: impl Into<String>) -> Self {
        let what = what.into();
        tracing::error!(%what, "store corruption detected");
        Error::Corrupt(what)
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
