//! Messages: append (with the session update, in one transaction), read, thread, page.

use std::sync::Arc;

use uuid::Uuid;

use super::engine::Engine;
use super::keys;
use super::write_ops::MESSAGES_PER_PURGE_WRITE;
use super::writer::{Announced, Work, WriteCtx, WriteTime};
use super::{codec, refuse, settle_unrefused, Store, TxResult};
use crate::domain::{
    Clock, EventKind, Message, NewMessage, Renewal, Session, SessionError, Timestamp,
};
use crate::error::{Error, Result};

/// What an append stored.
#[derive(Clone, Debug)]
pub struct Appended {
    /// The new message.
    pub message: Message,
    /// The session after the append.
    pub session: Session,
    /// Whether the append renewed the session.
    pub renewal: Renewal,
}

/// A page request over one session's messages. Bounds are exclusive; `None` is unbounded.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageQuery {
    /// Page size (at least 1).
    pub limit: usize,
    /// Only messages stored before this epoch-ms instant.
    pub before_ms: Option<i64>,
    /// Only messages stored after this epoch-ms instant.
    pub after_ms: Option<i64>,
    /// Only messages with a smaller seq.
    pub before_seq: Option<u64>,
    /// Only messages with a larger seq.
    pub after_seq: Option<u64>,
    /// Only the direct replies to this message.
    pub parent_id: Option<Uuid>,
}

/// A page of messages, newest first.
#[derive(Clone, Debug)]
pub struct MessagePage {
    /// The messages, newest first.
    pub messages: Vec<Message>,
    /// Whether more lie beyond the page in the paging direction.
    pub has_more: bool,
}

/// Makes `new` the next message of `session` at the write's time and stores it; applies
/// it to `session` (count, last message), which the caller stores. Refuses an author who
/// is neither the session's user nor its agent, and a parent that is not a message of
/// this session.
pub(super) fn append_to(
    ctx: &WriteCtx<'_>,
    session: &mut Session,
    new: &NewMessage,
) -> TxResult<Message> {
    let session_id = session.id;
    let author_id = match session.author_of(new) {
        Ok(author_id) => author_id,
        Err(refused) => return refuse(refused),
    };
    let parent_id = match new.parent_id {
        Some(parent_id) if ctx.tx.message_in(parent_id, session_id)? => Some(parent_id),
        Some(parent_id) => {
            return refuse(SessionError::InvalidParent {
                session_id,
                parent_id,
            })
        }
        None => session.last_message_id,
    };
    // Message times never go backwards, so seq order is time order and the epoch-ms
    // bounds of a page can be found by binary search over seq.
    let created_at = ctx.now.max(session.last_message_at);
    let message = Message {
        id: created_at.new_v7(),
        session_id,
        seq: session.message_count + 1,
        parent_id,
        content: new.content.clone(),
        author_id,
        is_agent: author_id == session.agent_id,
        created_at,
        metadata_json: new.metadata_json.clone(),
        attachments: new.attachments.clone(),
    };
    ctx.tx.insert_message(&message)?;
    session.message_count = message.seq;
    session.last_message_id = Some(message.id);
    session.last_message_at = message.created_at;
    Ok(message)
}

impl Store {
    /// Appends a message to a session and applies the activity to the session (last
    /// activity, auto-renewal, message count) in one write, with its index entries. Returns
    /// once on disk.
    ///
    /// # Errors
    /// Outer: storage failures. Inner: the session is missing or expired, the author is a
    /// stranger, or the parent is not a message of this session.
    pub async fn append_message(
        &self,
        session_id: Uuid,
        new: NewMessage,
        clock: Arc<dyn Clock>,
    ) -> Result<Result<Appended, SessionError>> {
        let work: Work<Appended> = Box::new(move |ctx| {
            let old = ctx.active_session(session_id)?;
            let mut session = old.clone();
            let message = append_to(ctx, &mut session, &new)?;
            let renewal = session.record_activity(ctx.now);
            let mut announced = vec![Announced::Message(&message)];
            if renewal == Renewal::Renewed {
                announced.push(Announced::Session(EventKind::SessionRenewed));
            }
            let session = ctx.save_session(Some(&old), session, &announced)?;
            Ok(Appended {
                message,
                session,
                renewal,
            })
        });
        self.writer.write(WriteTime::Clock(clock), work).await
    }

    /// A message of this session, by id.
    ///
    /// # Errors
    /// Storage failures and undecodable records.
    pub fn message(&self, session_id: Uuid, message_id: Uuid) -> Result<Option<Message>> {
        self.engine()?.message(session_id, message_id)
    }

    /// The last `limit` messages of the branch from the root down to `message_id`, oldest
    /// first, and whether the branch goes further up. Walks at most `limit + 1` messages.
    ///
    /// Returns `Ok(Err(MessageNotFound))` when the message is not in this session, and
    /// `Ok(Err(NotFound))` when the session was deleted while the branch was read.
    ///
    /// # Errors
    /// Storage failures, or a parent link that leads nowhere in a session still stored
    /// (corruption).
    pub fn thread(
        &self,
        session_id: Uuid,
        message_id: Uuid,
        limit: usize,
    ) -> Result<Result<MessagePage, SessionError>> {
        self.engine()?.thread(session_id, message_id, limit)
    }

    /// One page of a session's messages.
    ///
    /// Returns `Ok(Err(..))` when `query.parent_id` is not a message of this session.
    ///
    /// # Errors
    /// Storage failures.
    pub fn page_messages(
        &self,
        session: &Session,
        query: &MessageQuery,
    ) -> Result<Result<MessagePage, SessionError>> {
        self.engine()?.page_messages(session, query)
    }

    /// Removes a deleted session's messages and their index entries, newest first, in
    /// writes of at most [`MESSAGES_PER_PURGE_WRITE`], then its purge marker. Safe to
    /// repeat after a crash.
    ///
    /// # Errors
    /// Storage failures.
    pub(crate) async fn purge_messages(&self, session_id: Uuid) -> Result<()> {
        loop {
            // Its own statement: the engine handle is dropped before the write is awaited.
            let last = self.engine()?.last_message_seq(session_id)?;
            let Some(high) = last else { break };
            let low = high.saturating_sub(MESSAGES_PER_PURGE_WRITE - 1).max(1);
            let work: Work<()> =
                Box::new(move |ctx| ctx.tx.remove_messages(session_id, low..=high));
            settle_unrefused(
                self.writer
                    .write(WriteTime::At(Timestamp::now()), work)
                    .await?,
            )?;
        }
        let work: Work<()> = Box::new(move |ctx| ctx.tx.finish_purge(session_id));
        settle_unrefused(
            self.writer
                .write(WriteTime::At(Timestamp::now()), work)
                .await?,
        )
    }
}

impl Engine {
    /// The seq of the last message stored for a session (deleted or not).
    fn last_message_seq(&self, session_id: Uuid) -> Result<Option<u64>> {
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
        if let Some(parent_id) = query.parent_id {
            if self.message(session.id, parent_id)?.is_none() {
                return Ok(Err(SessionError::InvalidParent {
                    session_id: session.id,
                    parent_id,
                }));
            }
        }
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
        self.read_page(session.id, query, low, high, oldest_first && !newest_first)
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

    /// Reads up to `limit` messages in (low, high): the oldest ones when `ascending`, else
    /// the newest ones. The page is returned newest first.
    fn read_page(
        &self,
        session_id: Uuid,
        query: &MessageQuery,
        low: u64,
        high: u64,
        ascending: bool,
    ) -> Result<Result<MessagePage, SessionError>> {
        let seqs: Box<dyn DoubleEndedIterator<Item = Result<u64>>> = match query.parent_id {
            None => Box::new(
                self.trees
                    .messages
                    .range(keys::message(session_id, low + 1)..keys::message(session_id, high))
                    .keys()
                    .map(|key| Ok(keys::parse_message(&key?)?.1)),
            ),
            Some(parent_id) => Box::new(
                self.trees
                    .children
                    .range(keys::child(parent_id, low + 1)..keys::child(parent_id, high))
                    .keys()
                    .map(|key| Ok(keys::parse_child(&key?)?.1)),
            ),
        };
        let seqs: Vec<u64> = if ascending {
            seqs.take(query.limit + 1).collect::<Result<_>>()?
        } else {
            seqs.rev().take(query.limit + 1).collect::<Result<_>>()?
        };
        let has_more = seqs.len() > query.limit;
        let mut messages = Vec::with_capacity(query.limit.min(seqs.len()));
        for seq in seqs.into_iter().take(query.limit) {
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
    use crate::domain::{ManualClock, Timestamp};
    use crate::store::test_support::{
        append_texts, appended, created_session, temp_store, text_message,
    };

    const T0: Timestamp = Timestamp::from_millis(1_795_255_200_000);

    fn seqs(page: &MessagePage) -> Vec<u64> {
        page.messages.iter().map(|m| m.seq).collect()
    }

    fn page(store: &Store, session_id: Uuid, query: MessageQuery) -> MessagePage {
        let session = store.session(session_id).unwrap().unwrap();
        store.page_messages(&session, &query).unwrap().unwrap()
    }

    #[tokio::test]
    async fn seq_paging_visits_every_message_once_when_all_share_a_millisecond() {
        let (store, _dir) = temp_store();
        let session = created_session(&store, T0).await;
        let clock = Arc::new(ManualClock::new(T0 + Duration::from_millis(1)));
        append_texts(&store, session.id, &clock, 25).await;
        let mut seen = Vec::new();
        let mut before_seq = None;
        loop {
            let page = page(
                &store,
                session.id,
                MessageQuery {
                    limit: 7,
                    before_seq,
                    ..Default::default()
                },
            );
            seen.extend(seqs(&page));
            match page.messages.last() {
                Some(oldest) if page.has_more => before_seq = Some(oldest.seq),
                _ => break,
            }
        }
        assert_eq!(seen, (1..=25).rev().collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn after_only_paging_takes_the_oldest_newer_messages_listed_newest_first() {
        let (store, _dir) = temp_store();
        let session = created_session(&store, T0).await;
        let clock = Arc::new(ManualClock::new(T0));
        for _ in 0..10 {
            clock.advance(Duration::from_millis(10));
            appended(&store, session.id, text_message("m", None), &clock).await;
        }
        let by_seq = page(
            &store,
            session.id,
            MessageQuery {
                limit: 3,
                after_seq: Some(4),
                ..Default::default()
            },
        );
        assert_eq!(seqs(&by_seq), vec![7, 6, 5]);
        assert!(by_seq.has_more);
        // Message n was stored at T0 + 10n ms; `after` is exclusive.
        let after_ms = (T0 + Duration::from_millis(40)).as_millis() as i64;
        let by_time = page(
            &store,
            session.id,
            MessageQuery {
                limit: 3,
                after_ms: Some(after_ms),
                ..Default::default()
            },
        );
        assert_eq!(seqs(&by_time), vec![7, 6, 5]);
        let last = page(
            &store,
            session.id,
            MessageQuery {
                limit: 3,
                after_seq: Some(7),
                ..Default::default()
            },
        );
        assert_eq!(seqs(&last), vec![10, 9, 8]);
        assert!(!last.has_more);
    }

    #[tokio::test]
    async fn both_bounds_take_the_newest_inside_the_interval() {
        let (store, _dir) = temp_store();
        let session = created_session(&store, T0).await;
        let clock = Arc::new(ManualClock::new(T0));
        for _ in 0..10 {
            clock.advance(Duration::from_millis(10));
            appended(&store, session.id, text_message("m", None), &clock).await;
        }
        let before_ms = (T0 + Duration::from_millis(80)).as_millis() as i64;
        let inside = page(
            &store,
            session.id,
            MessageQuery {
                limit: 2,
                after_seq: Some(2),
                before_ms: Some(before_ms),
                ..Default::default()
            },
        );
        assert_eq!(seqs(&inside), vec![7, 6]);
        assert!(inside.has_more);
        let empty = page(
            &store,
            session.id,
            MessageQuery {
                limit: 2,
                after_seq: Some(5),
                before_seq: Some(6),
                ..Default::default()
            },
        );
        assert!(empty.messages.is_empty());
        assert!(!empty.has_more);
    }

    #[tokio::test]
    async fn a_thread_is_the_last_limit_messages_of_the_branch_oldest_first() {
        let (store, _dir) = temp_store();
        let session = created_session(&store, T0).await;
        let clock = Arc::new(ManualClock::new(T0));
        append_texts(&store, session.id, &clock, 5).await;
        let leaf = store
            .engine()
            .unwrap()
            .message_at(session.id, 5)
            .unwrap()
            .unwrap();
        let thread = |limit| store.thread(session.id, leaf.id, limit).unwrap().unwrap();

        let last_two = thread(2);
        let whole = thread(5);
        let more_than_all = thread(6);

        assert_eq!(seqs(&last_two), vec![4, 5]);
        assert!(last_two.has_more);
        assert_eq!(seqs(&whole), vec![1, 2, 3, 4, 5]);
        assert!(!whole.has_more);
        assert_eq!(seqs(&more_than_all), vec![1, 2, 3, 4, 5]);
        assert!(!more_than_all.has_more);
    }

    /// A read that lists a session's messages and then fetches them can meet a delete in
    /// between: that answers as a deleted session, while a message missing from a session
    /// that is still stored is corruption.
    #[tokio::test]
    async fn a_read_racing_a_delete_finds_the_session_gone_not_the_store_corrupt() {
        let (store, _dir) = temp_store();
        let session = created_session(&store, T0).await;
        let clock = Arc::new(ManualClock::new(T0));
        append_texts(&store, session.id, &clock, 3).await;
        // What a handler read before the delete.
        let seen = store.session(session.id).unwrap().unwrap();
        let before_ms = MessageQuery {
            limit: 10,
            before_ms: Some(i64::MAX),
            ..Default::default()
        };

        store.delete_session(session.id, T0).await.unwrap();
        let raced = store.page_messages(&seen, &before_ms).unwrap();

        assert_eq!(raced.unwrap_err(), SessionError::NotFound(session.id));

        // The same gap in a session still stored is reported as corruption.
        let (store, _dir) = temp_store();
        let session = created_session(&store, T0).await;
        append_texts(&store, session.id, &clock, 3).await;
        store
            .trees()
            .messages
            .remove(keys::message(session.id, 2))
            .unwrap();
        let seen = store.session(session.id).unwrap().unwrap();
        assert!(matches!(
            store.page_messages(&seen, &before_ms),
            Err(Error::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn branches_and_threads_follow_parents() {
        let (store, _dir) = temp_store();
        let session = created_session(&store, T0).await;
        let clock = Arc::new(ManualClock::new(T0));
        let root = appended(&store, session.id, text_message("root", None), &clock).await;
        let first = appended(&store, session.id, text_message("a", None), &clock).await;
        let edit = appended(
            &store,
            session.id,
            text_message("a'", Some(root.id)),
            &clock,
        )
        .await;
        let after_edit = appended(&store, session.id, text_message("b", None), &clock).await;
        assert_eq!(first.parent_id, Some(root.id));
        assert_eq!(edit.parent_id, Some(root.id));
        assert_eq!(after_edit.parent_id, Some(edit.id));

        let replies = page(
            &store,
            session.id,
            MessageQuery {
                limit: 10,
                parent_id: Some(root.id),
                ..Default::default()
            },
        );
        assert_eq!(seqs(&replies), vec![edit.seq, first.seq]);
        let thread = store
            .thread(session.id, after_edit.id, 1000)
            .unwrap()
            .unwrap()
            .messages;
        assert_eq!(
            thread.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![root.id, edit.id, after_edit.id]
        );
    }

    #[tokio::test]
    async fn a_parent_from_another_session_is_refused_and_nothing_is_written() {
        let (store, _dir) = temp_store();
        let (one, other) = (
            created_session(&store, T0).await,
            created_session(&store, T0).await,
        );
        let clock = Arc::new(ManualClock::new(T0));
        let foreign = appended(&store, other.id, text_message("x", None), &clock).await;
        let refused = store
            .append_message(one.id, text_message("y", Some(foreign.id)), clock.clone())
            .await
            .unwrap();
        assert!(matches!(refused, Err(SessionError::InvalidParent { .. })));
        assert_eq!(store.session(one.id).unwrap().unwrap().message_count, 0);
    }

    #[tokio::test]
    async fn deleting_a_session_removes_its_messages_and_their_index_entries() {
        let (store, _dir) = temp_store();
        let session = created_session(&store, T0).await;
        let clock = Arc::new(ManualClock::new(T0));
        let mut ids = Vec::new();
        for _ in 0..600 {
            ids.push(
                appended(&store, session.id, text_message("m", None), &clock)
                    .await
                    .id,
            );
        }
        store.delete_session(session.id, T0).await.unwrap().unwrap();
        assert!(store
            .trees()
            .messages
            .scan_prefix(keys::session(session.id))
            .next()
            .is_none());
        assert!(ids.iter().all(|id| store
            .trees()
            .message_locations
            .get(keys::session(*id))
            .unwrap()
            .is_none()));
        assert_eq!(store.trees().children.iter().count(), 0);
        assert!(store.pending_purges().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_imported_history_is_chained_counted_and_checked_clean() {
        use crate::store::test_support::session_at;
        let (store, _dir) = temp_store();
        let session = session_at(T0, 30, 5);
        let mut history: Vec<NewMessage> = (0..3)
            .map(|i| text_message(&format!("m{i}"), None))
            .collect();
        history[2].author_id = Some(session.agent_id);
        let stored = store
            .import_session(session.clone(), history)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.message_count, 3);
        let all = page(
            &store,
            session.id,
            MessageQuery {
                limit: 10,
                ..Default::default()
            },
        );
        assert_eq!(seqs(&all), vec![3, 2, 1]);
        assert_eq!(all.messages[0].parent_id, Some(all.messages[1].id));
        assert!(all.messages[0].is_agent);
        assert!(store.check().unwrap().is_clean());

        let stranger = session_at(T0, 30, 5);
        let mut bad = vec![text_message("fine", None), text_message("not fine", None)];
        bad[1].author_id = Some(uuid::Uuid::new_v4());
        let refused = store.import_session(stranger.clone(), bad).await.unwrap();
        assert!(matches!(refused, Err(SessionError::ForbiddenAuthor { .. })));
        assert!(store.session(stranger.id).unwrap().is_none());
        assert_eq!(store.counts(T0).unwrap().total, 1);
    }

    #[tokio::test]
    async fn deleting_a_short_conversation_leaves_other_sessions_alone() {
        let (store, _dir) = temp_store();
        let (doomed, kept) = (
            created_session(&store, T0).await,
            created_session(&store, T0).await,
        );
        let clock = Arc::new(ManualClock::new(T0));
        for session in [&doomed, &kept] {
            append_texts(&store, session.id, &clock, 3).await;
        }
        let deleted = store.delete_session(doomed.id, T0).await.unwrap().unwrap();
        assert_eq!(deleted.message_count, 3);
        assert!(store
            .trees()
            .messages
            .scan_prefix(keys::session(doomed.id))
            .next()
            .is_none());
        assert_eq!(store.trees().message_locations.len(), 3);
        assert_eq!(store.trees().children.len(), 2);
        assert!(store.pending_purges().unwrap().is_empty());
        assert!(store.check().unwrap().is_clean());
    }
}
