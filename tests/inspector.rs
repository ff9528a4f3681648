//! The inspector (`/inspect`) in a real browser: headless Chromium, driven over WebDriver,
//! against the real binary on a free port with a store each test fills over HTTP. Each
//! view is saved as a PNG under `<target>/inspector-screenshots/` for a person to look at.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`make test-deps` installs them). Without
//! them the browser tests say so and pass, except under CI, where they fail.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

const BINARY: &str = env!("CARGO_BIN_EXE_sessiond");

// Each binary test uses part of it.
#[allow(dead_code)]
#[path = "support/server.rs"]
mod server;
#[path = "support/webdriver.rs"]
mod webdriver;

use server::Server;
use webdriver::Browser;

/// How soon an event must show on the page: the contract's stream delay is 25 ms, the
/// page's own work a few more; the rest is room for a loaded machine.
const LIVE_WITHIN: Duration = Duration::from_secs(2);

/// Where the screenshots go: `<target>/inspector-screenshots`, the target directory being
/// the one cargo built the binary in.
fn screenshot_path(name: &str) -> PathBuf {
    let target = std::path::Path::new(BINARY)
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the binary lies in <target>/<profile>/");
    target
        .join("inspector-screenshots")
        .join(format!("{name}.png"))
}

/// Whether the browser tests can run here; says why not when they cannot.
fn browser_installed() -> bool {
    if webdriver::available() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} or {} is missing: `make test-deps` installs them (Debian's chromium and chromium-driver)",
        webdriver::CHROMIUM,
        webdriver::CHROMEDRIVER
    );
    eprintln!(
        "skipped: the inspector's browser tests need {} and {} (`make test-deps` installs them)",
        webdriver::CHROMIUM,
        webdriver::CHROMEDRIVER
    );
    false
}

/// A server with its own store, and a client for its API.
struct Sessiond {
    server: Server,
    http: reqwest::Client,
    key: Option<String>,
    _dir: tempfile::TempDir,
}

impl Sessiond {
    /// Timeouts down to 0 minutes are allowed, for expired sessions.
    fn start(extra: &[&str]) -> Sessiond {
        let dir = tempfile::tempdir().expect("a data directory");
        let mut flags = vec!["--min-timeout-minutes", "0"];
        flags.extend_from_slice(extra);
        let key = flags
            .windows(2)
            .find(|pair| pair[0] == "--api-key")
            .map(|pair| pair[1].to_owned());
        Sessiond {
            server: Server::start(&dir.path().join("data"), &flags),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("a client"),
            key,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr())
    }

    /// A request to the API (`path` under `/api/messaging`), with the key; the status and
    /// the JSON body.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, self.url(&format!("/api/messaging{path}")));
        if let Some(key) = &self.key {
            request = request.header("X-API-Key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A request that must succeed; its body.
    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call(method, path, body).await;
        assert!((200..300).contains(&status), "{status}: {body}");
        body
    }

    async fn create_session(&self, body: Value) -> Value {
        self.ok(reqwest::Method::POST, "/sessions", Some(body))
            .await
    }

    /// Posts a message; returns it.
    async fn post(&self, session: &Value, body: Value) -> Value {
        let id = session["sessionId"].as_str().expect("a session id");
        self.ok(
            reqwest::Method::POST,
            &format!("/sessions/{id}/messages"),
            Some(body),
        )
        .await
    }

    async fn session(&self, id: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, &format!("/sessions/{id}"), None)
            .await
    }
}

fn new_id() -> String {
    Uuid::new_v4().to_string()
}

/// The id of a message (`id`), or of a session (`sessionId`, which a session has no `id`).
fn id_of(value: &Value) -> String {
    value["id"]
        .as_str()
        .or_else(|| value["sessionId"].as_str())
        .expect("an id")
        .to_owned()
}

/// The ids of the list's rows, top to bottom.
async fn row_ids(browser: &Browser) -> Vec<String> {
    let ids = browser
        .run(
            "return [...document.querySelectorAll('[data-testid=session-row]')].map(r => r.dataset.sessionId);",
            json!([]),
        )
        .await;
    serde_json::from_value(ids).expect("a list of ids")
}

/// Waits for the list to show exactly `expected`, in that order.
async fn wait_for_rows(browser: &Browser, expected: &[&String]) {
    browser
        .wait_for(
            &format!("the rows {expected:?}"),
            "const ids = [...document.querySelectorAll('[data-testid=session-row]')].map(r => r.dataset.sessionId);
             return JSON.stringify(ids) === JSON.stringify(arguments[0]);",
            json!([expected]),
        )
        .await;
}

/// Fails on any policy violation or script error the page reported.
async fn assert_clean_console(browser: &Browser) {
    let problems: Vec<String> = browser
        .console()
        .await
        .into_iter()
        .filter(|line| {
            line.contains("Content Security Policy")
                || line.contains("Uncaught")
                || line.contains("TypeError")
        })
        .collect();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sessions_list_is_newest_first_filtered_paged_and_counts_down() {
    if !browser_installed() {
        return;
    }
    // Arrange
    let sessiond = Sessiond::start(&[]);
    let (agent, other_agent, user) = (new_id(), new_id(), new_id());
    let chatty = sessiond
        .create_session(json!({"agentId": agent, "userId": user}))
        .await;
    sessiond.post(&chatty, json!({"content": "hello"})).await;
    sessiond
        .post(&chatty, json!({"content": "hi", "authorId": agent}))
        .await;
    let expiring = sessiond
        .create_session(json!({"agentId": agent, "userId": new_id(),
            "timeoutConfig": {"timeoutMinutes": 1, "warningThresholdMinutes": 1}}))
        .await;
    let elsewhere = sessiond
        .create_session(json!({"agentId": other_agent, "userId": user}))
        .await;
    let expired = sessiond
        .create_session(json!({"agentId": agent, "userId": new_id(),
            "timeoutConfig": {"timeoutMinutes": 0}}))
        .await;
    let (chatty_id, expiring_id, elsewhere_id, expired_id) = (
        id_of(&chatty),
        id_of(&expiring),
        id_of(&elsewhere),
        id_of(&expired),
    );
    let (_, chatty_now) = sessiond.session(&chatty_id).await;
    let browser = Browser::start().await;

    // Act
    browser.goto(&sessiond.url("/inspect")).await;

    // Assert: the active sessions, newest first, with their counts.
    wait_for_rows(&browser, &[&elsewhere_id, &expiring_id, &chatty_id]).await;
    let cells = browser
        .run(
            "const row = document.querySelector(`[data-session-id='${arguments[0]}']`);
             return [row.querySelector('[data-testid=row-messages]').textContent,
                     row.querySelector('[data-testid=row-renewals]').textContent,
                     row.querySelector('[data-testid=row-user] code').title];",
            json!([chatty_id]),
        )
        .await;
    assert_eq!(
        cells,
        json!(["2", chatty_now["renewalCount"].to_string(), user])
    );
    // The countdown runs, and the one-minute session is inside its warning threshold.
    let countdown = "const c = document.querySelector(`[data-session-id='${arguments[0]}'] [data-testid=countdown]`);
                     return [c.dataset.state, c.textContent];";
    let first = browser.run(countdown, json!([expiring_id])).await;
    assert_eq!(first[0], "warning", "{first}");
    assert!(
        first[1].as_str().unwrap().ends_with('s'),
        "seconds left: {first}"
    );
    browser
        .wait_for(
            "the countdown to tick",
            "const c = document.querySelector(`[data-session-id='${arguments[0]}'] [data-testid=countdown]`);
             return c.textContent !== arguments[1];",
            json!([expiring_id, first[1]]),
        )
        .await;
    let active = browser.run(countdown, json!([chatty_id])).await;
    assert_eq!(active[0], "active", "{active}");
    browser.screenshot(&screenshot_path("sessions-list")).await;

    // Act: filter by agent, all statuses.
    browser
        .type_into("[data-testid=filter-agentId]", &agent)
        .await;
    browser
        .run(
            "document.querySelector('[data-testid=filter-status]').value = 'all';",
            json!([]),
        )
        .await;
    browser.click("[data-testid=filter-apply]").await;

    // Assert: the agent's sessions only, the expired one shown as expired.
    wait_for_rows(&browser, &[&expired_id, &expiring_id, &chatty_id]).await;
    let gone = browser.run(countdown, json!([expired_id])).await;
    assert_eq!(gone, json!(["expired", "expired"]));
    browser
        .screenshot(&screenshot_path("sessions-list-filtered"))
        .await;

    // Act: the expired session, which the API no longer shows but the list still has.
    browser
        .click(&format!(
            "[data-session-id='{expired_id}'] [data-testid=session-link]"
        ))
        .await;

    // Assert: shown as expired, with what the list knew of it and the server's own message.
    wait_for_text(&browser, "session-status", "expired").await;
    let (status, refusal) = sessiond.session(&expired_id).await;
    assert_eq!(status, 410);
    let banner = text_of(&browser, "session-banner").await;
    assert!(
        banner.starts_with(refusal["error"]["message"].as_str().unwrap()),
        "{banner}"
    );
    assert_eq!(text_of(&browser, "session-countdown").await, "expired");
    let agent_shown = browser
        .run(
            "return document.querySelector('[data-testid=agent-id] code').title;",
            json!([]),
        )
        .await;
    assert_eq!(agent_shown, json!(agent));

    // Act: by user, two to a page (a size given in the address).
    browser
        .goto(&sessiond.url(&format!("/inspect?userId={user}&status=all&limit=1")))
        .await;

    // Assert: page after page, then back, with the list's cursor.
    wait_for_rows(&browser, &[&elsewhere_id]).await;
    browser.click("[data-testid=page-older]").await;
    wait_for_rows(&browser, &[&chatty_id]).await;
    let last_page = browser
        .run(
            "return document.querySelector('[data-testid=page-older]').disabled;",
            json!([]),
        )
        .await;
    assert_eq!(last_page, json!(true));
    browser.click("[data-testid=page-newer]").await;
    wait_for_rows(&browser, &[&elsewhere_id]).await;
    assert_clean_console(&browser).await;
}

/// A conversation with two forks: message 2 has two replies (3 and 5), message 3 has two
/// (4 and 7), and 8 follows 7. Returns the session and its messages in the order sent.
async fn branched_conversation(sessiond: &Sessiond) -> (Value, Vec<Value>) {
    let agent = new_id();
    let session = sessiond
        .create_session(
            json!({"agentId": agent, "userId": new_id(), "metadata": {"channel": "web"}}),
        )
        .await;
    let mut messages = Vec::new();
    let user = |content: &str| json!({"content": content});
    let agent_says = |content: &str| json!({"content": content, "authorId": agent});
    for body in [
        user("Can you help me plan a trip to Lisbon?"),
        json!({"content": "Of course. When are you going, and for how long?", "authorId": agent,
               "metadata": {"thought": "ask for the dates first"}}),
        json!({"content": "Three days in May.",
               "attachments": [{"type": "image", "url": "https://example.com/map.png", "name": "map.png"}]}),
        agent_says("Day 1: Alfama and the castle. Day 2: Belém. Day 3: Sintra."),
    ] {
        messages.push(sessiond.post(&session, body).await);
    }
    let reply_to = |parent: &Value, mut body: Value| {
        body["parentId"] = parent["id"].clone();
        body
    };
    let edit = reply_to(&messages[1], user("Actually, make it a week."));
    messages.push(sessiond.post(&session, edit).await);
    messages.push(
        sessiond
            .post(
                &session,
                agent_says("A week leaves time for Porto: four days here, three there."),
            )
            .await,
    );
    let regenerated = reply_to(
        &messages[2],
        agent_says("Another plan: Baixa, then Sintra, then Cascais."),
    );
    messages.push(sessiond.post(&session, regenerated).await);
    messages.push(
        sessiond
            .post(&session, user("The second plan, please."))
            .await,
    );
    (session, messages)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_branched_conversation_is_drawn_as_its_tree_and_a_click_highlights_the_thread() {
    if !browser_installed() {
        return;
    }
    // Arrange
    let sessiond = Sessiond::start(&[]);
    let (session, messages) = branched_conversation(&sessiond).await;
    let session_id = id_of(&session);
    let browser = Browser::start().await;

    // Act
    browser
        .goto(&sessiond.url(&format!("/inspect/sessions/{session_id}")))
        .await;
    browser
        .wait_for(
            "the eight messages",
            "return document.querySelectorAll('[data-testid=message-node]').length === 8;",
            json!([]),
        )
        .await;

    // Assert: each message is drawn under its parent. In the drawing a message's parent is
    // the message above it in its column, or, first in a branch, the one the branch hangs from.
    let drawn = browser
        .run(
            "const parentOf = (node) => {
               const above = node.previousElementSibling;
               if (above) return above.dataset.messageId;
               const fork = node.parentElement.closest('.fork');
               return fork ? fork.closest('[data-testid=message-node]').dataset.messageId : null;
             };
             return [...document.querySelectorAll('[data-testid=message-node]')].map(node => ({
               id: node.dataset.messageId,
               parent: parentOf(node),
               agent: node.querySelector('[data-testid=message]').classList.contains('agent'),
               content: node.querySelector('[data-testid=message-content]').textContent,
             }));",
            json!([]),
        )
        .await;
    let drawn = drawn.as_array().expect("a list");
    assert_eq!(drawn.len(), messages.len());
    for message in &messages {
        let node = drawn
            .iter()
            .find(|node| node["id"] == message["id"])
            .unwrap_or_else(|| panic!("message {} is drawn", message["id"]));
        assert_eq!(node["parent"], message["parentId"], "the parent of {node}");
        assert_eq!(node["agent"], message["isAgent"], "who wrote {node}");
        assert_eq!(node["content"], message["content"]);
    }
    let shape = browser
        .run(
            "return [document.querySelectorAll('.fork').length, document.querySelectorAll('[data-testid=branch]').length];",
            json!([]),
        )
        .await;
    assert_eq!(shape, json!([2, 4]), "two forks of two branches each");

    // Act: a click on the last message.
    let last = &messages[7];
    browser
        .click(&format!(
            "[data-message-id='{}'] > [data-testid=message]",
            id_of(last)
        ))
        .await;

    // Assert: its thread, as the server has it, is highlighted, and only that.
    let (_, thread) = sessiond
        .call(
            reqwest::Method::GET,
            &format!("/sessions/{session_id}/messages/{}/thread", id_of(last)),
            None,
        )
        .await;
    let mut expected: Vec<String> = thread["messages"]
        .as_array()
        .expect("a thread")
        .iter()
        .map(id_of)
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 5, "root, 2, 3, 7, 8");
    let highlighted = browser
        .wait_for(
            "the thread to be highlighted",
            "const ids = [...document.querySelectorAll('[data-testid=message-node]')]
               .filter(n => n.querySelector('.message').classList.contains('in-thread'))
               .map(n => n.dataset.messageId).sort();
             return ids.length === arguments[0] ? ids : null;",
            json!([expected.len()]),
        )
        .await;
    assert_eq!(highlighted, json!(expected));
    let detail = browser
        .run(
            "return document.querySelector('[data-testid=detail-content]').textContent;",
            json!([]),
        )
        .await;
    assert_eq!(detail, last["content"]);

    // Act: metadata and attachments open.
    browser
        .click(&format!(
            "[data-message-id='{}'] [data-testid=message-metadata] summary",
            id_of(&messages[1])
        ))
        .await;
    browser
        .click(&format!(
            "[data-message-id='{}'] [data-testid=message-attachments] summary",
            id_of(&messages[2])
        ))
        .await;

    // Assert
    let opened = browser
        .run(
            "const node = (id) => document.querySelector(`[data-message-id='${id}']`);
             return [node(arguments[0]).querySelector('[data-testid=message-metadata] pre').textContent,
                     node(arguments[1]).querySelector('[data-testid=message-attachments]').textContent];",
            json!([id_of(&messages[1]), id_of(&messages[2])]),
        )
        .await;
    assert!(
        opened[0]
            .as_str()
            .unwrap()
            .contains("ask for the dates first"),
        "{opened}"
    );
    assert!(opened[1].as_str().unwrap().contains("map.png"), "{opened}");
    browser.screenshot(&screenshot_path("session-tree")).await;
    assert_clean_console(&browser).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_looks_like_html_is_shown_as_its_characters() {
    if !browser_installed() {
        return;
    }
    // Arrange
    let sessiond = Sessiond::start(&[]);
    let agent = new_id();
    let session = sessiond
        .create_session(json!({"agentId": agent, "userId": new_id()}))
        .await;
    let markup = "<img src=x onerror=alert(1)>";
    let message = sessiond
        .post(
            &session,
            json!({"content": markup, "metadata": {"note": "<script>alert(2)</script><b>bold</b>"},
                   "attachments": [{"type": "<i>x</i>", "url": "javascript:alert(3)", "name": "<svg onload=alert(4)>"}]}),
        )
        .await;
    let browser = Browser::start().await;

    // Act: the session, with everything folded out, and the agent's feed from its start.
    browser
        .goto(&sessiond.url(&format!("/inspect/sessions/{}", id_of(&session))))
        .await;
    browser
        .click("[data-testid=message-metadata] summary")
        .await;
    browser
        .click("[data-testid=message-attachments] summary")
        .await;
    browser.click("[data-testid=message-content]").await;
    browser.element("[data-testid=detail-content]").await;

    // Assert: the characters, and no element made of them.
    let shown = browser
        .run(
            "const view = document.getElementById('view');
             return {
               content: view.querySelector('[data-testid=message-content]').textContent,
               detail: view.querySelector('[data-testid=detail-content]').textContent,
               metadata: view.querySelector('[data-testid=message-metadata] pre').textContent,
               attachments: view.querySelector('[data-testid=message-attachments]').textContent,
               made: view.querySelectorAll('img, script, b, i, svg, a[href^=javascript]').length,
             };",
            json!([]),
        )
        .await;
    assert_eq!(shown["content"], markup);
    assert_eq!(shown["detail"], markup);
    assert!(
        shown["metadata"]
            .as_str()
            .unwrap()
            .contains("<script>alert(2)</script><b>bold</b>"),
        "{shown}"
    );
    assert!(
        shown["attachments"]
            .as_str()
            .unwrap()
            .contains("<svg onload=alert(4)>"),
        "{shown}"
    );
    assert_eq!(shown["made"], 0, "{shown}");
    assert_eq!(browser.alert().await, None, "no alert");
    browser.screenshot(&screenshot_path("session-markup")).await;

    // Act: the agent's feed, replayed from its oldest event.
    browser
        .goto(&sessiond.url(&format!("/inspect/agents/{agent}?replay=1")))
        .await;
    let feed = browser
        .wait_for(
            "the message in the feed",
            "const c = document.querySelector('[data-testid=feed-content]'); return c && c.textContent;",
            json!([]),
        )
        .await;

    // Assert
    assert_eq!(feed, message["content"]);
    let made = browser
        .run(
            "return document.getElementById('view').querySelectorAll('img, script, svg').length;",
            json!([]),
        )
        .await;
    assert_eq!(made, 0);
    assert_eq!(browser.alert().await, None, "no alert");
    assert_clean_console(&browser).await;
}

/// The text of the element `testid` on the page.
async fn text_of(browser: &Browser, testid: &str) -> String {
    browser
        .run(
            "const e = document.querySelector(`[data-testid=${arguments[0]}]`); return e ? e.textContent : null;",
            json!([testid]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the element `testid` shows `expected`; how long that took.
async fn wait_for_text(browser: &Browser, testid: &str, expected: &str) -> Duration {
    let started = Instant::now();
    browser
        .wait_for(
            &format!("{testid} to show {expected:?}"),
            "const e = document.querySelector(`[data-testid=${arguments[0]}]`); return !!e && e.textContent === arguments[1];",
            json!([testid, expected]),
        )
        .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_view_follows_its_events_and_its_actions_ask_first() {
    if !browser_installed() {
        return;
    }
    // Arrange
    let sessiond = Sessiond::start(&[]);
    let session = sessiond
        .create_session(json!({"agentId": new_id(), "userId": new_id()}))
        .await;
    let session_id = id_of(&session);
    let first = sessiond.post(&session, json!({"content": "first"})).await;
    let browser = Browser::start().await;
    browser
        .goto(&sessiond.url(&format!("/inspect/sessions/{session_id}")))
        .await;
    wait_for_text(&browser, "stream-state", "live").await;
    browser.element("[data-testid=message-node]").await;
    // Marks this page: a reload would lose it.
    browser.run("window.notReloaded = true;", json!([])).await;

    // Act: a message over HTTP.
    let posted = Instant::now();
    let reply = sessiond
        .post(
            &session,
            json!({"content": "a reply, live", "parentId": first["id"]}),
        )
        .await;
    browser
        .wait_for(
            "the new message",
            "return !!document.querySelector(`[data-message-id='${arguments[0]}']`);",
            json!([id_of(&reply)]),
        )
        .await;
    let latency = posted.elapsed();

    // Assert
    assert!(
        latency < LIVE_WITHIN,
        "the message took {latency:?} to appear"
    );
    eprintln!("a message posted over HTTP appeared after {latency:?}");
    let (_, info) = sessiond.session(&session_id).await;
    wait_for_text(&browser, "message-count", "2").await;
    wait_for_text(&browser, "renewal-count", &info["renewalCount"].to_string()).await;

    // Act: a renewal over HTTP, seen live.
    let renewed = sessiond
        .ok(
            reqwest::Method::POST,
            &format!("/sessions/{session_id}/renew"),
            None,
        )
        .await;
    let took = wait_for_text(
        &browser,
        "renewal-count",
        &renewed["renewalCount"].to_string(),
    )
    .await;
    assert!(took < LIVE_WITHIN, "the renewal took {took:?} to appear");

    // Act: renew from the page; the dialog asks first.
    browser.click("[data-testid=action-renew]").await;
    browser.element("[data-testid=confirm-dialog]").await;
    browser.screenshot(&screenshot_path("confirm-renew")).await;
    browser.click("[data-testid=confirm-ok]").await;

    // Assert
    let count = renewed["renewalCount"].as_u64().unwrap() + 1;
    wait_for_text(&browser, "renewal-count", &count.to_string()).await;
    let (_, info) = sessiond.session(&session_id).await;
    assert_eq!(info["renewalCount"], count);

    // Act: a heartbeat, cancelled, then confirmed.
    browser.click("[data-testid=action-heartbeat]").await;
    browser.click("[data-testid=confirm-cancel]").await;
    let (_, untouched) = sessiond.session(&session_id).await;
    browser.click("[data-testid=action-heartbeat]").await;
    browser.click("[data-testid=confirm-ok]").await;
    browser
        .wait_for(
            "the heartbeat's renewal",
            "return document.querySelector('[data-testid=renewal-count]').textContent === arguments[0];",
            json!([(count + 1).to_string()]),
        )
        .await;

    // Assert
    assert_eq!(
        untouched["lastActivity"], info["lastActivity"],
        "cancel sent nothing"
    );
    let (_, beaten) = sessiond.session(&session_id).await;
    assert_ne!(beaten["lastActivity"], info["lastActivity"]);

    // Act: a timeout the server refuses.
    let refused = json!({"timeoutMinutes": 99_999});
    let (status, envelope) = sessiond
        .call(
            reqwest::Method::PATCH,
            &format!("/sessions/{session_id}/timeout"),
            Some(refused),
        )
        .await;
    assert_eq!(status, 400);
    browser.click("[data-testid=action-timeout]").await;
    browser
        .type_into("[data-testid=timeout-timeoutMinutes]", "99999")
        .await;
    browser.screenshot(&screenshot_path("change-timeout")).await;
    browser.click("[data-testid=timeout-save]").await;

    // Assert: the envelope's message.
    let shown = browser
        .wait_for(
            "the error",
            "const e = document.querySelector('[data-testid=action-error]'); return e && !e.hidden && e.textContent;",
            json!([]),
        )
        .await;
    let message = envelope["error"]["message"].as_str().expect("a message");
    assert!(
        shown.as_str().unwrap().starts_with(message),
        "shown {shown}, the envelope says {message:?}"
    );

    // Act: a timeout it takes.
    browser.click("[data-testid=action-timeout]").await;
    browser
        .type_into("[data-testid=timeout-timeoutMinutes]", "45")
        .await;
    browser.click("[data-testid=timeout-save]").await;

    // Assert
    wait_for_text(&browser, "timeout-minutes", "45 minutes").await;
    let (_, changed) = sessiond.session(&session_id).await;
    assert_eq!(changed["timeoutConfig"]["timeoutMinutes"], 45);
    browser.screenshot(&screenshot_path("session-live")).await;
    assert_eq!(
        browser
            .run("return window.notReloaded === true;", json!([]))
            .await,
        json!(true),
        "the page never reloaded"
    );

    // Act: delete, confirmed.
    browser.click("[data-testid=action-delete]").await;
    let question = text_of(&browser, "confirm-message").await;
    browser.click("[data-testid=confirm-ok]").await;

    // Assert: back on the list, without the session, which the server no longer has.
    assert!(question.contains(&session_id), "{question}");
    browser.element("[data-testid=sessions-view]").await;
    browser
        .wait_for(
            "the list to load",
            "return !!document.querySelector('[data-testid=no-sessions], [data-testid=session-row]');",
            json!([]),
        )
        .await;
    assert!(!row_ids(&browser).await.contains(&session_id));
    assert_eq!(sessiond.session(&session_id).await.0, 404);
    assert_clean_console(&browser).await;
}

/// Which of the session view's actions are disabled: renew, heartbeat, timeout, delete.
async fn disabled_actions(browser: &Browser) -> Value {
    browser
        .run(
            "return ['renew', 'heartbeat', 'timeout', 'delete'].map(a => document.querySelector(`[data-testid=action-${a}]`).disabled);",
            json!([]),
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_expires_or_is_deleted_meanwhile_shows_so_at_once() {
    if !browser_installed() {
        return;
    }
    // Arrange
    let sessiond = Sessiond::start(&[]);
    let expiring = sessiond
        .create_session(json!({"agentId": new_id(), "userId": new_id()}))
        .await;
    let deleted = sessiond
        .create_session(json!({"agentId": new_id(), "userId": new_id()}))
        .await;
    let browser = Browser::start().await;
    browser
        .goto(&sessiond.url(&format!("/inspect/sessions/{}", id_of(&expiring))))
        .await;
    wait_for_text(&browser, "stream-state", "live").await;
    wait_for_text(&browser, "session-status", "active").await;

    // Act: a timeout that ends the session now (the server then sends session.expired).
    sessiond
        .ok(
            reqwest::Method::PATCH,
            &format!("/sessions/{}/timeout", id_of(&expiring)),
            Some(json!({"timeoutMinutes": 0, "warningThresholdMinutes": 0})),
        )
        .await;

    // Assert
    let took = wait_for_text(&browser, "session-status", "expired").await;
    assert!(took < LIVE_WITHIN, "the expiry took {took:?} to appear");
    wait_for_text(&browser, "stream-state", "ended").await;
    assert_eq!(text_of(&browser, "session-countdown").await, "expired");
    assert_eq!(text_of(&browser, "timeout-minutes").await, "0 minutes");
    let events = browser
        .run(
            "return [...document.querySelectorAll('[data-testid=event-entry]')].map(e => e.dataset.event);",
            json!([]),
        )
        .await;
    assert_eq!(events[0], "session.expired", "{events}");
    assert_eq!(
        disabled_actions(&browser).await,
        json!([true, true, true, false])
    );
    browser
        .screenshot(&screenshot_path("session-expired"))
        .await;

    // Arrange: the other session.
    browser
        .goto(&sessiond.url(&format!("/inspect/sessions/{}", id_of(&deleted))))
        .await;
    wait_for_text(&browser, "stream-state", "live").await;
    wait_for_text(&browser, "session-status", "active").await;

    // Act: deleted by someone else.
    sessiond
        .ok(
            reqwest::Method::DELETE,
            &format!("/sessions/{}", id_of(&deleted)),
            None,
        )
        .await;

    // Assert
    let took = wait_for_text(&browser, "session-status", "deleted").await;
    assert!(took < LIVE_WITHIN, "the deletion took {took:?} to appear");
    wait_for_text(&browser, "stream-state", "ended").await;
    assert_eq!(
        disabled_actions(&browser).await,
        json!([true, true, true, true])
    );

    // Act: the deleted session opened again, and an address that names no session.
    browser
        .goto(&sessiond.url(&format!("/inspect/sessions/{}", id_of(&deleted))))
        .await;

    // Assert: the server's message.
    wait_for_text(&browser, "session-status", "not found").await;
    let banner = text_of(&browser, "session-banner").await;
    assert!(banner.starts_with("Session not found"), "{banner}");
    browser
        .goto(&sessiond.url("/inspect/sessions/not-a-session"))
        .await;
    browser.element("[data-testid=not-an-id]").await;
    assert_clean_console(&browser).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_view_is_a_live_feed_of_the_agents_events() {
    if !browser_installed() {
        return;
    }
    // Arrange
    let sessiond = Sessiond::start(&[]);
    let agent = new_id();
    let browser = Browser::start().await;
    browser.goto(&sessiond.url("/inspect")).await;
    browser
        .type_into("[data-testid=follow-agent]", &agent)
        .await;
    browser.click("[data-testid=follow-form] button").await;
    wait_for_text(&browser, "stream-state", "live").await;

    // Act: a session of the agent's, a message each way, a renewal; and another agent's.
    sessiond
        .create_session(json!({"agentId": new_id(), "userId": new_id()}))
        .await;
    let session = sessiond
        .create_session(json!({"agentId": agent, "userId": new_id()}))
        .await;
    sessiond
        .post(&session, json!({"content": "Is anyone there?"}))
        .await;
    sessiond
        .post(
            &session,
            json!({"content": "Yes, I am here.", "authorId": agent}),
        )
        .await;
    sessiond
        .ok(
            reqwest::Method::POST,
            &format!("/sessions/{}/renew", id_of(&session)),
            None,
        )
        .await;

    // Assert: the agent's events only, newest first.
    let names = browser
        .wait_for(
            "the agent's events",
            "const names = [...document.querySelectorAll('[data-testid=feed-entry]')].map(e => e.dataset.event);
             return names.includes('session.renewed') && names.filter(n => n === 'message').length === 2 ? names : null;",
            json!([]),
        )
        .await;
    let names: Vec<String> = serde_json::from_value(names).unwrap();
    assert_eq!(names.first().map(String::as_str), Some("session.renewed"));
    assert_eq!(names.last().map(String::as_str), Some("session.created"));
    let sessions = browser
        .run(
            "return [...new Set([...document.querySelectorAll('[data-testid=feed-entry]')].map(e => e.dataset.sessionId))];",
            json!([]),
        )
        .await;
    assert_eq!(sessions, json!([id_of(&session)]));
    let contents = browser
        .run(
            "return [...document.querySelectorAll('[data-testid=feed-content]')].map(e => e.textContent);",
            json!([]),
        )
        .await;
    assert_eq!(contents, json!(["Yes, I am here.", "Is anyone there?"]));
    browser.screenshot(&screenshot_path("agent-feed")).await;
    assert_clean_console(&browser).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_api_key_the_page_asks_for_it_and_keeps_it_in_the_tab() {
    if !browser_installed() {
        return;
    }
    // Arrange
    let key = "inspector-test-key";
    let sessiond = Sessiond::start(&["--api-key", key]);
    let session = sessiond
        .create_session(json!({"agentId": new_id(), "userId": new_id()}))
        .await;
    sessiond
        .post(&session, json!({"content": "behind a key"}))
        .await;
    let page = reqwest::get(sessiond.url("/inspect/assets/app.js"))
        .await
        .expect("the server answers");
    let api = reqwest::get(sessiond.url("/api/messaging/sessions"))
        .await
        .expect("the server answers");
    assert_eq!(page.status(), 200, "the page's files need no key");
    assert_eq!(api.status(), 401, "the API still does");
    let browser = Browser::start().await;

    // Act
    browser.goto(&sessiond.url("/inspect")).await;

    // Assert: it asks.
    browser.element("[data-testid=key-dialog]").await;
    browser.screenshot(&screenshot_path("api-key-prompt")).await;

    // Act: a wrong key, then the right one.
    browser.type_into("[data-testid=key-input]", "wrong").await;
    browser.click("[data-testid=key-submit]").await;
    browser
        .wait_for(
            "the refusal",
            "const d = document.querySelector('[data-testid=key-dialog]'); return !!d && d.textContent.includes('refused');",
            json!([]),
        )
        .await;
    browser.type_into("[data-testid=key-input]", key).await;
    browser.click("[data-testid=key-submit]").await;

    // Assert: the list, and the key in this tab's sessionStorage only.
    wait_for_rows(&browser, &[&id_of(&session)]).await;
    let stored = browser
        .run(
            "return [sessionStorage.getItem('sessiond-inspector.apiKey'), localStorage.length, document.cookie];",
            json!([]),
        )
        .await;
    assert_eq!(stored, json!([key, 0, ""]));
    // The console check of the other tests hears what the page reports: here, the 401s.
    let console = browser.console().await;
    assert!(
        console.iter().any(|line| line.contains("401")),
        "{console:#?}"
    );

    // Act: the session, whose event stream needs the key too.
    browser.click("[data-testid=session-link]").await;
    wait_for_text(&browser, "stream-state", "live").await;
    sessiond
        .post(&session, json!({"content": "seen through the key"}))
        .await;

    // Assert
    browser
        .wait_for(
            "the live message",
            "return [...document.querySelectorAll('[data-testid=message-content]')].some(e => e.textContent === 'seen through the key');",
            json!([]),
        )
        .await;
    browser
        .screenshot(&screenshot_path("session-with-key"))
        .await;
    assert_eq!(browser.alert().await, None);
}
