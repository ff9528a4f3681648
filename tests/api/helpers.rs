//! The test harness: one server per test, bound to `127.0.0.1:0`, with its own temporary data
//! directory, plus small request helpers so that each test reads as Arrange / Act / Assert.
//!
//! Everything that depends on the library's interface (`app::start`, `RunningServer`,
//! `sweeper::sweep_once`, `Timestamp`, `ManualClock`) is confined to this file; tests only
//! set `ServeConfig` fields in `spawn_app_with` closures and move a server's manual clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use sessiond::app::RunningServer;
use sessiond::config::ServeConfig;
use sessiond::domain::{Clock, ManualClock, Timestamp};
use tempfile::TempDir;
use tokio::task::JoinSet;
use uuid::Uuid;

/// Path prefix of every route under test.
pub const API: &str = "/api/messaging";
/// The header carrying the API key.
pub const API_KEY_HEADER: &str = "X-API-Key";
/// The default request-body limit (64 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// The default request-head limit (64 KiB).
pub const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;
/// One minute in milliseconds.
pub const MINUTE_MS: u64 = 60_000;
/// Where manual clocks start: 2026-11-21T10:00:00.000Z. A fixed instant makes every
/// `createdAt` and `expiresAt` a known number; that it may lie ahead of the wall clock does
/// not matter, as a server on a manual clock reads nothing else.
pub const T0_MS: u64 = 1_795_255_200_000;

/// A running server plus what a test needs to talk to it.
pub struct TestApp {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// A client that never uses a proxy (only 127.0.0.1 is contacted).
    pub client: Client,
    /// The server itself: gives the store to sweeper tests and is shut down by restart tests.
    pub server: RunningServer,
    /// The data directory; deleted when the test ends.
    pub dir: TempDir,
    /// The API key the server was started with; sent on every request built by `request`.
    pub api_key: Option<String>,
    /// The clock the server reads, when it was started on a manual one; kept across
    /// restarts, so a restarted server sees the same instant.
    pub clock: Option<Arc<ManualClock>>,
    /// The PostgreSQL database the server keeps its store in, when the tests run on
    /// PostgreSQL; kept across restarts.
    pub store: Option<String>,
}

/// With `SESSIOND_TEST_POSTGRES` set to the URL of a PostgreSQL cluster's database, the
/// tests run on PostgreSQL: each server gets a fresh database of its own on that cluster.
/// Without it, they run on sled in the server's temporary directory.
pub async fn test_store() -> Option<String> {
    let cluster = std::env::var("SESSIOND_TEST_POSTGRES").ok()?;
    let (client, connection) = tokio_postgres::connect(&cluster, tokio_postgres::NoTls)
        .await
        .expect("the test cluster takes connections");
    tokio::spawn(connection);
    let name = format!("test_{}", Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("the test cluster makes a database");
    let (base, _) = cluster
        .rsplit_once('/')
        .expect("SESSIOND_TEST_POSTGRES names a database");
    Some(format!("{base}/{name}"))
}

/// A session created through the API.
#[derive(Debug, Clone)]
pub struct Session {
    /// The session id as returned (lowercase hyphenated).
    pub id: String,
    /// The session's agentId.
    pub agent_id: String,
    /// The session's userId.
    pub user_id: String,
    /// The whole 201 body.
    pub body: Value,
}

/// A response: status, headers, raw text and the text parsed as JSON (`Null` when it is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Reply {
    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        assert!(
            !self.body.is_null(),
            "the body is not JSON: {:?}",
            self.text
        );
        self.body
    }

    /// Asserts the status, the error envelope of API.md and its code; returns the `error` object.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status (wanted {code}); body: {}",
            self.text
        );
        let content_type = self
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "error content type is {content_type:?}; body: {}",
            self.text
        );
        assert_eq!(
            self.body["success"],
            json!(false),
            "not an error envelope: {}",
            self.text
        );
        let error = &self.body["error"];
        assert_eq!(error["code"], json!(code), "body: {}", self.text);
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error.message must be a non-empty string: {}",
            self.text
        );
        assert!(
            error["details"].is_string(),
            "error.details must be a string: {}",
            self.text
        );
        error.clone()
    }
}

/// Starts a server with the default configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server after letting the test adjust the configuration.
pub async fn spawn_app_with(configure: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary directory can be created");
    start_in(dir, None, test_store().await, configure).await
}

/// Starts a server whose clock reads [`T0_MS`] and moves only when the test moves it
/// ([`TestApp::set_clock`], [`TestApp::advance_clock`]), so expiry, renewal and warning
/// edges can be reached to the millisecond without waiting.
pub async fn spawn_app_with_clock(configure: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary directory can be created");
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0_MS)));
    start_in(dir, Some(clock), test_store().await, configure).await
}

/// Starts a server whose minimum timeout is 0, so that `{"timeoutMinutes":0}` makes a session
/// that is expired as soon as it is created.
pub async fn spawn_app_allowing_instant_expiry() -> TestApp {
    spawn_app_with(|config| config.min_timeout_minutes = 0).await
}

async fn start_in(
    dir: TempDir,
    clock: Option<Arc<ManualClock>>,
    store: Option<String>,
    configure: impl FnOnce(&mut ServeConfig),
) -> TestApp {
    let mut config = ServeConfig {
        addr: "127.0.0.1:0"
            .parse()
            .expect("a literal socket address parses"),
        data_dir: dir.path().to_path_buf(),
        store: store.clone(),
        ..ServeConfig::default()
    };
    configure(&mut config);
    let api_key = config.api_key.clone();
    let server = match &clock {
        Some(clock) => sessiond::app::start_with_clock(config, clock.clone()).await,
        None => sessiond::app::start(config).await,
    }
    .expect("the server starts");
    let addr = server.local_addr();
    let client = Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a plain HTTP client can be built");
    TestApp {
        addr,
        client,
        server,
        dir,
        api_key,
        clock,
        store,
    }
}

impl TestApp {
    /// Shuts the server down gracefully and starts a new one (default configuration, same API
    /// key) on the same data directory.
    pub async fn restart(self) -> TestApp {
        let TestApp {
            server,
            dir,
            api_key,
            clock,
            store,
            ..
        } = self;
        server
            .shutdown()
            .await
            .expect("the server shuts down cleanly");
        start_in(dir, clock, store, move |config| config.api_key = api_key).await
    }

    /// The manual clock the server reads.
    ///
    /// # Panics
    /// When the server was not started with [`spawn_app_with_clock`].
    #[track_caller]
    pub fn clock(&self) -> &ManualClock {
        self.clock
            .as_deref()
            .expect("the server was started with spawn_app_with_clock")
    }

    /// Sets the server's clock to `ms` Unix-epoch milliseconds.
    #[track_caller]
    pub fn set_clock(&self, ms: u64) {
        self.clock().set(Timestamp::from_millis(ms));
    }

    /// Moves the server's clock forward.
    #[track_caller]
    pub fn advance_clock(&self, by: Duration) {
        self.clock().advance(by);
    }

    /// Records every notice (`session.expiring`, `session.expired`) due by the manual clock's
    /// reading, as the server's notifier does on each of its polls; returns how many sessions
    /// got one. Lets a test know that nothing is due yet without waiting for a poll.
    ///
    /// # Panics
    /// When the server was not started with [`spawn_app_with_clock`].
    pub async fn notify_due_now(&self) -> usize {
        let now = self
            .clock
            .as_ref()
            .expect("the server was started with spawn_app_with_clock")
            .now();
        sessiond::notifier::notify_due_once(self.store(), Timestamp::EPOCH, now)
            .await
            .expect("looking for due notices in a healthy store succeeds")
    }

    /// A 5-minute session without auto-renew, with the server's manual clock moved to the
    /// instant it expires.
    pub async fn expired_session(&self) -> Session {
        let session = self
            .create_session_with_timeout(json!({"timeoutMinutes": 5, "autoRenew": false}))
            .await;
        self.set_clock(millis(&session.body["expiresAt"]));
        session
    }

    /// The store behind the server (for sweeper tests).
    pub fn store(&self) -> &sessiond::store::Store {
        self.server.store()
    }

    /// `http://addr` + an absolute path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A request to an absolute path, with the API key when one is configured.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.client.request(method, self.url(path));
        match &self.api_key {
            Some(key) => builder.header(API_KEY_HEADER, key),
            None => builder,
        }
    }

    /// A request to a path under `/api/messaging`.
    pub fn api(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, &format!("{API}{path}"))
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&self, builder: RequestBuilder) -> Reply {
        let response = builder
            .send()
            .await
            .expect("the request reaches the server");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("the body can be read");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            body,
        }
    }

    /// A request to a path under `/api/messaging` on a connection of its own that is never
    /// reused. For bodies the server rejects unread (413): it closes such a connection after
    /// answering, and a pooled client could send its next request into the closing socket.
    pub fn api_unpooled(&self, method: Method, path: &str) -> RequestBuilder {
        let client = Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client can be built");
        let builder = client.request(method, self.url(&format!("{API}{path}")));
        match &self.api_key {
            Some(key) => builder.header(API_KEY_HEADER, key),
            None => builder,
        }
    }

    /// POST a raw JSON body with [`TestApp::api_unpooled`].
    pub async fn post_raw_unpooled(&self, path: &str, body: String) -> Reply {
        let builder = self
            .api_unpooled(Method::POST, path)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        self.send(builder).await
    }
}

impl Api for TestApp {
    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<String>,
    ) -> Reply {
        let mut builder = self.api(method, path);
        if let Some(content_type) = content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        if let Some(body) = body {
            builder = builder.body(body);
        }
        self.send(builder).await
    }
}

/// The requests the tests send, through a real socket ([`TestApp`]) or through
/// `warp::test` ([`EmbeddedApp`]): each sends [`Api::call`], the rest is written once here.
#[allow(async_fn_in_trait, reason = "used by this test binary alone")]
pub trait Api {
    /// Sends `method` to a path under `/api/messaging`, with `body` (when given) of the
    /// given Content-Type (none when `None`), and reads the whole response.
    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<String>,
    ) -> Reply;

    /// GET a path under `/api/messaging`.
    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None, None).await
    }

    /// POST a JSON body to a path under `/api/messaging`.
    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, Some("application/json"), body.to_string())
            .await
    }

    /// POST without a body (and without a Content-Type) to a path under `/api/messaging`.
    async fn post_empty(&self, path: &str) -> Reply {
        self.call(Method::POST, path, None, None).await
    }

    /// POST a raw body with the given Content-Type (none when `None`).
    async fn post_raw(&self, path: &str, content_type: Option<&str>, body: String) -> Reply {
        self.call(Method::POST, path, content_type, Some(body))
            .await
    }

    /// PATCH a JSON body to a path under `/api/messaging`.
    async fn patch(&self, path: &str, body: &Value) -> Reply {
        let body = Some(body.to_string());
        self.call(Method::PATCH, path, Some("application/json"), body)
            .await
    }

    /// DELETE a path under `/api/messaging`.
    async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, None, None).await
    }

    /// POST /sessions with the given body as is.
    async fn try_create_session(&self, body: &Value) -> Reply {
        self.post("/sessions", body).await
    }

    /// Creates a session for a fresh agent and user; asserts 201.
    async fn create_session(&self) -> Session {
        self.create_session_with(json!({})).await
    }

    /// Creates a session from fresh agentId/userId overridden by the fields of `extra`;
    /// asserts 201.
    async fn create_session_with(&self, extra: Value) -> Session {
        let mut body = json!({"agentId": new_id(), "userId": new_id()});
        if let (Some(target), Value::Object(fields)) = (body.as_object_mut(), extra) {
            target.extend(fields);
        }
        let created = self.try_create_session(&body).await.expect(201);
        Session {
            id: field_str(&created, "sessionId").to_owned(),
            agent_id: field_str(&created, "agentId").to_owned(),
            user_id: field_str(&created, "userId").to_owned(),
            body: created,
        }
    }

    /// Creates a session with the given partial timeoutConfig; asserts 201.
    async fn create_session_with_timeout(&self, timeout_config: Value) -> Session {
        self.create_session_with(json!({ "timeoutConfig": timeout_config }))
            .await
    }

    /// GET /sessions/{id}.
    async fn get_session(&self, id: &str) -> Reply {
        self.get(&format!("/sessions/{id}")).await
    }

    /// GET /sessions?{query}.
    async fn list_sessions(&self, query: &str) -> Reply {
        self.get(&format!("/sessions?{query}")).await
    }

    /// POST /sessions/{id}/messages with the given body.
    async fn post_message(&self, session_id: &str, body: &Value) -> Reply {
        self.post(&format!("/sessions/{session_id}/messages"), body)
            .await
    }

    /// Appends a message with default author and parent; asserts 201 and returns the
    /// message.
    async fn append(&self, session_id: &str, content: &str) -> Value {
        self.post_message(session_id, &json!({ "content": content }))
            .await
            .expect(201)
    }

    /// Appends `count` messages one after another, contents "message 1", "message 2", ...
    async fn append_many(&self, session_id: &str, count: usize) -> Vec<Value> {
        let mut messages = Vec::with_capacity(count);
        for n in 1..=count {
            messages.push(self.append(session_id, &format!("message {n}")).await);
        }
        messages
    }

    /// GET /sessions/{id}/messages?{query}.
    async fn list_messages(&self, session_id: &str, query: &str) -> Reply {
        self.get(&format!("/sessions/{session_id}/messages?{query}"))
            .await
    }

    /// POST /sessions/{id}/renew (no body).
    async fn renew(&self, session_id: &str) -> Reply {
        self.post_empty(&format!("/sessions/{session_id}/renew"))
            .await
    }

    /// POST /sessions/{id}/heartbeat (no body).
    async fn heartbeat(&self, session_id: &str) -> Reply {
        self.post_empty(&format!("/sessions/{session_id}/heartbeat"))
            .await
    }

    /// PATCH /sessions/{id}/timeout.
    async fn patch_timeout(&self, session_id: &str, body: &Value) -> Reply {
        self.patch(&format!("/sessions/{session_id}/timeout"), body)
            .await
    }

    /// DELETE /sessions/{id}.
    async fn delete_session(&self, session_id: &str) -> Reply {
        self.delete(&format!("/sessions/{session_id}")).await
    }
}

/// Creates `count` sessions (fresh agent and user each) with up to 32 requests in flight.
pub async fn create_many_sessions(app: &Arc<TestApp>, count: usize) -> Vec<Session> {
    let mut sessions = Vec::with_capacity(count);
    let mut remaining = count;
    while remaining > 0 {
        let batch = remaining.min(32);
        let mut tasks = JoinSet::new();
        for _ in 0..batch {
            let app = Arc::clone(app);
            tasks.spawn(async move { app.create_session().await });
        }
        sessions.extend(tasks.join_all().await);
        remaining -= batch;
    }
    sessions
}

/// A fresh random UUID, lowercase hyphenated.
pub fn new_id() -> String {
    Uuid::new_v4().to_string()
}

/// The string field `key` of `value`; panics with the value when it is missing or not a string.
#[track_caller]
pub fn field_str<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("field {key:?} is not a string in {value}"))
}

/// The unsigned integer field `key` of `value`.
#[track_caller]
pub fn field_u64(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("field {key:?} is not an unsigned integer in {value}"))
}

/// The `seq` of each message, in order.
#[track_caller]
pub fn seqs(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {messages}"))
        .iter()
        .map(|message| field_u64(message, "seq"))
        .collect()
}

/// The `id` of each message, in order.
#[track_caller]
pub fn ids(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {messages}"))
        .iter()
        .map(|message| field_str(message, "id").to_owned())
        .collect()
}

/// Asserts that `id` is a UUID written lowercase and hyphenated.
#[track_caller]
pub fn assert_canonical_uuid(id: &str) {
    let parsed = Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?} is not a UUID: {e}"));
    assert_eq!(
        id,
        parsed.hyphenated().to_string(),
        "ids are returned lowercase hyphenated"
    );
}

/// Parses an API timestamp (RFC 3339 UTC with milliseconds, `2026-11-21T10:00:00.000Z`) into
/// Unix-epoch milliseconds; panics if the value has another shape.
#[track_caller]
pub fn millis(value: &Value) -> u64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp must be a string, got {value}"));
    assert!(
        text.len() == 24 && text.ends_with('Z') && text.as_bytes()[19] == b'.',
        "{text:?} is not RFC 3339 UTC with milliseconds"
    );
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"));
    u64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
        .expect("test timestamps are after 1970 and fit in u64 milliseconds")
}

/// The wall clock in Unix-epoch milliseconds (the server reads the same clock).
pub fn now_millis() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    u64::try_from(since_epoch.as_millis()).expect("milliseconds since 1970 fit in u64")
}

/// Waits (at most about a millisecond) until the wall clock has passed `ms`, so that a renewal
/// made afterwards is guaranteed to move `expiresAt` later than one made at `ms`. This does not
/// test time; it only rules out two events landing in the same millisecond.
pub async fn wait_for_clock_past(ms: u64) {
    while now_millis() <= ms {
        tokio::task::yield_now().await;
    }
}

/// Runs one sweep of the store as if the clock read `now_ms`, keeping sessions that expired less
/// than `retention` ago; returns how many sessions it removed.
pub async fn sweep_at(app: &TestApp, now_ms: u64, retention: Duration) -> usize {
    let now = sessiond::domain::Timestamp::from_millis(now_ms);
    let outcome = sessiond::sweeper::sweep_once(app.store(), now, retention)
        .await
        .expect("a sweep of a healthy store succeeds");
    outcome.removed_sessions
}

impl TestApp {
    /// Like [`TestApp::restart`], but listens on the same address again, for clients that
    /// reconnect on their own (an agent following its event stream).
    pub async fn restart_on_same_addr(self) -> TestApp {
        let TestApp {
            addr,
            server,
            dir,
            api_key,
            clock,
            store,
            ..
        } = self;
        server
            .shutdown()
            .await
            .expect("the server shuts down cleanly");
        start_in(dir, clock, store, move |config| {
            config.addr = addr;
            config.api_key = api_key;
        })
        .await
    }
}

/// sessiond's routes with no socket: requests go through `warp::test` straight to the
/// filters, for tests about what the API answers to a request (validation, error codes)
/// rather than about HTTP itself (connections, headers on the wire, body limits, paths
/// outside the API, which only the server's own routes answer).
pub struct EmbeddedApp {
    /// The routes, as an embedding app would mount them.
    routes: warp::filters::BoxedFilter<(warp::reply::Response,)>,
    /// The store and background tasks behind the routes, as the embedding app holds them.
    _sessiond: sessiond::app::Sessiond,
    /// The data directory; deleted when the test ends.
    _dir: TempDir,
}

/// Opens sessiond on a temporary directory with the default configuration and a manual
/// clock reading [`T0_MS`] (nothing here depends on time passing).
pub async fn embedded_app() -> EmbeddedApp {
    let dir = tempfile::tempdir().expect("a temporary directory can be created");
    let config = ServeConfig {
        data_dir: dir.path().to_path_buf(),
        store: test_store().await,
        ..ServeConfig::default()
    };
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0_MS)));
    let sessiond = sessiond::app::Sessiond::open_with_clock(&config, clock)
        .await
        .expect("sessiond opens on an empty directory");
    EmbeddedApp {
        routes: sessiond.routes(),
        _sessiond: sessiond,
        _dir: dir,
    }
}

impl Api for EmbeddedApp {
    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<String>,
    ) -> Reply {
        let mut request = warp::test::request()
            .method(method.as_str())
            .path(&format!("{API}{path}"));
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE.as_str(), content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.reply(&self.routes).await;
        let status = response.status();
        let headers = response.headers().clone();
        let text = String::from_utf8_lossy(response.body()).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            body,
        }
    }
}

/// The sum of the samples of `name` whose labels include every pair of `labels`.
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = series_name == name
                && labels
                    .iter()
                    .all(|(label, value)| series_labels.contains(&format!("{label}=\"{value}\"")));
            wanted.then(|| value.parse::<f64>().expect("a sample's value is a number"))
        })
        .sum()
}
