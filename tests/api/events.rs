//! Real-time events over real HTTP: the per-session and per-owner event streams, resuming
//! with `Last-Event-ID` (also across a restart), the lifecycle events, waiting for the agent's
//! reply (`transport: "http"` and `"sse"`), shutdown, and the example echo agent.
//!
//! Streams are read with reqwest's `bytes_stream` and the small parser below. Events reach
//! live streams only once they are on disk, so every read waits with a timeout ([`WAIT`])
//! instead of sleeping.

use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, Method, Response};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    field_str, field_u64, millis, new_id, spawn_app, spawn_app_allowing_instant_expiry,
    spawn_app_with, spawn_app_with_clock, Api, Session, TestApp, API, API_KEY_HEADER, MINUTE_MS,
    T0_MS,
};

#[allow(dead_code)] // its `main` only runs as the example
#[path = "../../examples/echo_agent.rs"]
mod echo_agent;

/// The longest any single wait for an event (or the end of a stream) may take.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Reading Server-Sent Events

/// One event as sent: its `id:` (absent on reply-stream events), `event:` name and JSON `data:`.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    name: String,
    data: Value,
    /// The data as sent; `data` is `Null` when the stream was opened with `raw`.
    raw: String,
}

impl Sse {
    #[track_caller]
    fn id(&self) -> u64 {
        self.id
            .unwrap_or_else(|| panic!("event without an id: {self:?}"))
    }
}

/// An open `text/event-stream` response, read event by event.
struct EventStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    /// Bytes not yet part of a complete event.
    buffer: Vec<u8>,
    /// Complete events not yet handed out.
    ready: VecDeque<Sse>,
    ended: bool,
    /// Whether to parse each event's data into `Sse::data` (skipped where only a field or
    /// two matter and thousands of events arrive).
    parse_data: bool,
}

impl EventStream {
    /// GETs an event stream (a path under `/api/messaging`), resuming after `last_event_id`;
    /// asserts 200 `text/event-stream`. Once this returns, the server has subscribed: every
    /// later change is on the stream.
    async fn open(app: &TestApp, path: &str, last_event_id: Option<u64>) -> EventStream {
        // A client of its own without a total timeout: a stream may outlive any fixed one.
        let client = Client::builder()
            .no_proxy()
            .build()
            .expect("a plain HTTP client can be built");
        let mut request = client.get(app.url(&format!("{API}{path}")));
        if let Some(key) = &app.api_key {
            request = request.header(API_KEY_HEADER, key);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("the event stream answers in time")
            .expect("the event stream request reaches the server");
        EventStream::from_response(response)
    }

    /// Reads a response that must be a 200 `text/event-stream`.
    fn from_response(response: Response) -> EventStream {
        assert_eq!(response.status().as_u16(), 200, "event stream status");
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content type is {content_type:?}"
        );
        EventStream {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            ready: VecDeque::new(),
            ended: false,
            parse_data: true,
        }
    }

    /// The next event, or `None` when the stream ended; `Err` when `wait` passed first.
    async fn next_within(&mut self, wait: Duration) -> Result<Option<Sse>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            if self.ended {
                return Ok(None);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Err(()),
                // A reset at the end counts as the end (the server closes streams at shutdown).
                Ok(None | Some(Err(_))) => self.ended = true,
                Ok(Some(Ok(chunk))) => {
                    self.buffer.extend_from_slice(&chunk);
                    self.parse_complete_events();
                }
            }
        }
    }

    /// Moves every complete event (ended by a blank line; warp writes `\n` line ends) from
    /// the buffer to `ready`. Comment-only blocks (keep-alives) are skipped.
    fn parse_complete_events(&mut self) {
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let block = String::from_utf8(block).expect("events are UTF-8");
            let (mut id, mut name, mut data) = (None, None, Vec::new());
            for line in block
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with(':'))
            {
                // Every field is written `name: value`, with the space hand-written readers
                // look for (`line.startsWith("data: ")`).
                let (field, value) = line
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("line {line:?} is not `field: value`"));
                match field {
                    "id" => {
                        id = Some(
                            value
                                .parse()
                                .unwrap_or_else(|_| panic!("event id {value:?} is an integer")),
                        );
                    }
                    "event" => name = Some(value.to_owned()),
                    "data" => data.push(value),
                    other => panic!("unexpected field {other:?} in {block:?}"),
                }
            }
            if data.is_empty() && name.is_none() {
                continue;
            }
            let raw = data.join("\n");
            let data = if self.parse_data {
                serde_json::from_str(&raw)
                    .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {raw:?}"))
            } else {
                Value::Null
            };
            self.ready.push_back(Sse {
                id,
                name: name.unwrap_or_else(|| "message".to_owned()),
                data,
                raw,
            });
        }
    }

    /// The next event; panics when the stream ends or nothing comes within [`WAIT`].
    async fn next(&mut self) -> Sse {
        match self.next_within(WAIT).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the stream ended, an event was expected"),
            Err(()) => panic!("no event within {WAIT:?}"),
        }
    }

    /// The next `count` events.
    async fn take(&mut self, count: usize) -> Vec<Sse> {
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            events.push(self.next().await);
        }
        events
    }

    /// Events up to and including the first one named `name`.
    async fn until_named(&mut self, name: &str) -> Vec<Sse> {
        let mut events = Vec::new();
        loop {
            let event = self.next().await;
            let found = event.name == name;
            events.push(event);
            if found {
                return events;
            }
        }
    }

    /// The next event named `name`, skipping the others.
    async fn next_named(&mut self, name: &str) -> Sse {
        let mut events = self.until_named(name).await;
        events.pop().expect("until_named ends with the named event")
    }

    /// The events still to come; panics unless the stream ends within [`WAIT`].
    async fn rest(&mut self) -> Vec<Sse> {
        let deadline = Instant::now() + WAIT;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Ok(Some(event)) => events.push(event),
                Ok(None) => return events,
                Err(()) => panic!("the stream did not end within {WAIT:?}; got {events:?}"),
            }
        }
    }

    /// Asserts that the stream ends (within [`WAIT`]) with no further event.
    async fn assert_ends(&mut self) {
        match self.next_within(WAIT).await {
            Ok(None) => {}
            Ok(Some(event)) => panic!("the stream should have ended, got {event:?}"),
            Err(()) => panic!("the stream did not end within {WAIT:?}"),
        }
    }
}

/// `/sessions/{id}/events`.
fn session_events(session_id: &str) -> String {
    format!("/sessions/{session_id}/events")
}

/// `/events?agentId={id}`.
fn agent_events(agent_id: &str) -> String {
    format!("/events?agentId={agent_id}")
}

/// `/events?userId={id}`.
fn user_events(user_id: &str) -> String {
    format!("/events?userId={user_id}")
}

/// Just the `seq` of a message event's data.
#[derive(serde::Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// The event names, in order.
fn names(events: &[Sse]) -> Vec<&str> {
    events.iter().map(|event| event.name.as_str()).collect()
}

/// The `seq` of each `message` event, in order.
fn message_seqs(events: &[Sse]) -> Vec<u64> {
    events
        .iter()
        .filter(|event| event.name == "message")
        .map(|event| field_u64(&event.data, "seq"))
        .collect()
}

/// Asserts that event ids are present and strictly increasing.
#[track_caller]
fn assert_increasing_ids(events: &[Sse]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].id() < pair[1].id(),
            "ids must increase: {} then {}",
            pair[0].id(),
            pair[1].id()
        );
    }
}

/// Posts a message by the session's agent in reply to `parent_id`; asserts 201.
async fn reply_as_agent(app: &TestApp, session: &Session, parent_id: &str, content: &str) -> Value {
    app.post_message(
        &session.id,
        &json!({"content": content, "authorId": session.agent_id, "parentId": parent_id}),
    )
    .await
    .expect(201)
}

/// Sends `content` with `transport: "http"` on a task of its own: the request is held
/// until the agent replies (or the reply timeout passes); the task ends with the 201 body.
fn send_held(
    app: &Arc<TestApp>,
    session_id: &str,
    content: &str,
) -> tokio::task::JoinHandle<Value> {
    let (app, session_id) = (Arc::clone(app), session_id.to_owned());
    let body = json!({"content": content, "transport": "http"});
    tokio::spawn(async move { app.post_message(&session_id, &body).await.expect(201) })
}

/// The 201 body of a request [`send_held`] sent, once it is answered (within [`WAIT`]).
async fn answered(held: tokio::task::JoinHandle<Value>) -> Value {
    tokio::time::timeout(WAIT, held)
        .await
        .expect("the held request is answered after the reply")
        .expect("the request task does not panic")
}

/// Creates a session whose activity never renews it, so that its streams carry only the
/// events a test causes (no `session.renewed` after each message).
async fn quiet_session(app: &TestApp) -> Session {
    app.create_session_with_timeout(json!({"autoRenew": false}))
        .await
}

// ---------------------------------------------------------------------------------------------
// The echo agent example

/// Starts the example agent for `agent_id` and waits until it answers (a warm-up session of
/// its own), so that it is surely following its event stream.
async fn start_echo_agent(app: &TestApp, agent_id: &str) -> CancellationToken {
    let shutdown = CancellationToken::new();
    tokio::spawn(echo_agent::run(
        app.url(""),
        agent_id.parse().expect("agent ids are UUIDs"),
        app.api_key.clone(),
        shutdown.clone(),
    ));
    let warm_up = app
        .create_session_with(json!({ "agentId": agent_id }))
        .await;
    // Bounded polling: the agent only sees messages sent after it subscribed.
    let deadline = Instant::now() + WAIT;
    loop {
        app.append(&warm_up.id, "ping").await;
        let page = app
            .list_messages(&warm_up.id, "limit=100")
            .await
            .expect(200);
        if page["messages"]
            .as_array()
            .is_some_and(|all| all.iter().any(|m| m["content"] == json!("echo: ping")))
        {
            return shutdown;
        }
        assert!(Instant::now() < deadline, "the echo agent never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_agent_answers_an_http_transport_message_within_the_same_request() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let agent = start_echo_agent(&app, &session.agent_id).await;

    // Act
    let created = app
        .post_message(
            &session.id,
            &json!({"content": "hello there", "transport": "http"}),
        )
        .await
        .expect(201);

    // Assert
    let answer = &created["agentResponse"];
    assert_eq!(answer["content"], json!("echo: hello there"), "{created}");
    assert_eq!(answer["parentId"], created["id"]);
    assert_eq!(answer["authorId"], json!(session.agent_id));
    assert_eq!(answer["isAgent"], json!(true));
    assert_eq!(answer["sessionId"], json!(session.id));
    assert_eq!(field_u64(answer, "seq"), field_u64(&created, "seq") + 1);
    agent.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_agent_answers_a_legacy_sync_mode_message_within_the_same_request() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let agent = start_echo_agent(&app, &session.agent_id).await;

    // Act
    let created = app
        .post_message(&session.id, &json!({"content": "sync?", "mode": "sync"}))
        .await
        .expect(201);

    // Assert
    assert_eq!(created["agentResponse"]["content"], json!("echo: sync?"));
    assert_eq!(created["agentResponse"]["parentId"], created["id"]);
    agent.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_agent_reconnects_after_a_restart_and_answers_what_was_sent_meanwhile() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let agent = start_echo_agent(&app, &session.agent_id).await;

    // Act: the restart closes the agent's stream; a message is sent before it reconnects.
    let app = app.restart_on_same_addr().await;
    let sent = app.append(&session.id, "while you were away").await;

    // Assert (bounded polling for the answer)
    let deadline = Instant::now() + WAIT;
    let answer = loop {
        let page = app
            .list_messages(&session.id, &format!("parentId={}", field_str(&sent, "id")))
            .await
            .expect(200);
        if let Some(answer) = page["messages"].as_array().and_then(|m| m.first()) {
            break answer.clone();
        }
        assert!(Instant::now() < deadline, "the echo agent never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer["content"], json!("echo: while you were away"));
    assert_eq!(answer["authorId"], json!(session.agent_id));
    agent.cancel();
}

// ---------------------------------------------------------------------------------------------
// Fan-out, ordering, resume

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_subscribers_each_get_every_one_of_a_thousand_appends_once_in_order() {
    // Arrange: 50 subscribers on the session stream and 50 on its agent's stream; a quiet
    // session, so that the streams carry the messages only.
    const SUBSCRIBERS: usize = 100;
    const WRITERS: usize = 8;
    const APPENDS: u64 = 1000;
    let app = Arc::new(spawn_app().await);
    let session = quiet_session(&app).await;
    let mut readers = JoinSet::new();
    for n in 0..SUBSCRIBERS {
        let path = if n % 2 == 0 {
            session_events(&session.id)
        } else {
            agent_events(&session.agent_id)
        };
        let mut stream = EventStream::open(&app, &path, None).await;
        stream.parse_data = false;
        readers.spawn(async move {
            // (id, name, seq) per event.
            let mut events = Vec::new();
            loop {
                let event = stream.next().await;
                let seq =
                    serde_json::from_str::<SeqOnly>(&event.raw).map_or(0, |message| message.seq);
                let last = event.name == "message" && seq == APPENDS;
                events.push((event.id(), event.name, seq));
                if last {
                    return (path, events);
                }
            }
        });
    }

    // Act: 8 concurrent writers.
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for writer in 0..WRITERS {
        let (app, session_id) = (Arc::clone(&app), session.id.clone());
        writers.spawn(async move {
            for n in 0..APPENDS / WRITERS as u64 {
                app.append(&session_id, &format!("writer {writer} message {n}"))
                    .await;
            }
        });
    }
    writers.join_all().await;
    let written = started.elapsed();
    let results = readers.join_all().await;
    let elapsed = started.elapsed();

    // Assert
    assert_eq!(results.len(), SUBSCRIBERS);
    let all_seqs: Vec<u64> = (1..=APPENDS).collect();
    for (path, events) in &results {
        let seqs: Vec<u64> = events
            .iter()
            .filter(|(_, name, _)| name == "message")
            .map(|&(_, _, seq)| seq)
            .collect();
        assert_eq!(seqs, all_seqs, "stream {path}");
        assert!(
            events.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "ids must increase on {path}"
        );
    }
    eprintln!("{SUBSCRIBERS} subscribers x {APPENDS} appends: written in {written:?}, read in {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnecting_with_last_event_id_replays_exactly_the_missed_events_then_live_ones() {
    // Arrange: read two messages, then disconnect and miss three.
    let app = spawn_app().await;
    let session = quiet_session(&app).await;
    let mut stream = EventStream::open(&app, &session_events(&session.id), None).await;
    app.append_many(&session.id, 2).await;
    let seen = stream.take(2).await;
    assert_eq!(names(&seen), ["message", "message"]);
    assert_eq!(message_seqs(&seen), [1, 2]);
    let last_seen = seen[1].id();
    drop(stream);
    for n in 3..=5 {
        app.append(&session.id, &format!("missed {n}")).await;
    }

    // Act
    let mut resumed = EventStream::open(&app, &session_events(&session.id), Some(last_seen)).await;
    let replayed = resumed.take(3).await;
    app.append(&session.id, "live 6").await;
    let live = resumed.next().await;

    // Assert
    assert_eq!(names(&replayed), ["message", "message", "message"]);
    assert_eq!(message_seqs(&replayed), [3, 4, 5]);
    assert!(replayed[0].id() > last_seen);
    assert_eq!(replayed[0].data["content"], json!("missed 3"));
    assert_eq!(live.name, "message");
    assert_eq!(live.data["seq"], json!(6), "nothing twice at the seam");
    let all: Vec<Sse> = replayed.into_iter().chain([live]).collect();
    assert_increasing_ids(&all);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_without_last_event_id_starts_with_live_events_only() {
    // Arrange
    let app = spawn_app().await;
    let session = quiet_session(&app).await;
    app.append_many(&session.id, 3).await;

    // Act
    let mut stream = EventStream::open(&app, &session_events(&session.id), None).await;
    app.append(&session.id, "after subscribing").await;

    // Assert
    let event = stream.next().await;
    assert_eq!(event.name, "message");
    assert_eq!(event.data["seq"], json!(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_stream_resumes_with_last_event_id_across_a_server_restart() {
    // Arrange: read one message, disconnect, two more are written before the restart and
    // one after it.
    let app = spawn_app().await;
    let session = quiet_session(&app).await;
    let mut stream = EventStream::open(&app, &agent_events(&session.agent_id), None).await;
    app.append(&session.id, "message 1").await;
    let seen = stream.next().await;
    assert_eq!(seen.name, "message");
    drop(stream);
    app.append(&session.id, "message 2").await;
    app.append(&session.id, "message 3").await;
    let app = app.restart().await;
    app.append(&session.id, "message 4").await;

    // Act
    let mut resumed =
        EventStream::open(&app, &agent_events(&session.agent_id), Some(seen.id())).await;
    let replayed = resumed.take(3).await;
    app.append(&session.id, "message 5").await;
    let live = resumed.next().await;

    // Assert
    assert_eq!(message_seqs(&replayed), [2, 3, 4], "{replayed:?}");
    assert_eq!(live.name, "message");
    assert_eq!(live.data["seq"], json!(5));
    let all: Vec<Sse> = [seen].into_iter().chain(replayed).chain([live]).collect();
    assert_increasing_ids(&all);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_skips_message_events_of_a_deleted_session() {
    // Arrange
    let app = spawn_app().await;
    let agent_id = new_id();
    let mut stream = EventStream::open(&app, &agent_events(&agent_id), None).await;
    let deleted = app
        .create_session_with(json!({"agentId": agent_id, "timeoutConfig": {"autoRenew": false}}))
        .await;
    let before = stream.next().await;
    assert_eq!(before.name, "session.created");
    app.append(&deleted.id, "soon gone").await;
    app.delete_session(&deleted.id).await.expect(200);
    let kept = app
        .create_session_with(json!({"agentId": agent_id, "timeoutConfig": {"autoRenew": false}}))
        .await;

    // Act: replay everything after the first session.created.
    let mut resumed = EventStream::open(&app, &agent_events(&agent_id), Some(before.id())).await;
    let replayed = resumed.until_named("session.created").await;

    // Assert
    assert_eq!(names(&replayed), ["session.deleted", "session.created"]);
    assert_eq!(replayed[0].data["sessionId"], json!(deleted.id));
    assert_eq!(replayed[1].data["sessionId"], json!(kept.id));
}

// ---------------------------------------------------------------------------------------------
// Every event name where the contract puts it

#[tokio::test(flavor = "multi_thread")]
async fn agent_stream_announces_a_new_session_with_session_created() {
    // Arrange
    let app = spawn_app().await;
    let agent_id = new_id();
    let mut stream = EventStream::open(&app, &agent_events(&agent_id), None).await;

    // Act
    let session = app
        .create_session_with(json!({ "agentId": agent_id }))
        .await;

    // Assert
    let event = stream.next().await;
    assert_eq!(event.name, "session.created");
    assert!(event.id() > 0);
    assert_eq!(event.data["sessionId"], json!(session.id));
    assert_eq!(event.data["agentId"], json!(agent_id));
    assert_eq!(event.data["userId"], json!(session.user_id));
    assert_eq!(event.data["renewalCount"], json!(0));
    assert_eq!(event.data["messageCount"], json!(0));
    assert_eq!(event.data["isNearExpiration"], json!(false));
    assert!(field_u64(&event.data, "timeRemaining") > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_stream_replays_its_session_created_from_last_event_id_zero() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;

    // Act
    let mut stream = EventStream::open(&app, &session_events(&session.id), Some(0)).await;

    // Assert
    let event = stream.next().await;
    assert_eq!(event.name, "session.created");
    assert_eq!(event.data["sessionId"], json!(session.id));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_publishes_message_and_session_renewed() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.create_session().await;
    let mut stream = EventStream::open(&app, &session_events(&session.id), None).await;
    // Later than the creation, so the message renews.
    app.advance_clock(Duration::from_secs(60));

    // Act
    let created = app.append(&session.id, "hello").await;

    // Assert
    let events = stream.take(2).await;
    let kinds: BTreeSet<&str> = names(&events).into_iter().collect();
    assert_eq!(kinds, BTreeSet::from(["message", "session.renewed"]));
    let message = events.iter().find(|e| e.name == "message").expect("found");
    for key in [
        "id",
        "sessionId",
        "seq",
        "parentId",
        "content",
        "authorId",
        "isAgent",
        "createdAt",
    ] {
        assert_eq!(message.data[key], created[key], "message field {key}");
    }
    let renewed = events
        .iter()
        .find(|e| e.name == "session.renewed")
        .expect("found");
    assert_eq!(renewed.data["renewalCount"], json!(1));
    assert_eq!(renewed.data["messageCount"], json!(1));
    assert_eq!(
        renewed.data["expiresAt"],
        created["sessionStatus"]["expiresAt"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_and_manual_renew_publish_session_renewed() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.create_session().await;
    let mut stream = EventStream::open(&app, &session_events(&session.id), None).await;
    app.advance_clock(Duration::from_secs(60));

    // Act
    let after_heartbeat = app.heartbeat(&session.id).await.expect(200);
    let by_heartbeat = stream.next().await;
    app.advance_clock(Duration::from_secs(60));
    let after_renew = app.renew(&session.id).await.expect(200);
    let by_renew = stream.next().await;

    // Assert
    assert_eq!(by_heartbeat.name, "session.renewed");
    assert_eq!(by_heartbeat.data["renewalCount"], json!(1));
    assert_eq!(by_heartbeat.data["expiresAt"], after_heartbeat["expiresAt"]);
    assert_eq!(by_renew.name, "session.renewed");
    assert_eq!(by_renew.data["renewalCount"], json!(2));
    assert_eq!(by_renew.data["expiresAt"], after_renew["expiresAt"]);
    assert_eq!(millis(&after_renew["expiresAt"]), T0_MS + 32 * MINUTE_MS);
}

#[tokio::test(flavor = "multi_thread")]
async fn patching_the_timeout_publishes_session_timeout_updated() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let mut stream = EventStream::open(&app, &session_events(&session.id), None).await;

    // Act
    let patched = app
        .patch_timeout(&session.id, &json!({"timeoutMinutes": 60}))
        .await
        .expect(200);

    // Assert
    let event = stream.next().await;
    assert_eq!(event.name, "session.timeout_updated");
    assert_eq!(event.data["timeoutConfig"]["timeoutMinutes"], json!(60));
    assert_eq!(event.data["expiresAt"], patched["expiresAt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_created_inside_its_warning_window_gets_session_expiring_at_once() {
    // Arrange
    let app = spawn_app().await;
    let agent_id = new_id();
    let mut stream = EventStream::open(&app, &agent_events(&agent_id), None).await;

    // Act
    let session = app
        .create_session_with(json!({
            "agentId": agent_id,
            "timeoutConfig": {"timeoutMinutes": 5, "warningThresholdMinutes": 5}
        }))
        .await;

    // Assert
    let events = stream.take(2).await;
    assert_eq!(names(&events), ["session.created", "session.expiring"]);
    assert_eq!(events[1].data["sessionId"], json!(session.id));
    assert_eq!(events[1].data["isNearExpiration"], json!(true));
    assert!(field_u64(&events[1].data, "timeRemaining") > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patch_into_the_warning_window_publishes_session_expiring() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let mut stream = EventStream::open(&app, &session_events(&session.id), None).await;

    // Act
    app.patch_timeout(&session.id, &json!({"warningThresholdMinutes": 30}))
        .await
        .expect(200);

    // Assert
    let events = stream.take(2).await;
    assert_eq!(
        names(&events),
        ["session.timeout_updated", "session.expiring"]
    );
    assert_eq!(events[1].data["isNearExpiration"], json!(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn session_stream_ends_after_session_expired() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.create_session().await;
    let mut stream = EventStream::open(&app, &session_events(&session.id), None).await;
    app.advance_clock(Duration::from_secs(10 * 60));

    // Act: a PATCH that leaves the session expired, ten minutes in.
    app.patch_timeout(
        &session.id,
        &json!({"timeoutMinutes": 10, "warningThresholdMinutes": 0}),
    )
    .await
    .expect(200);

    // Assert
    let events = stream.until_named("session.expired").await;
    assert_eq!(
        names(&events),
        ["session.timeout_updated", "session.expired"]
    );
    let expired = &events[1].data;
    assert_eq!(expired["sessionId"], json!(session.id));
    assert_eq!(expired["timeRemaining"], json!(0));
    assert_eq!(expired["isNearExpiration"], json!(false));
    stream.assert_ends().await;
}

/// The notifier alone (no request touches the session) pushes `session.expiring` when the
/// clock reaches the warning threshold and `session.expired` when it reaches the expiry, and
/// neither a millisecond earlier.
#[tokio::test(flavor = "multi_thread")]
async fn the_server_pushes_session_expiring_and_session_expired_as_the_clock_reaches_them() {
    // Arrange: a quiet 30-minute session warns during its last 5 minutes.
    let app = spawn_app_with_clock(|_| {}).await;
    let agent_id = new_id();
    let session = app
        .create_session_with(json!({"agentId": agent_id, "timeoutConfig": {"autoRenew": false}}))
        .await;
    let mut agent_stream = EventStream::open(&app, &agent_events(&agent_id), None).await;
    let mut session_stream = EventStream::open(&app, &session_events(&session.id), None).await;
    // Another of the agent's sessions marks a point on the agent stream: whatever it comes
    // after was published before it.
    let mark = json!({ "agentId": agent_id });

    // Act / Assert: one millisecond before the warning, nothing is due.
    app.set_clock(T0_MS + 25 * MINUTE_MS - 1);
    assert_eq!(app.notify_due_now().await, 0);
    let first_mark = app.create_session_with(mark.clone()).await;
    let event = agent_stream.next().await;
    assert_eq!(
        (event.name.as_str(), &event.data["sessionId"]),
        ("session.created", &json!(first_mark.id))
    );

    // At the warning threshold, the notifier's next poll warns.
    app.set_clock(T0_MS + 25 * MINUTE_MS);
    let expiring = agent_stream.next().await;
    assert_eq!(expiring.name, "session.expiring");
    assert_eq!(expiring.data["sessionId"], json!(session.id));
    assert_eq!(expiring.data["isNearExpiration"], json!(true));
    assert_eq!(expiring.data["timeRemaining"], json!(5 * MINUTE_MS));

    // One millisecond before the expiry, nothing more is due.
    app.set_clock(T0_MS + 30 * MINUTE_MS - 1);
    assert_eq!(app.notify_due_now().await, 0);
    let second_mark = app.create_session_with(mark).await;
    let event = agent_stream.next().await;
    assert_eq!(
        (event.name.as_str(), &event.data["sessionId"]),
        ("session.created", &json!(second_mark.id))
    );

    // At the expiry, the notifier announces it and the session's stream ends.
    app.set_clock(T0_MS + 30 * MINUTE_MS);
    let expired = agent_stream.next().await;
    assert_eq!(expired.name, "session.expired");
    assert_eq!(expired.data["sessionId"], json!(session.id));
    assert_eq!(expired.data["timeRemaining"], json!(0));
    assert_eq!(expired.data["isNearExpiration"], json!(false));
    let on_session_stream = session_stream.until_named("session.expired").await;
    assert_eq!(
        names(&on_session_stream),
        ["session.expiring", "session.expired"]
    );
    session_stream.assert_ends().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_expires_at_once_is_announced_created_then_expired_on_a_stream_that_goes_on()
{
    // Arrange
    let app = spawn_app_allowing_instant_expiry().await;
    let agent_id = new_id();
    let mut stream = EventStream::open(&app, &agent_events(&agent_id), None).await;

    // Act
    let session = app
        .create_session_with(json!({"agentId": agent_id, "timeoutConfig": {"timeoutMinutes": 0}}))
        .await;
    let events = stream.take(2).await;
    let next = app
        .create_session_with(json!({ "agentId": agent_id }))
        .await;

    // Assert
    assert_eq!(names(&events), ["session.created", "session.expired"]);
    assert_eq!(events[1].data["sessionId"], json!(session.id));
    assert_eq!(events[1].data["timeRemaining"], json!(0));
    assert_eq!(events[1].data["isNearExpiration"], json!(false));
    let after = stream.next().await;
    assert_eq!(
        after.name, "session.created",
        "an agent stream does not end"
    );
    assert_eq!(after.data["sessionId"], json!(next.id));
}

#[tokio::test(flavor = "multi_thread")]
async fn session_stream_ends_after_session_deleted() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let mut stream = EventStream::open(&app, &session_events(&session.id), None).await;

    // Act
    app.delete_session(&session.id).await.expect(200);

    // Assert
    let event = stream.next().await;
    assert_eq!(event.name, "session.deleted");
    assert_eq!(event.data["sessionId"], json!(session.id));
    assert_eq!(event.data["timeRemaining"], json!(0));
    assert_eq!(event.data["isNearExpiration"], json!(false));
    stream.assert_ends().await;
}

// ---------------------------------------------------------------------------------------------
// Owner streams carry their owner's sessions only

#[tokio::test(flavor = "multi_thread")]
async fn agent_stream_carries_only_the_agents_sessions() {
    // Arrange: one user talks to two agents.
    let app = spawn_app().await;
    let (agent, other_agent, user) = (new_id(), new_id(), new_id());
    let mut stream = EventStream::open(&app, &agent_events(&agent), None).await;

    // Act: the other agent's session changes first, then the agent's own.
    let other = app
        .create_session_with(json!({"agentId": other_agent, "userId": user}))
        .await;
    app.append(&other.id, "not for this agent").await;
    let own = app
        .create_session_with(json!({"agentId": agent, "userId": user}))
        .await;
    let last = app.append(&own.id, "for this agent").await;

    // Assert: everything up to the agent's message is about its own session.
    let mut events = Vec::new();
    loop {
        let event = stream.next().await;
        let done = event.name == "message" && event.data["id"] == last["id"];
        events.push(event);
        if done {
            break;
        }
    }
    assert!(
        events
            .iter()
            .all(|event| event.data["sessionId"] == json!(own.id)),
        "{events:?}"
    );
    assert_eq!(events[0].name, "session.created");
    assert_eq!(message_seqs(&events), [1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn user_stream_carries_only_the_users_sessions() {
    // Arrange: one agent talks to two users; the user has two sessions.
    let app = spawn_app().await;
    let (agent, user, other_user) = (new_id(), new_id(), new_id());
    let mut stream = EventStream::open(&app, &user_events(&user), None).await;

    // Act
    let first = app
        .create_session_with(json!({"agentId": agent, "userId": user}))
        .await;
    let other = app
        .create_session_with(json!({"agentId": agent, "userId": other_user}))
        .await;
    app.append(&other.id, "not for this user").await;
    let second = app
        .create_session_with(json!({"agentId": new_id(), "userId": user}))
        .await;
    let last = app.append(&second.id, "for this user").await;

    // Assert
    let mut events = Vec::new();
    loop {
        let event = stream.next().await;
        let done = event.name == "message" && event.data["id"] == last["id"];
        events.push(event);
        if done {
            break;
        }
    }
    let sessions: BTreeSet<&str> = events
        .iter()
        .map(|event| field_str(&event.data, "sessionId"))
        .collect();
    assert_eq!(
        sessions,
        BTreeSet::from([first.id.as_str(), second.id.as_str()])
    );
    assert!(events
        .iter()
        .filter(|event| event.name.starts_with("session."))
        .all(|event| event.data["userId"] == json!(user)));
}

// ---------------------------------------------------------------------------------------------
// Waiting for the agent's reply

/// A server whose held requests wait one second for the agent's reply.
async fn spawn_app_with_short_reply_timeout() -> TestApp {
    spawn_app_with(|config| config.reply_timeout_seconds = 1).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_transport_streams_the_user_message_each_agent_reply_then_done_on_timeout() {
    // Arrange
    let app = spawn_app_with_short_reply_timeout().await;
    let session = app.create_session().await;
    let earlier = app.append(&session.id, "earlier").await;

    // Act
    let response = app
        .api(Method::POST, &format!("/sessions/{}/messages", session.id))
        .json(&json!({"content": "stream me", "transport": "sse"}))
        .send()
        .await
        .expect("the request reaches the server");
    let mut stream = EventStream::from_response(response);
    let user_message = stream.next().await;
    let message_id = field_str(&user_message.data, "id").to_owned();
    // Not a reply to this message: must not show up.
    reply_as_agent(&app, &session, field_str(&earlier, "id"), "elsewhere").await;
    let first = reply_as_agent(&app, &session, &message_id, "first").await;
    let first_event = stream.next().await;
    let second = reply_as_agent(&app, &session, &message_id, "second").await;
    let second_event = stream.next().await;
    let done = stream.next().await;

    // Assert
    assert_eq!(user_message.name, "user_message");
    assert_eq!(user_message.data["content"], json!("stream me"));
    assert_eq!(user_message.data["seq"], json!(2));
    assert_eq!(user_message.data["isAgent"], json!(false));
    let stored = app
        .get(&format!("/sessions/{}/messages/{message_id}", session.id))
        .await
        .expect(200);
    assert_eq!(user_message.data, stored);
    assert_eq!(first_event.name, "agent_message");
    assert_eq!(first_event.data["id"], first["id"]);
    assert_eq!(first_event.data["content"], json!("first"));
    assert_eq!(second_event.name, "agent_message");
    assert_eq!(second_event.data["id"], second["id"]);
    assert_eq!(done.name, "done");
    assert_eq!(done.data, json!({"reason": "timeout"}));
    stream.assert_ends().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_stream_mode_answers_as_the_sse_transport() {
    // Arrange
    let app = spawn_app_with_short_reply_timeout().await;
    let session = app.create_session().await;

    // Act
    let response = app
        .api(Method::POST, &format!("/sessions/{}/messages", session.id))
        .json(&json!({"content": "legacy", "mode": "stream"}))
        .send()
        .await
        .expect("the request reaches the server");
    let mut stream = EventStream::from_response(response);
    let events = stream.take(2).await;

    // Assert
    assert_eq!(names(&events), ["user_message", "done"]);
    assert_eq!(events[0].data["content"], json!("legacy"));
    assert_eq!(events[1].data, json!({"reason": "timeout"}));
    stream.assert_ends().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_transport_answers_null_agent_response_after_the_reply_timeout() {
    // Arrange
    let app = spawn_app_with_short_reply_timeout().await;
    let session = app.create_session().await;

    // Act
    let started = Instant::now();
    let created = app
        .post_message(
            &session.id,
            &json!({"content": "anyone?", "transport": "http"}),
        )
        .await
        .expect(201);
    let held = started.elapsed();

    // Assert
    assert!(created.get("agentResponse").is_some(), "{created}");
    assert_eq!(created["agentResponse"], Value::Null);
    assert_eq!(created["content"], json!("anyone?"));
    assert_eq!(created["seq"], json!(1));
    assert!(held >= Duration::from_secs(1), "held only {held:?}");
    app.get(&format!(
        "/sessions/{}/messages/{}",
        session.id,
        field_str(&created, "id")
    ))
    .await
    .expect(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_transport_returns_the_agents_reply_to_that_message_only() {
    // Arrange
    let app = Arc::new(spawn_app().await);
    let session = app.create_session().await;
    let earlier = app.append(&session.id, "earlier").await;
    let mut agent_stream = EventStream::open(&app, &agent_events(&session.agent_id), None).await;

    // Act: send, and answer as the agent once the message shows on the agent's stream.
    let held = send_held(&app, &session.id, "question");
    let question = loop {
        let event = agent_stream.next().await;
        if event.name == "message" && event.data["content"] == json!("question") {
            break event.data;
        }
    };
    reply_as_agent(&app, &session, field_str(&earlier, "id"), "not this one").await;
    let reply = reply_as_agent(&app, &session, field_str(&question, "id"), "answer").await;
    let created = answered(held).await;

    // Assert
    assert_eq!(created["id"], question["id"]);
    assert_eq!(created["agentResponse"]["id"], reply["id"]);
    assert_eq!(created["agentResponse"]["content"], json!("answer"));
    assert_eq!(created["agentResponse"]["parentId"], question["id"]);
}

/// elizaOS's `sendMessageSync` reads `agentResponse.text`, and its web UI `thought` and
/// `actions`: the reply carries them beside the Message fields.
#[tokio::test(flavor = "multi_thread")]
async fn http_transport_agent_response_has_the_text_thought_and_actions_of_the_reply() {
    // Arrange
    let app = Arc::new(spawn_app().await);
    let session = app
        .create_session_with(json!({"metadata": {"platform": "web"}}))
        .await;
    let mut agent_stream = EventStream::open(&app, &agent_events(&session.agent_id), None).await;

    // Act
    let held = send_held(&app, &session.id, "question");
    let question = agent_stream.next_named("message").await.data;
    let reply = app
        .post_message(
            &session.id,
            &json!({
                "content": "answer",
                "authorId": session.agent_id,
                "parentId": question["id"],
                "metadata": {"thought": "they asked", "actions": ["REPLY"]},
            }),
        )
        .await
        .expect(201);
    let created = answered(held).await;

    // Assert
    let response = &created["agentResponse"];
    assert_eq!(response["text"], json!("answer"));
    assert_eq!(response["thought"], json!("they asked"));
    assert_eq!(response["actions"], json!(["REPLY"]));
    assert_eq!(response["id"], reply["id"]);
    assert_eq!(response["content"], json!("answer"));
    assert_eq!(response["isAgent"], json!(true));
    assert_eq!(response["metadata"], reply["metadata"]);
    assert_eq!(response["metadata"]["platform"], json!("web"));
    assert_eq!(response["metadata"]["sessionId"], json!(session.id));
}

/// Without a string thought or an array of string actions in the reply's metadata, the
/// agentResponse has neither (its clients type them so).
#[tokio::test(flavor = "multi_thread")]
async fn agent_response_omits_thought_and_actions_the_reply_does_not_have() {
    // Arrange
    let app = Arc::new(spawn_app().await);
    let session = app.create_session().await;
    let mut agent_stream = EventStream::open(&app, &agent_events(&session.agent_id), None).await;

    // Act
    let held = send_held(&app, &session.id, "q");
    let question = agent_stream.next_named("message").await.data;
    app.post_message(
        &session.id,
        &json!({
            "content": "plain",
            "authorId": session.agent_id,
            "parentId": question["id"],
            "metadata": {"thought": 42, "actions": ["REPLY", 1]},
        }),
    )
    .await
    .expect(201);
    let created = answered(held).await;

    // Assert
    let response = created["agentResponse"].as_object().expect("a reply");
    assert_eq!(response["text"], json!("plain"));
    assert!(!response.contains_key("thought"), "{response:?}");
    assert!(!response.contains_key("actions"), "{response:?}");
}

/// `message` events show the message's metadata over its session's context, live and
/// replayed; the session's events carry `channelId`.
#[tokio::test(flavor = "multi_thread")]
async fn message_events_carry_the_session_context_in_their_metadata() {
    // Arrange
    let app = spawn_app().await;
    let agent_id = new_id();
    let mut live = EventStream::open(&app, &agent_events(&agent_id), None).await;
    let session = app
        .create_session_with(json!({
            "agentId": agent_id,
            "metadata": {"platform": "discord", "lang": "fr"},
            "timeoutConfig": {"autoRenew": false},
        }))
        .await;

    // Act
    app.post_message(
        &session.id,
        &json!({"content": "hi", "metadata": {"lang": "en"}}),
    )
    .await
    .expect(201);
    let created = live.next_named("session.created").await;
    let message = live.next_named("message").await;
    let mut replay = EventStream::open(&app, &agent_events(&agent_id), Some(0)).await;
    let replayed = replay.next_named("message").await;

    // Assert
    let expected = json!({
        "platform": "discord",
        "lang": "en",
        "sessionId": session.id,
        "agentId": session.agent_id,
        "userId": session.user_id,
    });
    assert_eq!(message.data["metadata"], expected);
    assert_eq!(replayed.data["metadata"], expected);
    assert_eq!(created.data["channelId"], json!(session.id));
}

// ---------------------------------------------------------------------------------------------
// Shutdown

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_answers_held_requests_and_closes_event_streams_at_once() {
    // Arrange: the reply timeout (30 s) is far longer than a prompt shutdown.
    let app = spawn_app().await;
    let session = app.create_session().await;
    let mut events = EventStream::open(&app, &session_events(&session.id), None).await;
    let held_http = tokio::spawn(
        app.api(Method::POST, &format!("/sessions/{}/messages", session.id))
            .json(&json!({"content": "held", "transport": "http"}))
            .send(),
    );
    let sse_response = app
        .api(Method::POST, &format!("/sessions/{}/messages", session.id))
        .json(&json!({"content": "streamed", "transport": "sse"}))
        .send()
        .await
        .expect("the request reaches the server");
    let mut held_sse = EventStream::from_response(sse_response);
    assert_eq!(held_sse.next().await.name, "user_message");
    // Both messages are stored (so both requests are being held) once both are on the stream.
    let mut stored = BTreeSet::new();
    while stored.len() < 2 {
        let event = events.next().await;
        if event.name == "message" {
            stored.insert(field_str(&event.data, "content").to_owned());
        }
    }

    // Act
    let TestApp { server, dir, .. } = app;
    let started = Instant::now();
    tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("shutdown completes promptly")
        .expect("the server shuts down cleanly");

    // Assert
    let response = tokio::time::timeout(WAIT, held_http)
        .await
        .expect("the held request is answered")
        .expect("the request task does not panic")
        .expect("the held request gets an answer, not an error");
    assert_eq!(response.status().as_u16(), 201);
    let body: Value = response.json().await.expect("the answer is JSON");
    assert_eq!(body["content"], json!("held"));
    assert!(body.get("agentResponse").is_some(), "{body}");
    assert_eq!(body["agentResponse"], Value::Null);
    let done = held_sse.until_named("done").await;
    assert_eq!(names(&done), ["done"]);
    assert_eq!(done[0].data, json!({"reason": "shutdown"}));
    held_sse.assert_ends().await;
    let before_the_end = events.rest().await;
    assert!(
        before_the_end.iter().all(|e| e.name == "session.renewed"),
        "only the renewals of the two messages were left unread: {before_the_end:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "everything ended within {:?}",
        started.elapsed()
    );
    drop(dir);
}

// ---------------------------------------------------------------------------------------------
// Errors

#[tokio::test(flavor = "multi_thread")]
async fn session_events_of_an_unknown_session_is_404_session_not_found() {
    // Arrange
    let app = spawn_app().await;
    let unknown = new_id();

    // Act
    let reply = app.get(&session_events(&unknown)).await;

    // Assert
    let error = reply.expect_error(404, "SESSION_NOT_FOUND");
    assert!(field_str(&error, "details").contains(&unknown));
}

#[tokio::test(flavor = "multi_thread")]
async fn session_events_of_an_expired_session_is_410_session_expired() {
    // Arrange: a 5-minute session, and the clock at its expiry.
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with_timeout(json!({"timeoutMinutes": 5, "autoRenew": false}))
        .await;
    app.set_clock(millis(&session.body["expiresAt"]));

    // Act
    let reply = app.get(&session_events(&session.id)).await;

    // Assert
    let error = reply.expect_error(410, "SESSION_EXPIRED");
    assert!(field_str(&error, "details").contains(&session.id));
}

#[tokio::test(flavor = "multi_thread")]
async fn session_events_of_a_deleted_session_is_404() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    app.delete_session(&session.id).await.expect(200);

    // Act
    let reply = app.get(&session_events(&session.id)).await;

    // Assert
    reply.expect_error(404, "SESSION_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread")]
async fn owner_events_need_exactly_one_of_agent_id_and_user_id() {
    // Arrange
    let app = spawn_app().await;
    let (agent, user) = (new_id(), new_id());

    // Act
    let both = app
        .get(&format!("/events?agentId={agent}&userId={user}"))
        .await;
    let neither = app.get("/events").await;

    // Assert
    both.expect_error(400, "INVALID_QUERY");
    neither.expect_error(400, "INVALID_QUERY");
}

#[tokio::test(flavor = "multi_thread")]
async fn event_routes_reject_ids_that_are_not_uuids() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let bad_agent = app.get("/events?agentId=not-a-uuid").await;
    let bad_user = app.get("/events?userId=42").await;
    let bad_session = app.get("/sessions/not-a-uuid/events").await;

    // Assert
    bad_agent.expect_error(400, "INVALID_UUID");
    bad_user.expect_error(400, "INVALID_UUID");
    bad_session.expect_error(400, "INVALID_UUID");
}

#[tokio::test(flavor = "multi_thread")]
async fn event_streams_require_the_api_key_when_one_is_configured() {
    // Arrange
    let app = spawn_app_with(|config| config.api_key = Some("s3cret".into())).await;
    let session = app.create_session().await;
    let anonymous = Client::builder()
        .no_proxy()
        .build()
        .expect("a plain HTTP client can be built");

    // Act
    let without_key = app
        .send(anonymous.get(app.url(&format!("{API}{}", agent_events(&session.agent_id)))))
        .await;
    let mut with_key = EventStream::open(&app, &session_events(&session.id), Some(0)).await;

    // Assert
    without_key.expect_error(401, "UNAUTHORIZED");
    assert_eq!(with_key.next().await.name, "session.created");
}

// ---------------------------------------------------------------------------------------------
// Last-Event-ID from another store, or malformed

/// GETs an event stream with a raw `Last-Event-ID` header; the answer is an error, so it
/// comes at once.
async fn open_with_raw_last_event_id(
    app: &TestApp,
    path: &str,
    last_event_id: &str,
) -> crate::helpers::Reply {
    app.send(
        app.api(Method::GET, path)
            .header("Last-Event-ID", last_event_id),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_store_issues_event_ids_above_every_earlier_stores() {
    // Arrange: an agent's reader follows one store, which is then wiped and replaced.
    let old = spawn_app().await;
    let agent_id = new_id();
    let mut stream = EventStream::open(&old, &agent_events(&agent_id), None).await;
    old.create_session_with(json!({"agentId": agent_id})).await;
    let last_seen = stream.next().await.id();
    drop(stream);
    drop(old);
    let new = spawn_app().await;
    let session = new.create_session_with(json!({"agentId": agent_id})).await;

    // Act: the reader resumes after the id it kept.
    let mut resumed = EventStream::open(&new, &agent_events(&agent_id), Some(last_seen)).await;
    let first = resumed.next().await;

    // Assert: nothing is skipped.
    assert!(first.id() > last_seen, "{} after {last_seen}", first.id());
    assert_eq!(first.name, "session.created");
    assert_eq!(first.data["sessionId"], json!(session.id));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_last_event_id_ahead_of_the_newest_event_is_409_last_event_id_unknown() {
    // Arrange: the newest event this store has issued.
    let app = spawn_app().await;
    let session = app.create_session().await;
    let mut stream = EventStream::open(&app, &session_events(&session.id), Some(0)).await;
    let newest = stream.next().await.id();

    // Act
    let agent = open_with_raw_last_event_id(
        &app,
        &agent_events(&session.agent_id),
        &(newest + 1_000).to_string(),
    )
    .await;
    let one = open_with_raw_last_event_id(
        &app,
        &session_events(&session.id),
        &(newest + 1).to_string(),
    )
    .await;
    let mut current = EventStream::open(&app, &agent_events(&session.agent_id), Some(newest)).await;

    // Assert
    let error = agent.expect_error(409, "LAST_EVENT_ID_UNKNOWN");
    let details = field_str(&error, "details");
    assert!(details.contains(&(newest + 1_000).to_string()), "{details}");
    assert!(details.contains("Last-Event-ID: 0"), "{details}");
    one.expect_error(409, "LAST_EVENT_ID_UNKNOWN");
    // The newest id itself is a place to resume from.
    app.heartbeat(&session.id).await.expect(200);
    assert!(current.next().await.id() > newest);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_last_event_id_is_400_invalid_last_event_id() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;

    for bad in ["abc", "-1", "1.5", "+3", "", "99999999999999999999999"] {
        // Act
        let agent = open_with_raw_last_event_id(&app, &agent_events(&session.agent_id), bad).await;
        let one = open_with_raw_last_event_id(&app, &session_events(&session.id), bad).await;

        // Assert
        agent.expect_error(400, "INVALID_LAST_EVENT_ID");
        one.expect_error(400, "INVALID_LAST_EVENT_ID");
    }
}

// ---------------------------------------------------------------------------------------------
// The stream cap

#[tokio::test(flavor = "multi_thread")]
async fn streams_past_the_cap_are_refused_with_503_while_ordinary_requests_are_served() {
    // Arrange: two streams allowed, both taken.
    let app = spawn_app_with(|config| {
        config.max_streams = 2;
        config.max_connections = 10;
    })
    .await;
    let session = app.create_session().await;
    let first = EventStream::open(&app, &session_events(&session.id), None).await;
    let _second = EventStream::open(&app, &agent_events(&session.agent_id), None).await;

    // Act
    let third = app.get(&user_events(&session.user_id)).await;
    let reply_stream = app
        .post_message(&session.id, &json!({"content": "hi", "transport": "sse"}))
        .await;
    let ordinary = app.get(&format!("/sessions/{}", session.id)).await;
    drop(first);
    let deadline = Instant::now() + WAIT;
    // Only the head: a granted stream's body never ends.
    let reopened = loop {
        let status = app
            .api(Method::GET, &session_events(&session.id))
            .send()
            .await
            .expect("the server answers")
            .status();
        if status.as_u16() != 503 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Assert
    assert_eq!(
        third
            .headers
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close")
    );
    third.expect_error(503, "STREAMS_EXHAUSTED");
    reply_stream.expect_error(503, "STREAMS_EXHAUSTED");
    let info = ordinary.expect(200);
    assert_eq!(
        info["messageCount"],
        json!(0),
        "a refused stream stored its message"
    );
    assert_eq!(
        reopened.as_u16(),
        200,
        "a closed stream's place was not freed"
    );
}
