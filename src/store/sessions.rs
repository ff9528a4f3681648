//! Sessions: create, read, update under a transaction, delete, list and count.

use std::sync::Arc;

use uuid::Uuid;

use super::engine::Engine;
use super::keys::{self, Counter};
use super::messages::append_to;
use super::writer::{Announced, Work, WriteTime};
use super::{codec, refuse, settle_unrefused, Store};
use crate::domain::{
    Clock, DueNotices, EventKind, NewMessage, Session, SessionChange, SessionError, Timestamp,
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
        self.writer.write(WriteTime::At(created_at), work).await
    }

    /// The session, if stored (expired or not).
    ///
    /// # Errors
    /// Storage failures and undecodable records.
    pub fn session(&self, id: Uuid) -> Result<Option<Session>> {
        self.engine()?.session(id)
    }

    /// Reads the session, refuses if it is missing or expired at the write's `now`, applies
    /// `change`, and stores the result with its moved index entries, the event that
    /// announces the change and any lifecycle notice now due — all in one write. Returns
    /// the session after the change and the write's `now`, once on disk.
    ///
    /// # Errors
    /// Outer: storage failures. Inner: [`SessionError`] from the checks or from `change`.
    pub async fn update_session(
        &self,
        id: Uuid,
        clock: Arc<dyn Clock>,
        change: SessionChange,
    ) -> Result<Result<(Session, Timestamp), SessionError>> {
        let work: Work<(Session, Timestamp)> = Box::new(move |ctx| {
            let old = ctx.active_session(id)?;
            let mut new = old.clone();
            let announced = match change.apply(&mut new, ctx.now) {
                Ok(announced) => announced.map(Announced::Session),
                Err(refused) => return refuse(refused),
            };
            let saved = ctx.save_session(Some(&old), new, announced.as_slice())?;
            Ok((saved, ctx.now))
        });
        self.writer.write(WriteTime::Clock(clock), work).await
    }

    /// Records the lifecycle notices (`session.expiring`, `session.expired`) due for a
    /// session at the write's `now`. Returns whether any was due, once on disk.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn record_due_notices(&self, id: Uuid, clock: Arc<dyn Clock>) -> Result<bool> {
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
        settle_unrefused(self.writer.write(WriteTime::Clock(clock), work).await?)
    }

    /// Ids of sessions whose warning window opens or whose expiry falls in `[from, to]`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn sessions_with_deadlines_between(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Uuid>> {
        self.engine()?.sessions_with_deadlines_between(from, to)
    }

    /// Deletes a session: the record, its index entries and counts go in one write with a
    /// `session.deleted` event, so no client sees it half-deleted; its messages are then
    /// removed in batches. Returns the session as it was (once on disk), or `None` if there
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
        let work: Work<Option<(Session, bool)>> = Box::new(move |ctx| {
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
            let purge_later = ctx.tx.delete_session(&session)?;
            if let Deletion::Asked { .. } = deletion {
                ctx.announce(EventKind::SessionDeleted, &session);
            }
            Ok(Some((session, purge_later)))
        });
        let time = match deletion {
            Deletion::Asked { at } => WriteTime::At(at),
            Deletion::ExpiredBefore(cutoff) => WriteTime::At(cutoff),
        };
        let Some((deleted, purge_later)) = settle_unrefused(self.writer.write(time, work).await?)?
        else {
            return Ok(None);
        };
        if purge_later {
            // The delete is durable whatever happens here: a purge that fails is left to the
            // sweeper, which finds it by its marker.
            if let Err(error) = self.purge_messages(id).await {
                tracing::warn!(%id, %error, "purge left to the sweeper");
            }
        }
        Ok(Some(deleted))
    }

    /// Sessions deleted whose messages are not all removed yet (after a crash).
    ///
    /// # Errors
    /// Storage failures.
    pub fn pending_purges(&self) -> Result<Vec<Uuid>> {
        self.engine()?.pending_purges()
    }

    /// Ids of sessions whose `expiresAt` is at or before `cutoff`, soonest first.
    ///
    /// # Errors
    /// Storage failures.
    pub fn sessions_expired_by(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Timestamp, Uuid)>> {
        self.engine()?.sessions_expired_by(cutoff, limit)
    }

    /// Whole-store counts at `now`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn counts(&self, now: Timestamp) -> Result<SessionCounts> {
        self.engine()?.counts(now)
    }

    /// One page of sessions matching `query` at `now`, newest first.
    ///
    /// # Errors
    /// Storage failures.
    pub fn list_sessions(&self, query: &SessionQuery, now: Timestamp) -> Result<SessionPage> {
        self.engine()?.list_sessions(query, now)
    }
}

fn count_keys(deadlines: &sled::Tree, now: Timestamp) -> Result<u64> {
    let mut n = 0;
    for key in deadlines.range(..keys::deadline_upper_bound(now)).keys() {
        key?;
        n += 1;
    }
    Ok(n)
}

fn paginate(sessions: impl Iterator<Item = Session>, limit: usize, total: u64) -> SessionPage {
    let mut sessions: Vec<Session> = sessions.take(limit + 1).collect();
    let next = if sessions.len() > limit {
        sessions.truncate(limit);
        sessions.last().map(|s| s.id)
    } else {
        None
    };
    SessionPage {
        sessions,
        total,
        next,
    }
}

impl Engine {
    pub(super) fn session(&self, id: Uuid) -> Result<Option<Session>> {
        self.trees
            .sessions
            .get(keys::session(id))?
            .map(|bytes| codec::decode(&bytes))
            .transpose()
    }

    pub(super) fn sessions_with_deadlines_between(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Uuid>> {
        let mut ids = Vec::new();
        for deadlines in [&self.trees.warnings, &self.trees.expirations] {
            let range =
                keys::deadline(from, Uuid::nil()).to_vec()..keys::deadline_upper_bound(to).to_vec();
            for key in deadlines.range(range).keys() {
                ids.push(keys::parse_deadline(&key?)?.1);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    pub(super) fn pending_purges(&self) -> Result<Vec<Uuid>> {
        self.trees
            .purges
            .iter()
            .keys()
            .map(|key| keys::parse_session(&key?))
            .collect()
    }

    pub(super) fn sessions_expired_by(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Timestamp, Uuid)>> {
        self.trees
            .expirations
            .range(..keys::deadline_upper_bound(cutoff))
            .keys()
            .take(limit)
            .map(|key| keys::parse_deadline(&key?))
            .collect()
    }

    pub(super) fn counts(&self, now: Timestamp) -> Result<SessionCounts> {
        let total = self.counter(Counter::Sessions)?;
        let expired = count_keys(&self.trees.expirations, now)?;
        let warned = count_keys(&self.trees.warnings, now)?;
        Ok(SessionCounts {
            total,
            active: total.saturating_sub(expired),
            expired,
            // Every expired session also warns (warnsAt <= expiresAt), so the difference
            // is exactly the sessions inside their warning window.
            expiring_soon: warned.saturating_sub(expired),
        })
    }

    pub(super) fn list_sessions(
        &self,
        query: &SessionQuery,
        now: Timestamp,
    ) -> Result<SessionPage> {
        let matches_owner = |session: &Session| {
            query.agent_id.is_none_or(|agent| agent == session.agent_id)
                && query.user_id.is_none_or(|user| user == session.user_id)
        };
        let expired_matching = || -> Result<Vec<Session>> {
            let mut expired = Vec::new();
            for (_, id) in self.sessions_expired_by(now, usize::MAX)? {
                if let Some(session) = self.session(id)? {
                    if matches_owner(&session) {
                        expired.push(session);
                    }
                }
            }
            Ok(expired)
        };
        let stored_matching = self.counter(match (query.agent_id, query.user_id) {
            (None, None) => Counter::Sessions,
            (Some(agent), None) => Counter::Agent(agent),
            (None, Some(user)) => Counter::User(user),
            (Some(agent), Some(user)) => Counter::Pair(agent, user),
        })?;

        if query.status == StatusFilter::Expired {
            // The expired set is small (the sweeper bounds it), so sort it in memory.
            let mut expired = expired_matching()?;
            expired.sort_unstable_by_key(|s| std::cmp::Reverse(s.id));
            let total = expired.len() as u64;
            let rest = expired
                .into_iter()
                .filter(|s| query.after.is_none_or(|after| s.id < after));
            return Ok(paginate(rest, query.limit, total));
        }

        let total = match query.status {
            StatusFilter::All => stored_matching,
            _ => stored_matching.saturating_sub(expired_matching()?.len() as u64),
        };
        let wanted = |session: &Session| {
            matches_owner(session)
                && (query.status == StatusFilter::All || !session.is_expired(now))
        };
        let candidates: Box<dyn Iterator<Item = Result<Session>>> =
            match (query.user_id, query.agent_id) {
                (None, None) => {
                    let upper = query.after.map_or(std::ops::Bound::Unbounded, |after| {
                        std::ops::Bound::Excluded(keys::session(after).to_vec())
                    });
                    Box::new(
                        self.trees
                            .sessions
                            .range::<Vec<u8>, _>((std::ops::Bound::Unbounded, upper))
                            .values()
                            .rev()
                            .map(|value| codec::decode::<Session>(&value?)),
                    )
                }
                // A user usually has fewer sessions than an agent: walk the user's index.
                (Some(owner), _) => {
                    Box::new(self.owned_sessions(&self.trees.user_sessions, owner, query.after))
                }
                (None, Some(owner)) => {
                    Box::new(self.owned_sessions(&self.trees.agent_sessions, owner, query.after))
                }
            };
        let mut selected = Vec::new();
        for candidate in candidates {
            let session = candidate?;
            if wanted(&session) {
                selected.push(session);
                if selected.len() > query.limit {
                    break;
                }
            }
        }
        Ok(paginate(selected.into_iter(), query.limit, total))
    }

    /// The sessions in an owner index, newest first, strictly older than `after`.
    fn owned_sessions<'a>(
        &'a self,
        index: &sled::Tree,
        owner: Uuid,
        after: Option<Uuid>,
    ) -> impl Iterator<Item = Result<Session>> + 'a {
        let start = keys::owned_session(owner, Uuid::nil());
        let end = keys::owned_session(owner, after.unwrap_or(Uuid::max()));
        let end_bound = if after.is_some() {
            std::ops::Bound::Excluded(end)
        } else {
            std::ops::Bound::Included(end)
        };
        index
            .range((std::ops::Bound::Included(start), end_bound))
            .keys()
            .rev()
            .filter_map(move |key| {
                let loaded = key
                    .map_err(crate::Error::from)
                    .and_then(|key| keys::parse_owned_session(&key))
                    .and_then(|id| self.session(id));
                // An index entry without a record would be corruption; skip rather than fail
                // the listing, `sessiond check` reports it.
                loaded.transpose()
            })
    }

    fn counter(&self, counter: Counter) -> Result<u64> {
        match self.trees.counters.get(keys::counter(counter))? {
            Some(bytes) => keys::parse_count(&bytes),
            None => Ok(0),
        }
    }
}
