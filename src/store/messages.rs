//! Messages: append (with the session update, in one transaction), read, thread, page.

use sled::Transactional;
use uuid::Uuid;

use super::keys;
use super::sessions::SessionTx;
use super::{codec, encode_tx, refuse, settle, Store};
use crate::domain::{Clock, Message, NewMessage, Renewal, Session, SessionError};
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
    pub before_seq: Option<i64>,
    /// Only messages with a larger seq.
    pub after_seq: Option<i64>,
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

impl Store {
    /// Appends a message to a session and applies the activity to the session (last
    /// activity, auto-renewal, message count) in one transaction, with its index entries.
    ///
    /// # Errors
    /// Outer: storage failures. Inner: the session is missing or expired, the author is a
    /// stranger, or the parent is not a message of this session.
    pub fn append_message(
        &self,
        session_id: Uuid,
        new: &NewMessage,
        clock: &dyn Clock,
    ) -> Result<Result<Appended, SessionError>> {
        let trees = (
            &self.sessions,
            &self.expirations,
            &self.warnings,
            &self.messages,
            &self.message_locations,
            &self.children,
        );
        settle(trees.transaction(
            |(sessions, expirations, warnings, messages, locations, children)| {
                let tx = SessionTx {
                    sessions,
                    expirations,
                    warnings,
                };
                let old = tx.get(session_id)?;
                let now = clock.now();
                if let Err(refused) = old.check_active(now) {
                    return refuse(refused);
                }
                let author_id = new.author_id.unwrap_or(old.user_id);
                if author_id != old.user_id && author_id != old.agent_id {
                    return refuse(SessionError::ForbiddenAuthor {
                        session_id,
                        author_id,
                    });
                }
                let parent_id = match new.parent_id {
                    Some(parent_id) => {
                        let belongs = match locations.get(keys::session(parent_id))? {
                            Some(location) => {
                                keys::parse_message(&location).map_err(super::broken)?.0
                                    == session_id
                            }
                            None => false,
                        };
                        if !belongs {
                            return refuse(SessionError::InvalidParent {
                                session_id,
                                parent_id,
                            });
                        }
                        Some(parent_id)
                    }
                    None => old.last_message_id,
                };

                let seq = old.message_count + 1;
                let message = Message {
                    id: Uuid::now_v7(),
                    session_id,
                    seq,
                    parent_id,
                    content: new.content.clone(),
                    author_id,
                    is_agent: author_id == old.agent_id,
                    // Message times never go backwards, so seq order is time order and the
                    // epoch-ms bounds of a page can be found by binary search over seq.
                    created_at: now.max(old.last_message_at),
                    metadata_json: new.metadata_json.clone(),
                    attachments: new.attachments.clone(),
                };
                let key = keys::message(session_id, seq);
                if messages.insert(&key, encode_tx(&message)?)?.is_some() {
                    return Err(super::broken(Error::corrupt(format!(
                        "message {seq} of session {session_id} already existed"
                    ))));
                }
                locations.insert(&keys::session(message.id), &key)?;
                if let Some(parent_id) = parent_id {
                    children.insert(&keys::child(parent_id, seq), &[])?;
                }

                let mut session = old.clone();
                session.message_count = seq;
                session.last_message_id = Some(message.id);
                session.last_message_at = message.created_at;
                let renewal = session.record_activity(now);
                tx.put(Some(&old), &session)?;
                Ok(Appended {
                    message,
                    session,
                    renewal,
                })
            },
        ))
    }

    /// A message of this session, by id.
    ///
    /// # Errors
    /// Storage failures and undecodable records.
    pub fn message(&self, session_id: Uuid, message_id: Uuid) -> Result<Option<Message>> {
        let Some(location) = self.message_locations.get(keys::session(message_id))? else {
            return Ok(None);
        };
        let (owner, seq) = keys::parse_message(&location)?;
        if owner != session_id {
            return Ok(None);
        }
        self.message_at(session_id, seq)
    }

    fn message_at(&self, session_id: Uuid, seq: u64) -> Result<Option<Message>> {
        self.messages
            .get(keys::message(session_id, seq))?
            .map(|bytes| codec::decode(&bytes))
            .transpose()
    }

    /// The branch from the root down to `message_id`, oldest first; `None` if the message
    /// is not in this session.
    ///
    /// # Errors
    /// Storage failures, or a parent link that leads nowhere (corruption).
    pub fn thread(&self, session_id: Uuid, message_id: Uuid) -> Result<Option<Vec<Message>>> {
        let Some(mut current) = self.message(session_id, message_id)? else {
            return Ok(None);
        };
        let mut branch = Vec::new();
        loop {
            let parent = current.parent_id;
            branch.push(current);
            let Some(parent_id) = parent else { break };
            current = self.message(session_id, parent_id)?.ok_or_else(|| {
                Error::corrupt(format!(
                    "parent {parent_id} of a message in session {session_id} is missing"
                ))
            })?;
        }
        branch.reverse();
        Ok(Some(branch))
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
            low = low.max(u64::try_from(after_seq).unwrap_or(0));
        }
        if let Some(before_seq) = query.before_seq {
            high = high.min(u64::try_from(before_seq).unwrap_or(0));
        }
        if let Some(after_ms) = query.after_ms {
            // Messages after `after_ms` start at the first seq stored later than it.
            low = low.max(
                self.first_seq_where(session, |ms| i128::from(ms) > i128::from(after_ms))? - 1,
            );
        }
        if let Some(before_ms) = query.before_ms {
            high = high
                .min(self.first_seq_where(session, |ms| i128::from(ms) >= i128::from(before_ms))?);
        }
        let page = if low.saturating_add(1) >= high {
            MessagePage {
                messages: Vec::new(),
                has_more: false,
            }
        } else {
            let oldest_first = query.after_seq.is_some() || query.after_ms.is_some();
            let newest_first = query.before_seq.is_some() || query.before_ms.is_some();
            self.read_page(session.id, query, low, high, oldest_first && !newest_first)?
        };
        Ok(Ok(page))
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
    ) -> Result<MessagePage> {
        let seqs: Box<dyn DoubleEndedIterator<Item = Result<u64>>> = match query.parent_id {
            None => Box::new(
                self.messages
                    .range(keys::message(session_id, low + 1)..keys::message(session_id, high))
                    .keys()
                    .map(|key| Ok(keys::parse_message(&key?)?.1)),
            ),
            Some(parent_id) => Box::new(
                self.children
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
            let message = self.message_at(session_id, seq)?.ok_or_else(|| {
                Error::corrupt(format!("message {seq} of session {session_id} is missing"))
            })?;
            messages.push(message);
        }
        if ascending {
            messages.reverse();
        }
        Ok(MessagePage { messages, has_more })
    }

    /// The smallest seq in 1..=count whose creation time (epoch ms) satisfies `pred`, or
    /// count + 1 if none does. `pred` must be monotone in seq (false… then true…), which
    /// holds because message times never go backwards.
    fn first_seq_where(&self, session: &Session, pred: impl Fn(u64) -> bool) -> Result<u64> {
        let (mut low, mut high) = (1, session.message_count + 1);
        while low < high {
            let mid = low + (high - low) / 2;
            let message = self.message_at(session.id, mid)?.ok_or_else(|| {
                Error::corrupt(format!(
                    "message {mid} of session {} is missing",
                    session.id
                ))
            })?;
            if pred(message.created_at.as_millis()) {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        Ok(low)
    }

    /// Removes a deleted session's messages and their index entries in bounded batches,
    /// then its purge marker. Safe to repeat after a crash.
    ///
    /// # Errors
    /// Storage failures.
    pub(crate) fn purge_messages(&self, session_id: Uuid) -> Result<()> {
        const BATCH: usize = 512;
        loop {
            let mut batch = sled::Batch::default();
            let mut locations = sled::Batch::default();
            let mut children = sled::Batch::default();
            let mut n = 0;
            for entry in self
                .messages
                .scan_prefix(keys::session(session_id))
                .take(BATCH)
            {
                let (key, value) = entry?;
                // Index entries go first: a crash then leaves a message without index
                // entries, which the next purge still finds through this prefix scan.
                match codec::decode::<Message>(&value) {
                    Ok(message) => {
                        locations.remove(&keys::session(message.id));
                        if let Some(parent_id) = message.parent_id {
                            children.remove(&keys::child(parent_id, message.seq));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%session_id, %error, "purging an undecodable message")
                    }
                }
                batch.remove(key);
                n += 1;
            }
            if n == 0 {
                break;
            }
            self.message_locations.apply_batch(locations)?;
            self.children.apply_batch(children)?;
            self.messages.apply_batch(batch)?;
            if n < BATCH {
                break;
            }
        }
        self.purges.remove(keys::session(session_id))?;
        Ok(())
    }
}
