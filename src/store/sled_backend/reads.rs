//! The reads, over sled's trees: sessions (by id, listed, counted, by deadline) and
//! messages (by id, a branch, a page).

use uuid::Uuid;

use super::codec;
use super::engine::Engine;
use super::keys::{self, Counter};
use crate::domain::{Message, Session, SessionError, Timestamp};
use crate::error::{Error, Result};
use crate::store::{
    MessagePage, MessageQuery, SessionCounts, SessionPage, SessionQuery, StatusFilter,
};

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
        // Every entry of a bucket that may hold a deadline in [from, to]: a superset.
        let (first, last) = (keys::deadline_bucket(from), keys::deadline_bucket(to));
        for deadlines in [&self.trees.warnings, &self.trees.expirations] {
            let range = keys::deadline(first, Uuid::nil()).to_vec()
                ..keys::deadline_upper_bound(last).to_vec();
            for key in deadlines.range(range).keys() {
                ids.push(keys::parse_deadline(&key?)?.1);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Whether a deletion of this session left its messages to remove.
    pub(super) fn purge_pending(&self, session_id: Uuid) -> Result<bool> {
        Ok(self.trees.purges.contains_key(keys::session(session_id))?)
    }

    /// Deleted sessions whose messages are not all removed yet.
    pub(super) fn pending_purges(&self) -> Result<Vec<Uuid>> {
        self.trees
            .purges
            .iter()
            .keys()
            .map(|key| keys::parse_session(&key?))
            .collect()
    }

    /// Sessions whose expiry is at or before `cutoff`, soonest first (by the second each
    /// expires in, whose end comes with it).
    pub(super) fn sessions_expired_by(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Timestamp, Uuid)>> {
        self.due(&self.trees.expirations, cutoff, Session::expires_at)
            .take(limit)
            .collect()
    }

    /// The entries of `index` whose session's deadline (`deadline_of`) is at or before
    /// `now`, soonest second first: those of seconds ended by then, and those of `now`'s
    /// own second whose session says so.
    fn due<'a>(
        &'a self,
        index: &'a sled::Tree,
        now: Timestamp,
        deadline_of: fn(&Session) -> Timestamp,
    ) -> impl Iterator<Item = Result<(Timestamp, Uuid)>> + 'a {
        let through_open_second = keys::deadline_upper_bound(keys::deadline_bucket(now));
        index
            .range(..through_open_second)
            .keys()
            .filter_map(move |key| {
                let entry = key
                    .map_err(Error::from)
                    .and_then(|key| keys::parse_deadline(&key));
                match entry {
                    Ok((second, _)) if second <= now => Some(entry),
                    Ok((_, id)) => match self.session(id) {
                        Ok(session) => session
                            .is_some_and(|session| deadline_of(&session) <= now)
                            .then_some(entry),
                        Err(error) => Some(Err(error)),
                    },
                    Err(error) => Some(Err(error)),
                }
            })
    }

    pub(super) fn counts(&self, now: Timestamp) -> Result<SessionCounts> {
        let total = self.counter(Counter::Sessions)?;
        let count = |index, deadline_of| {
            self.due(index, now, deadline_of)
                .try_fold(0, |due, entry| entry.map(|_| due + 1))
        };
        let expired = count(&self.trees.expirations, Session::expires_at)?;
        let warned = count(&self.trees.warnings, Session::warns_at)?;
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

    pub(super) fn counter(&self, counter: Counter) -> Result<u64> {
        match self.trees.counters.get(keys::counter(counter))? {
            Some(bytes) => keys::parse_count(&bytes),
            None => Ok(0),
        }
    }
}

impl Engine {
    /// The seq of the last message stored for a session (deleted or not).
    pub(super) fn last_message_seq(&self, session_id: Uuid) -> Result<Option<u64>> {
        match self
            .trees
            .messages
            .scan_prefix(keys::session(session_id))
            .keys()
            .next_back()
        {
            Some(last) => Ok(Some(keys::parse_message(&last?)?.1)),
            None => Ok(None),
        }
    }

    pub(super) fn message(&self, session_id: Uuid, message_id: Uuid) -> Result<Option<Message>> {
        let Some(location) = self
            .trees
            .message_locations
            .get(keys::session(message_id))?
        else {
            return Ok(None);
        };
        let (owner, seq) = keys::parse_message(&location)?;
        if owner != session_id {
            return Ok(None);
        }
        self.message_at(session_id, seq)
    }

    pub(super) fn message_at(&self, session_id: Uuid, seq: u64) -> Result<Option<Message>> {
        self.trees
            .messages
            .get(keys::message(session_id, seq))?
            .map(|bytes| codec::decode(&bytes))
            .transpose()
    }

    pub(super) fn thread(
        &self,
        session_id: Uuid,
        message_id: Uuid,
        limit: usize,
    ) -> Result<Result<MessagePage, SessionError>> {
        let Some(mut current) = self.message(session_id, message_id)? else {
            return Ok(Err(SessionError::MessageNotFound {
                session_id,
                message_id,
            }));
        };
        let mut branch = Vec::new();
        let has_more = loop {
            let parent = current.parent_id;
            branch.push(current);
            let Some(parent_id) = parent else { break false };
            if branch.len() == limit {
                break true;
            }
            current = match self.message(session_id, parent_id)? {
                Some(message) => message,
                None => {
                    return self
                        .vanished(session_id, || format!("parent {parent_id} is missing"))
                        .map(Err)
                }
            };
        };
        branch.reverse();
        Ok(Ok(MessagePage {
            messages: branch,
            has_more,
        }))
    }

    pub(super) fn page_messages(
        &self,
        session: &Session,
        query: &MessageQuery,
    ) -> Result<Result<MessagePage, SessionError>> {
        let parent = match query.parent_id {
            None => None,
            Some(parent_id) => match self.message(session.id, parent_id)? {
                Some(parent) => Some(parent),
                None => {
                    return Ok(Err(SessionError::InvalidParent {
                        session_id: session.id,
                        parent_id,
                    }))
                }
            },
        };
        // Translate every bound into an exclusive seq interval (low, high).
        let count = session.message_count;
        let mut low: u64 = 0;
        let mut high: u64 = count + 1;
        if let Some(after_seq) = query.after_seq {
            low = low.max(after_seq);
        }
        if let Some(before_seq) = query.before_seq {
            high = high.min(before_seq);
        }
        if let Some(after_ms) = query.after_ms {
            // Messages after `after_ms` start at the first seq stored later than it.
            match self.first_seq_where(session, |ms| i128::from(ms) > i128::from(after_ms))? {
                Ok(first) => low = low.max(first - 1),
                Err(gone) => return Ok(Err(gone)),
            }
        }
        if let Some(before_ms) = query.before_ms {
            match self.first_seq_where(session, |ms| i128::from(ms) >= i128::from(before_ms))? {
                Ok(first) => high = high.min(first),
                Err(gone) => return Ok(Err(gone)),
            }
        }
        if low.saturating_add(1) >= high {
            return Ok(Ok(MessagePage {
                messages: Vec::new(),
                has_more: false,
            }));
        }
        let oldest_first = query.after_seq.is_some() || query.after_ms.is_some();
        let newest_first = query.before_seq.is_some() || query.before_ms.is_some();
        self.read_page(
            session.id,
            parent.as_ref(),
            query.limit,
            (low, high),
            oldest_first && !newest_first,
        )
    }

    /// Explains a message that a read expected and did not find. Messages are never
    /// removed from a session that is still stored (a delete removes the session first, or
    /// with them), so the session being gone means a delete raced the read.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the session is still stored: the message should be there.
    fn vanished(&self, session_id: Uuid, what: impl FnOnce() -> String) -> Result<SessionError> {
        if self.session(session_id)?.is_none() {
            Ok(SessionError::NotFound(session_id))
        } else {
            Err(Error::corrupt(format!("session {session_id}: {}", what())))
        }
    }

    /// Message `seq` of a session, which its count says exists.
    fn counted_message(&self, session_id: Uuid, seq: u64) -> Result<Result<Message, SessionError>> {
        match self.message_at(session_id, seq)? {
            Some(message) => Ok(Ok(message)),
            None => self
                .vanished(session_id, || format!("message {seq} is missing"))
                .map(Err),
        }
    }

    /// Reads up to `limit` messages (of them all, or the replies to `parent`) with seqs in
    /// (low, high): the oldest ones when `ascending`, else the newest ones. The page is
    /// returned newest first.
    fn read_page(
        &self,
        session_id: Uuid,
        parent: Option<&Message>,
        limit: usize,
        (low, high): (u64, u64),
        ascending: bool,
    ) -> Result<Result<MessagePage, SessionError>> {
        let seqs: Box<dyn DoubleEndedIterator<Item = Result<u64>>> = match parent {
            None => Box::new(
                self.trees
                    .messages
                    .range(keys::message(session_id, low + 1)..keys::message(session_id, high))
                    .keys()
                    .map(|key| Ok(keys::parse_message(&key?)?.1)),
            ),
            Some(parent) => {
                // The reply stored right after its parent has no entry of its own (see
                // `insert_message`); it comes before every other reply. A store written
                // before that has an entry for it too, which is skipped.
                let next = parent.seq + 1;
                let adjacent = (next > low && next < high)
                    && self
                        .message_at(session_id, next)?
                        .is_some_and(|reply| reply.parent_id == Some(parent.id));
                let adjacent = adjacent.then_some(next);
                let entries = self
                    .trees
                    .children
                    .range(keys::child(parent.id, low + 1)..keys::child(parent.id, high))
                    .keys()
                    .map(|key| Ok(keys::parse_child(&key?)?.1))
                    .filter(move |seq| !matches!(seq, Ok(seq) if Some(*seq) == adjacent));
                Box::new(adjacent.map(Ok).into_iter().chain(entries))
            }
        };
        let seqs: Vec<u64> = if ascending {
            seqs.take(limit + 1).collect::<Result<_>>()?
        } else {
            seqs.rev().take(limit + 1).collect::<Result<_>>()?
        };
        let has_more = seqs.len() > limit;
        let mut messages = Vec::with_capacity(limit.min(seqs.len()));
        for seq in seqs.into_iter().take(limit) {
            match self.counted_message(session_id, seq)? {
                Ok(message) => messages.push(message),
                Err(gone) => return Ok(Err(gone)),
            }
        }
        if ascending {
            messages.reverse();
        }
        Ok(Ok(MessagePage { messages, has_more }))
    }

    /// The smallest seq in 1..=count whose creation time (epoch ms) satisfies `pred`, or
    /// count + 1 if none does. `pred` must be monotone in seq (false… then true…), which
    /// holds because message times never go backwards.
    fn first_seq_where(
        &self,
        session: &Session,
        pred: impl Fn(u64) -> bool,
    ) -> Result<Result<u64, SessionError>> {
        let (mut low, mut high) = (1, session.message_count + 1);
        while low < high {
            let mid = low + (high - low) / 2;
            let message = match self.counted_message(session.id, mid)? {
                Ok(message) => message,
                Err(gone) => return Ok(Err(gone)),
            };
            if pred(message.created_at.as_millis()) {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        Ok(Ok(low))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::sled_backend::test_support::{stored_format_version, trees};
    use crate::store::sled_backend::FORMAT_VERSION;
    use crate::store::test_support::{appended, clocked_store, session_at, text_message, T0};
    use crate::store::{Store, StoreOptions};

    /// A whole second, as deadline buckets are.
    const MS: Duration = Duration::from_millis(1);
    const MINUTE: Duration = Duration::from_secs(60);

    fn expiry_keys(store: &Store) -> Vec<Vec<u8>> {
        trees(store)
            .expirations
            .iter()
            .keys()
            .map(|key| key.unwrap().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn renewals_within_a_second_keep_the_index_entries_and_later_ones_move_them() {
        let (store, clock, _dir) = clocked_store(T0);
        let session = session_at(T0 + 100 * MS, 30, 5);
        store.create_session(session.clone()).await.unwrap();
        let created = expiry_keys(&store);
        clock.set(T0 + 200 * MS);
        appended(&store, session.id, text_message("a", None)).await;
        clock.set(T0 + 900 * MS);
        appended(&store, session.id, text_message("b", None)).await;
        assert_eq!(expiry_keys(&store), created, "renewed within its second");
        clock.set(T0 + 1_500 * MS);
        appended(&store, session.id, text_message("c", None)).await;
        assert_ne!(expiry_keys(&store), created, "renewed into the next second");
        assert_eq!(expiry_keys(&store).len(), 1);
        assert!(store.check().unwrap().is_clean());
    }

    #[tokio::test]
    async fn counts_and_listings_are_exact_inside_the_open_second() {
        let (store, _clock, _dir) = clocked_store(T0);
        // Expires 300 ms into a second; warns 5 minutes before.
        let session = session_at(T0 + 300 * MS, 30, 5);
        store.create_session(session.clone()).await.unwrap();
        let expires = session.expires_at();
        let engine = crate::store::sled_backend::test_support::sled_of(&store)
            .engines
            .engine()
            .unwrap();
        let before = engine.counts(expires - MS).unwrap();
        assert_eq!(
            (before.active, before.expired, before.expiring_soon),
            (1, 0, 1)
        );
        let at = engine.counts(expires).unwrap();
        assert_eq!((at.active, at.expired, at.expiring_soon), (0, 1, 0));
        let warned = engine.counts(session.warns_at()).unwrap();
        assert_eq!(warned.expiring_soon, 1);
        let not_yet = engine.counts(session.warns_at() - MS).unwrap();
        assert_eq!(not_yet.expiring_soon, 0);

        let expired = |now| {
            let query = SessionQuery {
                status: StatusFilter::Expired,
                limit: 10,
                ..Default::default()
            };
            engine.list_sessions(&query, now).unwrap().total
        };
        assert_eq!(expired(expires - MS), 0);
        assert_eq!(expired(expires), 1);
        // What the sweeper asks: exact inside the open second too.
        assert!(engine
            .sessions_expired_by(expires - MS, 10)
            .unwrap()
            .is_empty());
        assert_eq!(engine.sessions_expired_by(expires, 10).unwrap().len(), 1);
        // The notifier's look at [from, to] finds a deadline inside to's second.
        let found = engine
            .sessions_with_deadlines_between(expires - 100 * MS, expires)
            .unwrap();
        assert_eq!(found, vec![session.id]);
        assert!(
            engine
                .sessions_with_deadlines_between(expires + MS, expires + MINUTE)
                .unwrap()
                .contains(&session.id),
            "a superset: the same second"
        );
    }

    #[test]
    fn a_format_2_store_gets_its_deadline_index_rekeyed() {
        let dir = tempfile::tempdir().unwrap();
        let session = session_at(T0 + 300 * MS, 30, 5);
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime
                .block_on(store.create_session(session.clone()))
                .unwrap();
            store.close().unwrap();
        }
        {
            // As format 2 kept it: the exact instant.
            let db = sled::open(dir.path()).unwrap();
            let exact = |at: Timestamp| {
                let mut key = at.as_micros().to_be_bytes().to_vec();
                key.extend_from_slice(session.id.as_bytes());
                key
            };
            for (name, at) in [
                ("expiresatsessionid", session.expires_at()),
                ("warnatsessionid", session.warns_at()),
            ] {
                let tree = db.open_tree(name).unwrap();
                tree.clear().unwrap();
                tree.insert(exact(at), &[]).unwrap();
            }
            db.open_tree("meta")
                .unwrap()
                .insert(keys::FORMAT_VERSION, &2u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let report = store.check().unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!(expiry_keys(&store).len(), 1);
        store.close().unwrap();
        assert_eq!(stored_format_version(dir.path()), FORMAT_VERSION);
    }
}
