//! An agent that echoes every user message, over plain HTTP.
//!
//! It follows `GET /api/messaging/events?agentId=…` (Server-Sent Events, parsed by hand below:
//! `id:`, `event:` and `data:` lines, a blank line ends an event), and answers each user
//! message of its sessions with `POST /sessions/{id}/messages`
//! `{"content": "echo: <content>", "authorId": <agent>, "parentId": <message id>}`. A user who
//! sent with `"transport": "http"` gets that answer as `agentResponse` of the same request.
//!
//! When the stream ends (server restart) or fails, it waits a moment and reconnects with
//! `Last-Event-ID`, so the server replays whatever happened in between: no message is missed.
//!
//! Run a server, then the agent:
//!
//! ```text
//! cargo run --release -- serve
//! AGENT_ID=0b6c3d1e-8a61-4a53-9f4e-0f5d1c2b3a40 cargo run --example echo_agent
//! ```
//!
//! Environment: `AGENT_ID` (required, a UUID: the agentId of the sessions to answer),
//! `SESSIOND_URL` (default `http://127.0.0.1:3000`), `SESSIOND_API_KEY` (when the server has
//! one). Ctrl-C stops it.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The error type of this example: anything, printable, sendable between tasks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long to wait before reconnecting after the stream ended or failed.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// The longest wait between reconnection attempts while the server stays unreachable.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// The server sends a keep-alive comment at least every 15 s: a stream silent for much
/// longer than that is dead (a half-open connection), so give up on it and reconnect.
const READ_TIMEOUT: Duration = Duration::from_secs(45);

/// One Server-Sent Event.
#[derive(Debug, Default)]
pub struct SseEvent {
    /// The `id:` field, when the event has one.
    pub id: Option<String>,
    /// The `event:` field (`message` when absent, as in the SSE specification).
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Splits a byte stream into Server-Sent Events. Feed it chunks as they arrive; it keeps
/// the unfinished line and event between chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes after the last complete line (a chunk may end anywhere, even inside a UTF-8
    /// character).
    pending: Vec<u8>,
    /// The `id:` and `event:` fields read so far of the event being built.
    current: SseEvent,
    /// Its `data:` lines so far; an event without data is not dispatched (SSE specification).
    data: Option<String>,
}

impl SseParser {
    /// Adds a chunk and returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                // A blank line ends the event.
                let mut event = std::mem::take(&mut self.current);
                if let Some(data) = self.data.take() {
                    event.data = data;
                    if event.event.is_empty() {
                        event.event = "message".to_owned();
                    }
                    events.push(event);
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment: the server's keep-alive
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.current.id = Some(value.to_owned()),
                "event" => self.current.event = value.to_owned(),
                "data" => match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                _ => {} // `retry:` and unknown fields
            }
        }
        events
    }
}

/// The agent: a client, who it is, and how far it has read.
struct EchoAgent {
    client: reqwest::Client,
    base_url: String,
    agent_id: Uuid,
    api_key: Option<String>,
    /// The id of the newest event handled; sent as `Last-Event-ID` when reconnecting.
    last_event_id: Option<String>,
    /// How long to wait before the next reconnection: reset by every successful
    /// connection, doubled by every failed one.
    backoff: Duration,
}

/// Why a connection to the event stream ended.
enum Ended {
    /// The server closed the stream (it does so at shutdown).
    Closed,
    /// Shutdown was requested.
    Stopped,
}

impl EchoAgent {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}/api/messaging{path}", self.base_url));
        match &self.api_key {
            Some(key) => builder.header("X-API-Key", key),
            None => builder,
        }
    }

    /// Follows the agent's event stream once, from `last_event_id`, until it ends.
    async fn follow_once(&mut self, shutdown: &CancellationToken) -> Result<Ended, BoxError> {
        let mut request = self.request(
            reqwest::Method::GET,
            &format!("/events?agentId={}", self.agent_id),
        );
        if let Some(id) = &self.last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = tokio::select! {
            () = shutdown.cancelled() => return Ok(Ended::Stopped),
            response = request.send() => response?.error_for_status()?,
        };
        self.backoff = RECONNECT_DELAY;
        let mut body = response.bytes_stream();
        let mut parser = SseParser::default();
        loop {
            let chunk = tokio::select! {
                () = shutdown.cancelled() => return Ok(Ended::Stopped),
                chunk = body.next() => chunk,
            };
            let Some(chunk) = chunk else {
                return Ok(Ended::Closed);
            };
            for event in parser.push(&chunk?) {
                self.handle(&event).await?;
                // Only now: an event whose answer failed is replayed after reconnecting.
                if event.id.is_some() {
                    self.last_event_id = event.id;
                }
            }
        }
    }

    /// Answers a user message; ignores every other event.
    ///
    /// # Errors
    /// The answer could not be delivered for a reason worth retrying (the server is
    /// unreachable or failed): the caller reconnects and the event is replayed.
    async fn handle(&self, event: &SseEvent) -> Result<(), BoxError> {
        if event.event != "message" {
            return Ok(()); // session.created, session.renewed, …
        }
        let message: Value = serde_json::from_str(&event.data)?;
        if message["isAgent"] != json!(false) {
            return Ok(()); // our own answers come back on the stream too
        }
        let (Some(session_id), Some(message_id)) =
            (message["sessionId"].as_str(), message["id"].as_str())
        else {
            return Err(format!("a message event without ids: {}", event.data).into());
        };
        let content = message["content"].as_str().unwrap_or_default();
        let answer = json!({
            "content": format!("echo: {content}"),
            "authorId": self.agent_id,
            "parentId": message_id,
        });
        let response = self
            .request(
                reqwest::Method::POST,
                &format!("/sessions/{session_id}/messages"),
            )
            .json(&answer)
            .send()
            .await?;
        let status = response.status();
        if status.is_server_error() {
            return Err(format!("answering {message_id} failed: {status}").into());
        }
        if !status.is_success() {
            // The session expired or was deleted meanwhile: nothing left to answer.
            let body = response.text().await.unwrap_or_default();
            eprintln!("echo_agent: not answering {message_id}: {status} {body}");
        }
        Ok(())
    }
}

/// Answers every user message of `agent_id`'s sessions with `"echo: <content>"` until
/// `shutdown` is cancelled. Reconnects (with `Last-Event-ID`) whenever the stream ends or
/// fails, with a short, growing delay while the server is unreachable.
///
/// # Errors
/// `base_url` is not usable (the HTTP client cannot be built).
pub async fn run(
    base_url: String,
    agent_id: Uuid,
    api_key: Option<String>,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(READ_TIMEOUT)
        .build()?;
    let mut agent = EchoAgent {
        client,
        base_url: base_url.trim_end_matches('/').to_owned(),
        agent_id,
        api_key,
        last_event_id: None,
        backoff: RECONNECT_DELAY,
    };
    loop {
        match agent.follow_once(&shutdown).await {
            Ok(Ended::Stopped) => return Ok(()),
            Ok(Ended::Closed) => {}
            Err(error) => eprintln!("echo_agent: event stream failed: {error}; reconnecting"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(agent.backoff) => {}
        }
        agent.backoff = (agent.backoff * 2).min(MAX_RECONNECT_DELAY);
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let base_url =
        std::env::var("SESSIOND_URL").unwrap_or_else(|_| "http://127.0.0.1:3000".to_owned());
    let agent_id: Uuid = std::env::var("AGENT_ID")
        .map_err(|_| "set AGENT_ID to the agent's UUID")?
        .parse()
        .map_err(|e| format!("AGENT_ID is not a UUID: {e}"))?;
    let api_key = std::env::var("SESSIOND_API_KEY").ok();

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.cancel();
        }
    });
    println!("echo_agent: answering agent {agent_id} at {base_url} (Ctrl-C stops)");
    run(base_url, agent_id, api_key, shutdown).await
}
