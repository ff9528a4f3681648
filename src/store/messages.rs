//! Messages: append (with the session update, in one transaction), read, thread, page.

use uuid::Uuid;

use super::metrics::RenewalKind;
use super::write::{refuse, Announced, TxResult, Work, WriteCtx, WriteTime};
use super::Store;
use crate::domain::{EventKind, Message, NewMessage, Renewal, Session, SessionError};
use crate::error::Result;

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
        let appended = self.write(WriteTime::Now, work).await;
        if let Ok(Ok(appended)) = &appended {
            self.metrics.appended();
            if appended.renewal == Renewal::Renewed {
                self.metrics.renewed(RenewalKind::Activity);
            }
        }
        appended
    }

    /// A message of this session, by id.
    ///
    /// # Errors
    /// Storage failures and undecodable records.
    pub async fn message(&self, session_id: Uuid, message_id: Uuid) -> Result<Option<Message>> {
        self.backend.message(session_id, message_id).await
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
    pub async fn thread(
        &self,
        session_id: Uuid,
        message_id: Uuid,
        limit: usize,
    ) -> Result<Result<MessagePage, SessionError>> {
        self.backend.thread(session_id, message_id, limit).await
    }

    /// One page of a session's messages.
    ///
    /// Returns `Ok(Err(..))` when `query.parent_id` is not a message of this session.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn page_messages(
        &self,
        session: &Session,
        query: &MessageQuery,
    ) -> Result<Result<MessagePage, SessionError>> {
        self.backend.page_messages(session, query).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::test_support::{
        append_texts, appended, clocked_store, created_session, temp_store, text_message, T0,
    };

    fn seqs(page: &MessagePage) -> Vec<u64> {
        page.messages.iter().map(|m| m.seq).collect()
    }

    async fn page(store: &Store, session_id: Uuid, query: MessageQuery) -> MessagePage {
        let session = store.session(session_id).await.unwrap().unwrap();
        store
            .page_messages(&session, &query)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn seq_paging_visits_every_message_once_when_all_share_a_millisecond() {
        let (store, _clock, _dir) = clocked_store(T0 + Duration::from_millis(1));
        let session = created_session(&store, T0).await;
        append_texts(&store, session.id, 25).await;
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
            )
            .await;
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
        let (store, clock, _dir) = clocked_store(T0);
        let session = created_session(&store, T0).await;
        for _ in 0..10 {
            clock.advance(Duration::from_millis(10));
            appended(&store, session.id, text_message("m", None)).await;
        }
        let by_seq = page(
            &store,
            session.id,
            MessageQuery {
                limit: 3,
                after_seq: Some(4),
                ..Default::default()
            },
        )
        .await;
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
        )
        .await;
        assert_eq!(seqs(&by_time), vec![7, 6, 5]);
        let last = page(
            &store,
            session.id,
            MessageQuery {
                limit: 3,
                after_seq: Some(7),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(seqs(&last), vec![10, 9, 8]);
        assert!(!last.has_more);
    }

    #[tokio::test]
    async fn both_bounds_take_the_newest_inside_the_interval() {
        let (store, clock, _dir) = clocked_store(T0);
        let session = created_session(&store, T0).await;
        for _ in 0..10 {
            clock.advance(Duration::from_millis(10));
            appended(&store, session.id, text_message("m", None)).await;
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
        )
        .await;
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
        )
        .await;
        assert!(empty.messages.is_empty());
        assert!(!empty.has_more);
    }

    #[tokio::test]
    async fn a_thread_is_the_last_limit_messages_of_the_branch_oldest_first() {
        let (store, _clock, _dir) = clocked_store(T0);
        let session = created_session(&store, T0).await;
        let leaf = append_texts(&store, session.id, 5).await.pop().unwrap();
        let thread = |limit| store.thread(session.id, leaf.id, limit);

        let last_two = thread(2).await.unwrap().unwrap();
        let whole = thread(5).await.unwrap().unwrap();
        let more_than_all = thread(6).await.unwrap().unwrap();

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
        let (store, _clock, _dir) = clocked_store(T0);
        let session = created_session(&store, T0).await;
        append_texts(&store, session.id, 3).await;
        // What a handler read before the delete.
        let seen = store.session(session.id).await.unwrap().unwrap();
        let before_ms = MessageQuery {
            limit: 10,
            before_ms: Some(i64::MAX),
            ..Default::default()
        };

        store.delete_session(session.id, T0).await.unwrap();
        let raced = store.page_messages(&seen, &before_ms).await.unwrap();

        assert_eq!(raced.unwrap_err(), SessionError::NotFound(session.id));
    }

    #[tokio::test]
    async fn branches_and_threads_follow_parents() {
        let (store, _clock, _dir) = clocked_store(T0);
        let session = created_session(&store, T0).await;
        let root = appended(&store, session.id, text_message("root", None)).await;
        let first = appended(&store, session.id, text_message("a", None)).await;
        let edit = appended(&store, session.id, text_message("a'", Some(root.id))).await;
        let after_edit = appended(&store, session.id, text_message("b", None)).await;
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
        )
        .await;
        assert_eq!(seqs(&replies), vec![edit.seq, first.seq]);
        let thread = store
            .thread(session.id, after_edit.id, 1000)
            .await
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
        let (store, _clock, _dir) = clocked_store(T0);
        let (one, other) = (
            created_session(&store, T0).await,
            created_session(&store, T0).await,
        );
        let foreign = appended(&store, other.id, text_message("x", None)).await;
        let refused = store
            .append_message(one.id, text_message("y", Some(foreign.id)))
            .await
            .unwrap();
        assert!(matches!(refused, Err(SessionError::InvalidParent { .. })));
        assert_eq!(
            store.session(one.id).await.unwrap().unwrap().message_count,
            0
        );
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
        )
        .await;
        assert_eq!(seqs(&all), vec![3, 2, 1]);
        assert_eq!(all.messages[0].parent_id, Some(all.messages[1].id));
        assert!(all.messages[0].is_agent);
        assert!(store.check().unwrap().is_clean());

        let stranger = session_at(T0, 30, 5);
        let mut bad = vec![text_message("fine", None), text_message("not fine", None)];
        bad[1].author_id = Some(uuid::Uuid::new_v4());
        let refused = store.import_session(stranger.clone(), bad).await.unwrap();
        assert!(matches!(refused, Err(SessionError::ForbiddenAuthor { .. })));
        assert!(store.session(stranger.id).await.unwrap().is_none());
        assert_eq!(store.counts(T0).await.unwrap().total, 1);
    }
}
