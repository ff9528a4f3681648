//! The seam between the store's rules and a storage engine. [`Store`](super::Store) holds
//! one [`Backend`]; sled's is in `sled_backend/`, and it is the one to read when adding
//! another.
//!
//! # The contract an engine meets
//! - **Writes.** [`Backend::submit`] queues a [`Job`]. The engine runs jobs in batches, each
//!   batch one transaction over its [`WriteOps`](super::write::WriteOps), numbers each
//!   job's events from the next free id, and answers a job only once its batch is durable
//!   (on disk, or committed by a database that says so). A refused job changed nothing and
//!   the rest of its batch commits; a broken one fails alone.
//! - **Event ids** increase in commit order as every reader sees them: a reader that has
//!   seen id `n` never later finds a new event below `n`.
//! - **Live events.** A batch's events go to the [`EventBus`] after its commit, and are
//!   published only once durable: a live stream never shows an event a crash could take
//!   back.
//! - **Reads** never see half a write: a session, its indexes, counts and messages, and
//!   the events of one write appear together or not at all.
//! - **Reads are async.** An engine that does I/O for a read awaits it; one that answers
//!   from memory may answer at once. Callers always await.
//! - **Chores** of the engine (sled's deferred message purges, statistics, `check`) stay
//!   behind the trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::events::{EventBus, EventReplay};
use super::messages::{MessagePage, MessageQuery};
use super::sessions::{SessionCounts, SessionPage, SessionQuery};
use super::write::Job;
use super::{CheckReport, Progress, TreeStats};
use crate::domain::{Event, Message, Session, SessionError, Timestamp};
use crate::error::Result;

/// A read in progress.
pub(super) type Reading<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What waits, once the last handle on a closed engine is dropped, until its files can be
/// opened again.
pub(super) type Release = Box<dyn FnOnce(Instant) -> Result<()> + Send>;

/// A storage engine under the store.
pub(super) trait Backend: Send + Sync + 'static {
    /// Queues a write; the engine answers it through the job.
    ///
    /// # Errors
    /// [`Error::WriterStopped`](crate::Error::WriterStopped) once the engine takes no
    /// more writes.
    fn submit(&self, job: Box<dyn Job>) -> Result<()>;

    /// Where the engine publishes durable events.
    fn bus(&self) -> &Arc<EventBus>;

    /// The engine's name, as metrics label it: `sled`, `postgres`.
    fn engine(&self) -> &'static str;

    /// Waits, briefly, until every stored event through `through` is published here: for a
    /// reader resuming after an id that another process sharing the store showed it.
    fn catch_up_events(&self, through: u64) -> Reading<'_, ()>;

    /// Why writes are refused now, if they are (a full disk, say); reads go on.
    fn degraded(&self) -> Option<String>;

    /// Makes everything committed durable now, blocking the calling thread.
    fn flush(&self) -> Result<()>;

    /// The stored session, expired or not.
    fn session(&self, id: Uuid) -> Reading<'_, Option<Session>>;

    /// One page of sessions matching `query` at `now`, newest first.
    fn list_sessions(&self, query: SessionQuery, now: Timestamp) -> Reading<'_, SessionPage>;

    /// Whole-store counts at `now`, without a scan of the sessions.
    fn counts(&self, now: Timestamp) -> Reading<'_, SessionCounts>;

    /// Ids of sessions whose warning window opens or whose expiry falls in `[from, to]`.
    fn sessions_with_deadlines_between(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> Reading<'_, Vec<Uuid>>;

    /// Sessions whose `expiresAt` is at or before `cutoff`, soonest first, at most `limit`.
    fn sessions_expired_by(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Reading<'_, Vec<(Timestamp, Uuid)>>;

    /// A message of this session, by id.
    fn message(&self, session_id: Uuid, message_id: Uuid) -> Reading<'_, Option<Message>>;

    /// The last `limit` messages of the branch from the root down to `message_id`, oldest
    /// first; `MessageNotFound` when it is not in this session, `NotFound` when the
    /// session was deleted while the branch was read.
    fn thread(
        &self,
        session_id: Uuid,
        message_id: Uuid,
        limit: usize,
    ) -> Reading<'_, std::result::Result<MessagePage, SessionError>>;

    /// One page of a session's messages; `InvalidParent` when `query.parent_id` is not a
    /// message of this session.
    fn page_messages<'a>(
        &'a self,
        session: &'a Session,
        query: &'a MessageQuery,
    ) -> Reading<'a, std::result::Result<MessagePage, SessionError>>;

    /// The stored events a replay asks for.
    fn replay(&self, replay: EventReplay) -> Reading<'_, Vec<Event>>;

    /// Finishes what the deletion of `session_id` left for later, if anything.
    fn finish_deletion(&self, session_id: Uuid) -> Reading<'_, ()>;

    /// Finishes every deletion left unfinished (by a crash, say). Returns how many.
    fn finish_deletions(&self) -> Reading<'_, usize>;

    /// Removes events that all happened before `cutoff`, keeping the newest so that ids
    /// go on increasing across restarts. Returns how many went.
    fn trim_events(&self, cutoff: Timestamp) -> Reading<'_, usize>;

    /// Verifies every record against its indexes and counts, telling `progress` how far it
    /// got. Read-only.
    fn check(&self, progress: &dyn Progress) -> Result<CheckReport>;

    /// Entries and bytes per tree or table, telling `progress` how far it got.
    fn tree_stats(&self, progress: &dyn Progress) -> Result<Vec<TreeStats>>;

    /// Bytes the store occupies on disk.
    fn size_on_disk(&self) -> Result<u64>;

    /// [`Backend::size_on_disk`], read the way the engine's other reads are: for a server
    /// reporting its size while it serves.
    fn stored_bytes(&self) -> Reading<'_, u64>;

    /// What to wait for after the last handle is dropped, before the store can be opened
    /// again.
    fn release(&self) -> Release;

    /// For tests that look at an engine's own layout.
    #[cfg(test)]
    fn as_any(&self) -> &dyn std::any::Any;
}
