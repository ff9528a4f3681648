//! `sessiond export` and `sessiond import`: a whole store as NDJSON, through the store's
//! own reads and writes, so that it moves between engines and machines. The format is in
//! `docs/EXPORT.md`. The same export streams from a live server (`GET /api/admin/export`,
//! `sessiond backup`), where [`ExportCheck`] tells a reader whether it got all of it.

use std::future::Future;
use std::io::{BufRead, Write};

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Attachment, Message, Session, SessionError, TimeoutConfig, Timestamp};
use crate::error::{Error, Result};
use crate::store::{MessageQuery, Progress, SessionQuery, StatusFilter, Store};

/// What the first line of an export names.
pub const FORMAT: &str = "sessiond-export";
/// The version of the format this sessiond writes. Version 2 added the end line; a
/// sessiond that reads only version 1 refuses version 2 at its first line rather than
/// importing every session and then refusing the last line.
pub const VERSION: u32 = 2;
/// The oldest version this sessiond reads: version 1, the same without the end line.
pub const OLDEST_READABLE_VERSION: u32 = 1;

/// Sessions per listing page, and messages per page, while exporting.
const EXPORT_PAGE: usize = 256;
/// Sessions an import has in flight: enough for the writer to batch them.
const IMPORT_IN_FLIGHT: usize = 64;

/// The first line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
}

/// The last line, from version 2 on: the export is whole, and this is what it holds. A
/// reader that does not meet it knows the export was cut short.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    /// Always `true`: what tells this line from a session line.
    end: bool,
    /// Session lines before it.
    sessions: u64,
    /// Messages in those lines.
    messages: u64,
}

impl EndLine {
    /// Reads `text` as an end line, if it is one.
    fn parse(text: &str) -> Option<EndLine> {
        serde_json::from_str::<EndLine>(text)
            .ok()
            .filter(|line| line.end)
    }

    /// Whether it counts what was read before it; why not, if it does not.
    fn verify(&self, read: Moved) -> std::result::Result<(), String> {
        if self.sessions == read.sessions && self.messages == read.messages {
            Ok(())
        } else {
            Err(format!(
                "the end line counts {} sessions and {} messages, but {} sessions and {} messages came before it",
                self.sessions, self.messages, read.sessions, read.messages
            ))
        }
    }
}

/// One line after the first: a session and its whole history.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionLine {
    session: SessionRecord,
    messages: Vec<MessageRecord>,
}

/// Every stored field of a session. Times are microseconds since the Unix epoch.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SessionRecord {
    id: Uuid,
    agent_id: Uuid,
    user_id: Uuid,
    created_at: Timestamp,
    last_activity: Timestamp,
    renewed_at: Timestamp,
    renewal_count: u64,
    timeout: TimeoutRecord,
    metadata_json: String,
    message_count: u64,
    last_message_id: Option<Uuid>,
    last_message_at: Timestamp,
    expiring_noticed_for: Option<Timestamp>,
    expired_noticed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TimeoutRecord {
    timeout_minutes: u32,
    auto_renew: bool,
    max_duration_minutes: u32,
    warning_threshold_minutes: u32,
}

/// Every stored field of a message but its session id, which is its line's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MessageRecord {
    id: Uuid,
    seq: u64,
    parent_id: Option<Uuid>,
    content: String,
    author_id: Uuid,
    is_agent: bool,
    created_at: Timestamp,
    metadata_json: String,
    attachments: Vec<AttachmentRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentRecord {
    #[serde(rename = "type")]
    kind: String,
    url: String,
    name: Option<String>,
}

impl From<&Session> for SessionRecord {
    fn from(session: &Session) -> Self {
        let timeout = session.timeout;
        SessionRecord {
            id: session.id,
            agent_id: session.agent_id,
            user_id: session.user_id,
            created_at: session.created_at,
            last_activity: session.last_activity,
            renewed_at: session.renewed_at,
            renewal_count: session.renewal_count,
            timeout: TimeoutRecord {
                timeout_minutes: timeout.timeout_minutes,
                auto_renew: timeout.auto_renew,
                max_duration_minutes: timeout.max_duration_minutes,
                warning_threshold_minutes: timeout.warning_threshold_minutes,
            },
            metadata_json: session.metadata_json.clone(),
            message_count: session.message_count,
            last_message_id: session.last_message_id,
            last_message_at: session.last_message_at,
            expiring_noticed_for: session.expiring_noticed_for,
            expired_noticed: session.expired_noticed,
        }
    }
}

impl From<SessionRecord> for Session {
    fn from(record: SessionRecord) -> Self {
        let timeout = record.timeout;
        Session {
            id: record.id,
            agent_id: record.agent_id,
            user_id: record.user_id,
            created_at: record.created_at,
            last_activity: record.last_activity,
            renewed_at: record.renewed_at,
            renewal_count: record.renewal_count,
            timeout: TimeoutConfig {
                timeout_minutes: timeout.timeout_minutes,
                auto_renew: timeout.auto_renew,
                max_duration_minutes: timeout.max_duration_minutes,
                warning_threshold_minutes: timeout.warning_threshold_minutes,
            },
            metadata_json: record.metadata_json,
            message_count: record.message_count,
            last_message_id: record.last_message_id,
            last_message_at: record.last_message_at,
            expiring_noticed_for: record.expiring_noticed_for,
            expired_noticed: record.expired_noticed,
        }
    }
}

impl From<&Message> for MessageRecord {
    fn from(message: &Message) -> Self {
        MessageRecord {
            id: message.id,
            seq: message.seq,
            parent_id: message.parent_id,
            content: message.content.clone(),
            author_id: message.author_id,
            is_agent: message.is_agent,
            created_at: message.created_at,
            metadata_json: message.metadata_json.clone(),
            attachments: message
                .attachments
                .iter()
                .map(|attachment| AttachmentRecord {
                    kind: attachment.kind.clone(),
                    url: attachment.url.clone(),
                    name: attachment.name.clone(),
                })
                .collect(),
        }
    }
}

impl MessageRecord {
    fn into_message(self, session_id: Uuid) -> Message {
        Message {
            id: self.id,
            session_id,
            seq: self.seq,
            parent_id: self.parent_id,
            content: self.content,
            author_id: self.author_id,
            is_agent: self.is_agent,
            created_at: self.created_at,
            metadata_json: self.metadata_json,
            attachments: self
                .attachments
                .into_iter()
                .map(|attachment| Attachment {
                    kind: attachment.kind,
                    url: attachment.url,
                    name: attachment.name,
                })
                .collect(),
        }
    }
}

/// What a transfer moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Sessions, each with its whole history.
    pub sessions: u64,
    /// Messages.
    pub messages: u64,
}

/// Where the lines of an export go, in order: a file or a pipe (any [`Write`]), or the
/// body of a response.
pub trait ExportSink {
    /// Takes one line, its `\n` included; may wait while the reader is behind.
    fn put(&mut self, line: Vec<u8>) -> impl Future<Output = Result<()>>;
    /// Passes on whatever it holds back, once the last line is in.
    fn finish(&mut self) -> impl Future<Output = Result<()>>;
}

impl<W: Write> ExportSink for W {
    async fn put(&mut self, line: Vec<u8>) -> Result<()> {
        Ok(self.write_all(&line)?)
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(self.flush()?)
    }
}

/// Writes every session of `store`, expired or not, with its messages in seq order, to
/// `sink`: the header line, one line per session, and the end line. Each session line is
/// the session as it stood at one moment: its messages are those its count names, and
/// messages never change. A session deleted while it is read is left out. Writes may go on
/// meanwhile: every session stored before the export began is in it. `progress` counts the
/// sessions, out of those stored when it began.
///
/// # Errors
/// Storage failures, and failures of `sink`. The end line is written only when every
/// session was, so a reader can tell a whole export from one that stopped.
pub async fn export(
    store: &Store,
    sink: &mut impl ExportSink,
    progress: &dyn Progress,
) -> Result<Moved> {
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
    };
    sink.put(json_line(&header)?).await?;
    let stored = store.counts(store.clock().now()).await?.total;
    progress.stage("exporting sessions", Some(stored));
    let mut moved = Moved::default();
    let mut after = None;
    loop {
        let query = SessionQuery {
            agent_id: None,
            user_id: None,
            status: StatusFilter::All,
            limit: EXPORT_PAGE,
            after,
        };
        let page = store.list_sessions(query, store.clock().now()).await?;
        for session in &page.sessions {
            let Some(messages) = history(store, session).await? else {
                continue;
            };
            let line = SessionLine {
                session: session.into(),
                messages: messages.iter().map(MessageRecord::from).collect(),
            };
            sink.put(json_line(&line)?).await?;
            moved.sessions += 1;
            moved.messages += messages.len() as u64;
            progress.advance(1);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let end = EndLine {
        end: true,
        sessions: moved.sessions,
        messages: moved.messages,
    };
    sink.put(json_line(&end)?).await?;
    sink.finish().await?;
    Ok(moved)
}

/// The messages `session` counts, oldest first; `None` when it was deleted meanwhile.
async fn history(store: &Store, session: &Session) -> Result<Option<Vec<Message>>> {
    let mut messages = Vec::new();
    while (messages.len() as u64) < session.message_count {
        // `after_seq` alone pages from the oldest on (with an upper bound too, a page holds
        // the newest of its range); messages appended since the session was read are left
        // out below.
        let query = MessageQuery {
            limit: EXPORT_PAGE,
            after_seq: Some(messages.len() as u64),
            ..MessageQuery::default()
        };
        let page = match store.page_messages(session, &query).await? {
            Ok(page) => page,
            Err(SessionError::NotFound(_)) => return Ok(None),
            Err(refused) => return Err(Error::corrupt(refused.to_string())),
        };
        if page.messages.is_empty() {
            return Ok(None);
        }
        messages.extend(
            page.messages
                .into_iter()
                .rev()
                .take_while(|message| message.seq <= session.message_count),
        );
    }
    Ok(Some(messages))
}

/// `value` as one line of JSON, `\n` included.
fn json_line(value: &impl Serialize) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(value).map_err(|error| Error::Codec(Box::new(error)))?;
    line.push(b'\n');
    Ok(line)
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A line is not what the format says, or its session is refused.
    #[error("line {line}: {reason}")]
    Line {
        /// The line's number, from 1.
        line: u64,
        /// What is wrong with it.
        reason: String,
        /// What was imported before the import stopped.
        moved: Moved,
    },
    /// The store or the input failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// Reads an export from `input` and stores each session exactly as it was, with every id,
/// seq, parent and time. Sessions are stored whole, several at a time so that the engine
/// batches them. The import stops at the first line that is malformed or refused (a
/// session id or a message id taken, a history that is not whole) and reports that line;
/// sessions of lines read before it may still have been stored, each whole. An export of
/// version 2 must end with its end line, counting what came before it: without it the
/// export was cut short, and the import says so, at the line where the end line should be.
/// `progress` counts the session lines read.
///
/// # Errors
/// [`ImportError::Line`] for a refused line; [`ImportError::Store`] for failures of the
/// store or of reading `input`.
pub async fn import(
    store: &Store,
    input: impl BufRead,
    progress: &dyn Progress,
) -> std::result::Result<Moved, ImportError> {
    let mut lines = input.lines().zip(1u64..);
    let mut moved = Moved::default();
    let line_error = |line, reason: String, moved| ImportError::Line {
        line,
        reason,
        moved,
    };
    let Some((first, _)) = lines.next() else {
        return Err(line_error(
            1,
            "the input is empty: no header line".into(),
            moved,
        ));
    };
    let version = match serde_json::from_str::<Header>(&first.map_err(Error::from)?) {
        Ok(header)
            if header.format == FORMAT
                && (OLDEST_READABLE_VERSION..=VERSION).contains(&header.version) =>
        {
            header.version
        }
        Ok(header) if header.format == FORMAT => {
            let reason = format!(
                "format version {} is not one this sessiond reads ({OLDEST_READABLE_VERSION} to {VERSION})",
                header.version
            );
            return Err(line_error(1, reason, moved));
        }
        _ => {
            let reason = format!(
                r#"not a sessiond export: the first line must be {{"format":"{FORMAT}","version":{VERSION}}}"#
            );
            return Err(line_error(1, reason, moved));
        }
    };
    progress.stage("importing sessions", None);
    let mut in_flight = FuturesUnordered::new();
    let mut refused = None;
    // What the session lines hold, to hold the end line against.
    let mut read = Moved::default();
    let mut ended = false;
    let mut last_line = 1;
    for (text, number) in lines {
        let text = text.map_err(Error::from)?;
        last_line = number;
        if text.trim().is_empty() {
            continue;
        }
        if ended {
            refused = Some((number, "a line after the end line".to_owned()));
            break;
        }
        let line: SessionLine = match serde_json::from_str(&text) {
            Ok(line) => line,
            Err(error) => {
                match EndLine::parse(&text).filter(|_| version >= 2) {
                    Some(end) => match end.verify(read) {
                        Ok(()) => ended = true,
                        Err(reason) => refused = Some((number, reason)),
                    },
                    None => refused = Some((number, error.to_string())),
                }
                if refused.is_some() {
                    break;
                }
                continue;
            }
        };
        let session = Session::from(line.session);
        let messages = line
            .messages
            .into_iter()
            .map(|record| record.into_message(session.id))
            .collect::<Vec<_>>();
        let count = messages.len() as u64;
        read.sessions += 1;
        read.messages += count;
        progress.advance(1);
        in_flight.push(async move {
            let outcome = store.restore_session(session, messages).await;
            (number, count, outcome)
        });
        if in_flight.len() >= IMPORT_IN_FLIGHT {
            if let Some(done) = in_flight.next().await {
                refused = settle(done, &mut moved)?;
                if refused.is_some() {
                    break;
                }
            }
        }
    }
    if version >= 2 && !ended && refused.is_none() {
        refused = Some((
            last_line + 1,
            format!(
                "the export ends without its end line: it was cut short after {} sessions",
                read.sessions
            ),
        ));
    }
    while let Some(done) = in_flight.next().await {
        if let Some(failed) = settle(done, &mut moved)? {
            // The first line refused is the one to report.
            if refused.as_ref().is_none_or(|(line, _)| failed.0 < *line) {
                refused = Some(failed);
            }
        }
    }
    match refused {
        Some((line, reason)) => Err(line_error(line, reason, moved)),
        None => Ok(moved),
    }
}

/// Follows an export line by line as it passes (a backup being fetched, say): counts its
/// sessions and messages, and tells whether it ended whole, with an end line that counts
/// what came before it.
#[derive(Debug, Default)]
pub struct ExportCheck {
    /// Lines seen, the header included.
    lines: u64,
    /// What the session lines held.
    read: Moved,
    /// Whether the end line came, counting what came before it.
    ended: bool,
}

/// Only what counting needs of a session line: its messages, unread.
#[derive(Deserialize)]
struct CountedLine {
    messages: Vec<serde::de::IgnoredAny>,
}

impl ExportCheck {
    /// Takes the next line (without its `\n`).
    ///
    /// # Errors
    /// Why the line cannot be where it is: a first line that is not the header of an
    /// export this sessiond reads, a line that is neither a session line nor a true end
    /// line, or any line after the end line.
    pub fn line(&mut self, text: &[u8]) -> std::result::Result<(), String> {
        self.lines += 1;
        if self.lines == 1 {
            return match serde_json::from_slice::<Header>(text) {
                Ok(header) if header.format == FORMAT && header.version == VERSION => Ok(()),
                _ => Err(format!(
                    r#"not a sessiond export of version {VERSION}: the first line must be {{"format":"{FORMAT}","version":{VERSION}}}"#
                )),
            };
        }
        if self.ended {
            return Err(format!("line {}: a line after the end line", self.lines));
        }
        if let Ok(line) = serde_json::from_slice::<CountedLine>(text) {
            self.read.sessions += 1;
            self.read.messages += line.messages.len() as u64;
            return Ok(());
        }
        let end = std::str::from_utf8(text).ok().and_then(EndLine::parse);
        match end {
            Some(end) => {
                end.verify(self.read)
                    .map_err(|reason| format!("line {}: {reason}", self.lines))?;
                self.ended = true;
                Ok(())
            }
            None => Err(format!(
                "line {}: neither a session line nor the end line",
                self.lines
            )),
        }
    }

    /// The sessions and messages seen so far.
    pub fn moved(&self) -> Moved {
        self.read
    }

    /// Whether the end line has come: the export is whole.
    pub fn is_whole(&self) -> bool {
        self.ended
    }
}

/// Counts a stored session; returns the line and the reason of a refused one.
fn settle(
    (line, messages, outcome): (u64, u64, Result<std::result::Result<(), SessionError>>),
    moved: &mut Moved,
) -> Result<Option<(u64, String)>> {
    match outcome? {
        Ok(()) => {
            moved.sessions += 1;
            moved.messages += messages;
            Ok(None)
        }
        Err(refused) => Ok(Some((line, refused.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{Clock, NewMessage, SessionChange};
    use crate::store::test_support::{
        append_texts, appended, clocked_store, created_session, session_at, temp_store,
        text_message, T0,
    };
    use crate::store::NoProgress;

    async fn exported(store: &Store) -> (String, Moved) {
        let mut out = Vec::new();
        let moved = export(store, &mut out, &NoProgress)
            .await
            .expect("the store exports");
        (String::from_utf8(out).expect("UTF-8"), moved)
    }

    async fn imported(store: &Store, text: &str) -> std::result::Result<Moved, ImportError> {
        import(store, text.as_bytes(), &NoProgress).await
    }

    /// An export of the version before end lines: the version-1 header, no end line.
    fn as_version_1(text: &str) -> String {
        let mut lines: Vec<&str> = text.lines().collect();
        let end = lines.pop().expect("an end line");
        assert!(end.starts_with("{\"end\":true"), "{end}");
        lines[0] = "{\"format\":\"sessiond-export\",\"version\":1}";
        lines.iter().map(|line| format!("{line}\n")).collect()
    }

    /// A store with what an export must keep: branches, an author's attachments, metadata
    /// on several lines, renewals, a lifecycle notice, an expired session, an empty one,
    /// and a deleted one that must not appear.
    async fn varied_store() -> (Store, tempfile::TempDir) {
        let (store, clock, dir) = clocked_store(T0);
        let branching = created_session(&store, T0).await;
        let messages = append_texts(&store, branching.id, 3).await;
        clock.advance(Duration::from_millis(1500));
        let reply = NewMessage {
            author_id: Some(branching.agent_id),
            metadata_json: "{\n  \"tool\": \"search\"\n}".into(),
            attachments: vec![Attachment {
                kind: "image".into(),
                url: "https://example.com/a.png".into(),
                name: Some("a".into()),
            }],
            ..text_message("a branch from the first", Some(messages[0].id))
        };
        appended(&store, branching.id, reply).await;
        clock.advance(Duration::from_secs(1));
        store
            .update_session(branching.id, SessionChange::Renew)
            .await
            .expect("stored")
            .expect("renewed");
        let mut metadata = session_at(T0, 30, 5);
        metadata.metadata_json = "{\"plan\":\"pro\"}".into();
        store
            .create_session(metadata.clone())
            .await
            .expect("stored");
        let short = session_at(clock.now(), 1, 1);
        store.create_session(short.clone()).await.expect("stored");
        append_texts(&store, short.id, 1).await;
        let doomed = created_session(&store, clock.now()).await;
        append_texts(&store, doomed.id, 2).await;
        store
            .delete_session(doomed.id, clock.now())
            .await
            .expect("deleted");
        // The short session, created inside its warning window (noticed then), expires, and
        // that is noticed too.
        clock.advance(Duration::from_secs(90));
        assert!(store.record_due_notices(short.id).await.expect("stored"));
        (store, dir)
    }

    #[tokio::test]
    async fn a_session_longer_than_an_export_page_exports_whole_in_order_and_imports() {
        // Arrange: more messages than one page of the export's reads, and then some.
        let (store, _dir) = temp_store();
        let session = created_session(&store, store.clock().now()).await;
        let count = EXPORT_PAGE * 2 + 3;
        append_texts(&store, session.id, count).await;

        // Act
        let (text, moved) = exported(&store).await;
        let (copy, _copy_dir) = temp_store();
        let restored = imported(&copy, &text).await;

        // Assert
        assert_eq!(moved.messages, count as u64);
        let line: serde_json::Value =
            serde_json::from_str(text.lines().nth(1).expect("a session line")).unwrap();
        let seqs: Vec<u64> = line["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|message| message["seq"].as_u64().expect("a seq"))
            .collect();
        assert_eq!(seqs, (1..=count as u64).collect::<Vec<_>>());
        assert_eq!(restored.expect("the export imports").messages, count as u64);
    }

    #[tokio::test]
    async fn an_exported_store_imports_into_an_empty_one_identical_field_for_field() {
        // Arrange
        let (source, _source_dir) = varied_store().await;
        let (text, moved) = exported(&source).await;
        let (target, _target_dir) = temp_store();

        // Act
        let loaded = imported(&target, &text).await.expect("the export imports");

        // Assert
        assert_eq!(
            moved,
            Moved {
                sessions: 3,
                messages: 5
            }
        );
        assert_eq!(loaded, moved);
        assert_eq!(exported(&target).await.0, text, "exports of both stores");
        let first = text.lines().nth(1).expect("a session line");
        let line: SessionLine = serde_json::from_str(first).expect("a session line");
        let id = line.session.id;
        let (before, after) = (
            source.session(id).await.expect("reads"),
            target.session(id).await.expect("reads"),
        );
        assert_eq!(before, after);
        assert!(target.check().expect("checks").is_clean());
        assert!(!text.contains("\n\n"), "one line per record: {text}");
    }

    #[tokio::test]
    async fn an_imported_branch_is_found_by_its_replies_and_threads() {
        // Arrange
        let (source, _source_dir) = varied_store().await;
        let (target, _target_dir) = temp_store();
        imported(&target, &exported(&source).await.0)
            .await
            .expect("imports");
        let (text, _) = exported(&target).await;
        let branching = text
            .lines()
            .skip(1)
            .map(|line| serde_json::from_str::<SessionLine>(line).expect("a line"))
            .find(|line| line.messages.len() == 4)
            .expect("the branching session");
        let session = target
            .session(branching.session.id)
            .await
            .expect("reads")
            .expect("stored");
        let root = branching.messages[0].id;

        // Act
        let replies = target
            .page_messages(
                &session,
                &MessageQuery {
                    limit: 10,
                    parent_id: Some(root),
                    ..MessageQuery::default()
                },
            )
            .await
            .expect("reads")
            .expect("a parent of the session");

        // Assert: the second message and the branch, newest first.
        let ids: Vec<Uuid> = replies.messages.iter().map(|m| m.id).collect();
        assert_eq!(
            ids,
            vec![branching.messages[3].id, branching.messages[1].id]
        );
    }

    #[tokio::test]
    async fn an_import_stops_at_a_taken_session_id_and_says_which_line() {
        // Arrange
        let (source, _source_dir) = varied_store().await;
        let (text, _) = exported(&source).await;

        // Act
        let again = imported(&source, &text).await;

        // Assert
        match again {
            Err(ImportError::Line {
                line,
                reason,
                moved,
            }) => {
                assert_eq!(line, 2);
                assert!(reason.contains("already exists"), "{reason}");
                assert_eq!(moved.sessions, 0);
            }
            other => panic!("expected a refused line, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_message_id_taken_by_another_session_is_refused_and_nothing_of_it_stored() {
        // Arrange
        let (source, _source_dir) = varied_store().await;
        let (text, _) = exported(&source).await;
        let mut line: SessionLine = serde_json::from_str(
            text.lines()
                .skip(1)
                .find(|line| line.contains("\"seq\":1"))
                .expect("a session with messages"),
        )
        .expect("a line");
        let renamed = Uuid::now_v7();
        line.session.id = renamed;
        let forged = format!(
            "{}\n{}\n",
            text.lines().next().expect("the header"),
            serde_json::to_string(&line).expect("encodes")
        );

        // Act
        let outcome = imported(&source, &forged).await;

        // Assert
        assert!(
            matches!(&outcome, Err(ImportError::Line { line: 2, reason, .. }) if reason.contains("message")),
            "{outcome:?}"
        );
        assert_eq!(source.session(renamed).await.expect("reads"), None);
    }

    #[tokio::test]
    async fn an_input_that_is_not_an_export_of_this_version_is_refused_at_line_one() {
        let (store, _dir) = temp_store();
        for (input, expected) in [
            ("", "empty"),
            ("{\"sessions\":[]}\n", "not a sessiond export"),
            (
                "{\"format\":\"sessiond-export\",\"version\":3}\n",
                "format version 3",
            ),
        ] {
            match imported(&store, input).await {
                Err(ImportError::Line {
                    line: 1, reason, ..
                }) => {
                    assert!(reason.contains(expected), "{input:?}: {reason}");
                }
                other => panic!("{input:?}: expected line 1 refused, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_malformed_or_broken_session_line_is_refused_with_its_number() {
        // Arrange
        let (source, _source_dir) = varied_store().await;
        let (text, _) = exported(&source).await;
        let header = text.lines().next().expect("the header");
        let with_messages = text
            .lines()
            .skip(1)
            .find(|line| line.contains("\"seq\":2"))
            .expect("a session with two messages or more");
        let gap = with_messages.replacen("\"seq\":2", "\"seq\":7", 1);
        let (target, _target_dir) = temp_store();

        // Act
        let malformed = imported(&target, &format!("{header}\n{{\"session\":1}}\n")).await;
        let broken = imported(&target, &format!("{header}\n\n{gap}\n")).await;

        // Assert
        assert!(
            matches!(&malformed, Err(ImportError::Line { line: 2, .. })),
            "{malformed:?}"
        );
        assert!(
            matches!(&broken, Err(ImportError::Line { line: 3, reason, .. }) if reason.contains("seq 7")),
            "{broken:?}"
        );
        assert_eq!(exported(&target).await.1, Moved::default());
    }

    #[tokio::test]
    async fn an_export_ends_with_a_line_that_counts_its_sessions_and_messages() {
        // Arrange
        let (source, _source_dir) = varied_store().await;

        // Act
        let (text, moved) = exported(&source).await;

        // Assert
        assert_eq!(
            text.lines().next(),
            Some("{\"format\":\"sessiond-export\",\"version\":2}")
        );
        assert_eq!(
            text.lines().last(),
            Some(r#"{"end":true,"sessions":3,"messages":5}"#)
        );
        assert_eq!((moved.sessions, moved.messages), (3, 5));
    }

    #[tokio::test]
    async fn an_export_of_version_1_without_an_end_line_still_imports() {
        // Arrange
        let (source, _source_dir) = varied_store().await;
        let (text, moved) = exported(&source).await;
        let (target, _target_dir) = temp_store();

        // Act
        let loaded = imported(&target, &as_version_1(&text)).await;

        // Assert
        assert_eq!(loaded.expect("a version 1 export imports"), moved);
        assert_eq!(exported(&target).await.0, text);
    }

    #[tokio::test]
    async fn an_export_cut_short_is_refused_where_its_end_line_should_be() {
        // Arrange
        let (source, _source_dir) = varied_store().await;
        let (text, _) = exported(&source).await;
        let cut: String = text
            .lines()
            .take(3)
            .map(|line| format!("{line}\n"))
            .collect();
        let (target, _target_dir) = temp_store();

        // Act
        let outcome = imported(&target, &cut).await;

        // Assert: the two session lines read are stored, and the import says it was cut.
        match outcome {
            Err(ImportError::Line {
                line,
                reason,
                moved,
            }) => {
                assert_eq!(line, 4);
                assert!(reason.contains("cut short after 2 sessions"), "{reason}");
                assert_eq!(moved.sessions, 2);
            }
            other => panic!("expected the cut to be named, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_end_line_that_miscounts_or_is_followed_by_a_line_is_refused() {
        // Arrange
        let (source, _source_dir) = varied_store().await;
        let (text, _) = exported(&source).await;
        let lines: Vec<&str> = text.lines().collect();
        let without_end = &lines[..lines.len() - 1];
        let miscounted = format!(
            "{}\n{}\n",
            without_end.join("\n"),
            r#"{"end":true,"sessions":3,"messages":6}"#
        );
        let followed = format!("{text}{}\n", lines[1]);

        // Act
        let miscounted = imported(&temp_store().0, &miscounted).await;
        let followed = imported(&temp_store().0, &followed).await;

        // Assert
        assert!(
            matches!(&miscounted, Err(ImportError::Line { line: 5, reason, .. }) if reason.contains("counts 3 sessions and 6 messages")),
            "{miscounted:?}"
        );
        assert!(
            matches!(&followed, Err(ImportError::Line { line: 6, reason, .. }) if reason.contains("after the end line")),
            "{followed:?}"
        );
    }

    #[tokio::test]
    async fn an_export_check_counts_as_lines_pass_and_knows_a_whole_export_from_a_cut_one() {
        // Arrange
        let (source, _source_dir) = varied_store().await;
        let (text, moved) = exported(&source).await;
        let lines: Vec<&str> = text.lines().collect();

        // Act
        let mut whole = ExportCheck::default();
        let mut cut = ExportCheck::default();
        for line in &lines {
            whole.line(line.as_bytes()).expect("a line of an export");
        }
        for line in &lines[..lines.len() - 1] {
            cut.line(line.as_bytes()).expect("a line of an export");
        }

        // Assert
        assert!(whole.is_whole());
        assert_eq!(whole.moved(), moved);
        assert!(!cut.is_whole());
        assert_eq!(cut.moved(), moved);
        assert!(whole.line(lines[1].as_bytes()).is_err(), "after the end");
        let mut foreign = ExportCheck::default();
        assert!(foreign.line(b"<html>").is_err());
    }
}
