//! The server's log as a collector reads it: with `--log-format json`, every line on stderr
//! is one JSON object; every request has one access line naming its route template, status,
//! duration, bytes, peer and request id; and no line carries a body, a message's content,
//! metadata or the API key.

use std::collections::HashMap;

use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_sessiond");

// Each binary test uses part of it.
#[allow(dead_code)]
#[path = "support/server.rs"]
mod server;
use server::Server;

const KEY: &str = "log-test-key-never-logged";
const CONTENT: &str = "content-that-must-never-be-logged";
const METADATA: &str = "metadata-that-must-never-be-logged";

/// What the test sent: the request id each response carried, with the method, route
/// template and status the access line must name.
struct Sent {
    requests: HashMap<String, (String, &'static str, u16)>,
    client: reqwest::Client,
    base: String,
}

impl Sent {
    async fn send(
        &mut self,
        method: reqwest::Method,
        path: &str,
        route: &'static str,
        body: Option<Value>,
        request_id: Option<&str>,
    ) -> Value {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .header("X-API-Key", KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(id) = request_id {
            request = request.header("X-Request-Id", id);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let id = response.headers()["x-request-id"]
            .to_str()
            .expect("an ASCII id")
            .to_owned();
        if let Some(given) = request_id {
            let sane = !given.contains(' ');
            assert_eq!(id == given, sane, "{given:?} answered as {id:?}");
        }
        let answer = response.json().await.unwrap_or(Value::Null);
        self.requests
            .insert(id, (method.as_str().to_owned(), route, status));
        answer
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_parse_line_by_line_with_one_access_line_per_request_and_no_content() {
    // Arrange
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut server = Server::start(dir.path(), &["--log-format", "json", "--api-key", KEY]);
    let mut sent = Sent {
        requests: HashMap::new(),
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a client"),
        base: format!("http://{}", server.addr()),
    };
    let (agent, user) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());

    // Act
    let created = sent
        .send(
            reqwest::Method::POST,
            "/api/messaging/sessions",
            "/api/messaging/sessions",
            Some(json!({ "agentId": agent, "userId": user, "metadata": { "note": METADATA } })),
            Some("client-chosen-id-1"),
        )
        .await;
    let session = created["sessionId"]
        .as_str()
        .expect("a session id")
        .to_owned();
    let messages = format!("/api/messaging/sessions/{session}/messages");
    for n in 0..3 {
        sent.send(
            reqwest::Method::POST,
            &messages,
            "/api/messaging/sessions/{sessionId}/messages",
            Some(json!({ "content": format!("{CONTENT} {n}"), "metadata": { "m": METADATA } })),
            None,
        )
        .await;
    }
    sent.send(
        reqwest::Method::GET,
        &format!("{messages}?limit=10"),
        "/api/messaging/sessions/{sessionId}/messages",
        None,
        Some("bad id with spaces"),
    )
    .await;
    sent.send(
        reqwest::Method::GET,
        "/no/such/path",
        "unmatched",
        None,
        None,
    )
    .await;
    let (code, later) = server.stop_with("TERM");
    assert_eq!(code, Some(0));
    let log = format!("{}{later}", server.log);

    // Assert
    let mut access_lines = HashMap::new();
    for line in log.lines() {
        let parsed: Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not one JSON object ({error}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(parsed[field].is_string(), "no {field}: {line}");
        }
        for secret in [KEY, CONTENT, METADATA] {
            assert!(!line.contains(secret), "{secret} was logged: {line}");
        }
        if parsed["target"] == "sessiond::access" {
            let id = parsed["span"]["request_id"]
                .as_str()
                .unwrap_or_else(|| panic!("an access line without its request id: {line}"))
                .to_owned();
            assert!(parsed["duration_ms"].as_f64().is_some(), "{line}");
            assert!(parsed["bytes"].as_u64().is_some_and(|b| b > 0), "{line}");
            assert!(
                parsed["remote"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("127.0.0.1:")),
                "{line}"
            );
            let named = (
                parsed["method"].as_str().unwrap_or_default().to_owned(),
                parsed["route"].as_str().unwrap_or_default().to_owned(),
                parsed["status"].as_u64().unwrap_or_default(),
            );
            assert!(
                access_lines.insert(id.clone(), named).is_none(),
                "two access lines for {id}"
            );
        }
    }
    assert_eq!(access_lines.len(), sent.requests.len(), "{log}");
    for (id, (method, route, status)) in &sent.requests {
        let logged = access_lines
            .get(id)
            .unwrap_or_else(|| panic!("no access line for request {id}:\n{log}"));
        assert_eq!(
            logged,
            &(method.clone(), (*route).to_owned(), u64::from(*status))
        );
    }
}
