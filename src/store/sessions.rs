//! Sessions: create, read, update under a transaction, delete, list and count.

use uuid::Uuid;

use super::messages::append_to;
use super::metrics::RenewalKind;
use super::write::{refuse, settle_unrefused, Announced, Work, WriteTime};
use super::Store;
use crate::domain::{
    DueNotices, EventKind, Message, NewMessage, Session, SessionChange, SessionError, Timestamp,
};
use crate::error::Result;

/// Why a session is deleted.
#[derive(Clone, Copy)]
enum Deletion {
    /// A client asked, at `at`: announced with `session.deleted`.
    Asked { at: Timestamp },
    /// The sweeper's: only if it expired before the cutoff, and silently.
    ExpiredBefore(Timestamp),
}

/// Which sessions a listing includes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StatusFilter {
    /// Not yet expired.
    #[default]
    Active,
    /// Expired but not yet swept.
    Expired,
    /// Both.
    All,
}

/// A listing request.
#[derive(Clone, Debug, Default)]
pub struct SessionQuery {
    /// Only this agent's sessions.
    pub agent_id: Option<Uuid>,
    /// Only this user's sessions.
    pub user_id: Option<Uuid>,
    /// Which statuses to include.
    pub status: StatusFilter,
    /// Page size.
    pub limit: usize,
    /// Continue after this session (the last one of the previous page).
    pub after: Option<Uuid>,
}

/// One page of a listing, newest first.
#[derive(Clone, Debug)]
pub struct SessionPage {
    /// The sessions on this page.
    pub sessions: Vec<Session>,
    /// Sessions matching the query across all pages.
    pub total: u64,
    /// Where the next page starts, if there is one.
    pub next: Option<Uuid>,
}

/// Whole-store counts, from counters and deadline index ranges (never a full scan).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionCounts {
    /// Every stored session.
    pub total: u64,
    /// Not yet expired.
    pub active: u64,
    /// Expired, not yet swept.
    pub expired: u64,
    /// Active and inside their warning window.
    pub expiring_soon: u64,
}

impl Store {
    /// Stores a new session with its index entries and counts, and records
    /// `session.created` (plus any lifecycle notice already due). Returns once on disk.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn create_session(&self, session: Session) -> Result<()> {
        settle_unrefused(self.import_session(session, Vec::new()).await?).map(drop)
    }

    /// Stores a new session together with a conversation it already had, for bringing
    /// conversations over from another store: `history` becomes its messages, in order, all
    /// at the session's `createdAt`, each replying to the one before (so none may name a
    /// parent). Records `session.created` (plus any lifecycle notice already due) and no
    /// message events. Returns the stored session once on disk.
    ///
    /// # Errors
    /// Outer: storage failures. Inner: a session with this id exists or is being deleted,
    /// an author who is neither the user nor the agent, or a named parent; nothing is
    /// stored then.
    pub async fn import_session(
        &self,
        session: Session,
        history: Vec<NewMessage>,
    ) -> Result<Result<Session, SessionError>> {
        let created_at = session.created_at;
        let work: Work<Session> = Box::new(move |ctx| {
            // Everything that could refuse is checked before anything is written.
            if ctx.tx.session_id_taken(session.id)? {
                return refuse(SessionError::AlreadyExists(session.id));
            }
            for new in &history {
                if let Err(refused) = session.author_of(new) {
                    return refuse(refused);
                }
                // The history's own ids are made as it is stored, so no parent can be named.
                if let Some(parent_id) = new.parent_id {
                    return refuse(SessionError::InvalidParent {
                        session_id: session.id,
                        parent_id,
                    });
                }
            }
            let mut stored = session.clone();
            stored.message_count = 0;
            stored.last_message_id = None;
            for new in &history {
                append_to(ctx, &mut stored, new)?;
            }
            ctx.save_session(
                None,
                stored,
                &[Announced::Session(EventKind::SessionCreated)],
            )
        });
        self.write(WriteTime::At(created_at), work).await
    }

    /// Stores `session` and its whole history exactly as given: every field, id, seq,
    /// parent and time, as `sessiond import` moves a store. Records no events: the
    /// session's past is not news.
    ///
    /// Returns `Ok(Err(..))`, storing nothing, when the history is not whole
    /// ([`Session::check_history`]), or the session id or a message id is taken.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn restore_session(
        &self,
        session: Session,
        messages: Vec<Message>,
    ) -> Result<Result<(), SessionError>> {
        if let Err(refused) = session.check_history(&messages) {
            return Ok(Err(refused));
        }
        let work: Work<()> = Box::new(move |ctx| {
            if ctx.tx.session_id_taken(session.id)? {
                return refuse(SessionError::AlreadyExists(session.id));
            }
            for message in &messages {
                if ctx.tx.message_id_taken(message.id)? {
                    return refuse(SessionError::MessageExists(message.id));
                }
            }
            ctx.tx.insert_session(&session)?;
            for message in &messages {
                ctx.tx.insert_message(message)?;
            }
            Ok(())
        });
        self.write(WriteTime::Now, work).await
    }

    /// The session, if stored (expired or not).
    ///
    /// # Errors
    /// Storage failures and undecodable records.
    pub async fn session(&self, id: Uuid) -> Result<Option<Session>> {
        self.backend.session(id).await
    }

    /// Reads the session, refuses if it is missing or expired at the write's `now` (read
    /// from the store's clock), applies
    /// `change`, and stores the result with its moved index entries, the event that
    /// announces the change and any lifecycle notice now due — all in one write. Returns
    /// the session after the change and the write's `now`, once on disk.
    ///
    /// # Errors
    /// Outer: storage failures. Inner: [`SessionError`] from the checks or from `change`.
    pub async fn update_session(
        &self,
        id: Uuid,
        change: SessionChange,
    ) -> Result<Result<(Session, Timestamp), SessionError>> {
        let work: Work<(Session, Timestamp, bool)> = Box::new(move |ctx| {
            let old = ctx.active_session(id)?;
            let mut new = old.clone();
            let announced = match change.apply(&mut new, ctx.now) {
                Ok(announced) => announced,
                Err(refused) => return refuse(refused),
            };
            let renewed = announced == Some(EventKind::SessionRenewed);
            let announced = announced.map(Announced::Session);
            let saved = ctx.save_session(Some(&old), new, announced.as_slice())?;
            Ok((saved, ctx.now, renewed))
        });
        let changed = self.write(WriteTime::Now, work).await?;
        Ok(changed.map(|(session, now, renewed)| {
            match change {
                SessionChange::Renew if renewed => self.metrics.renewed(RenewalKind::Manual),
                SessionChange::Heartbeat if renewed => {
                    self.metrics.renewed(RenewalKind::Heartbeat);
                }
                _ => {}
            }
            (session, now)
        }))
    }

    /// Records the lifecycle notices (`session.expiring`, `session.expired`) due for a
    /// session at the write's `now`. Returns whether any was due, once on disk.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn record_due_notices(&self, id: Uuid) -> Result<bool> {
        let work: Work<bool> = Box::new(move |ctx| {
            let Some(old) = ctx.tx.session(id)? else {
                return Ok(false);
            };
            if old.due_notices(ctx.now) == DueNotices::default() {
                return Ok(false);
            }
            ctx.save_session(Some(&old), old.clone(), &[])?;
            Ok(true)
        });
        settle_unrefused(self.write(WriteTime::Now, work).await?)
    }

    /// Ids of sessions whose warning window opens or whose expiry falls in `[from, to]`.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn sessions_with_deadlines_between(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Uuid>> {
        self.backend.sessions_with_deadlines_between(from, to).await
    }

    /// Deletes a session: the record, its index entries and counts go in one write with a
    /// `session.deleted` event, so no client sees it half-deleted (the engine may remove
    /// the message records after, in writes of their own). Returns the session as it was (once on disk), or `None` if there
    /// was none.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn delete_session(&self, id: Uuid, now: Timestamp) -> Result<Option<Session>> {
        self.delete_session_when(id, Deletion::Asked { at: now })
            .await
    }

    /// Deletes the session if it expired before `cutoff` (checked inside the write, so a
    /// renewal that came meanwhile keeps it), without an event: the sweeper's deletion.
    ///
    /// # Errors
    /// Storage failures.
    pub(crate) async fn delete_session_expired_before(
        &self,
        id: Uuid,
        cutoff: Timestamp,
    ) -> Result<Option<Session>> {
        self.delete_session_when(id, Deletion::ExpiredBefore(cutoff))
            .await
    }

    async fn delete_session_when(&self, id: Uuid, deletion: Deletion) -> Result<Option<Session>> {
        let work: Work<Option<Session>> = Box::new(move |ctx| {
            let Some(session) = ctx.tx.session(id)? else {
                return Ok(None);
            };
            match deletion {
                Deletion::ExpiredBefore(cutoff) if session.expires_at() >= cutoff => {
                    return Ok(None)
                }
                Deletion::ExpiredBefore(_) => {}
                Deletion::Asked { .. } => {}
            }
            ctx.tx.delete_session(&session)?;
            if let Deletion::Asked { .. } = deletion {
                ctx.announce(EventKind::SessionDeleted, &session);
            }
            Ok(Some(session))
        });
        let time = match deletion {
            Deletion::Asked { at } => WriteTime::At(at),
            Deletion::ExpiredBefore(cutoff) => WriteTime::At(cutoff),
        };
        let Some(deleted) = settle_unrefused(self.write(time, work).await?)? else {
            return Ok(None);
        };
        // The delete is durable whatever happens here: what fails is left to the sweeper.
        if let Err(error) = self.backend.finish_deletion(id).await {
            tracing::warn!(%id, %error, "finishing the deletion is left to the sweeper");
        }
        Ok(Some(deleted))
    }

    /// Finishes the deletions a crash left unfinished. Returns how many.
    ///
    /// # Errors
    /// Storage failures.
    pub(crate) async fn finish_deletions(&self) -> Result<usize> {
        self.backend.finish_deletions().await
    }

    /// Ids of sessions whose `expiresAt` is at or before `cutoff`, soonest first.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn sessions_expired_by(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Timestamp, Uuid)>> {
        self.backend.sessions_expired_by(cutoff, limit).await
    }

    /// Whole-store counts at `now`.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn counts(&self, now: Timestamp) -> Result<SessionCounts> {
        self.backend.counts(now).await
    }

    /// One page of sessions matching `query` at `now`, newest first.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn list_sessions(&self, query: SessionQuery, now: Timestamp) -> Result<SessionPage> {
        self.backend.list_sessions(query, now).await
    }
}
