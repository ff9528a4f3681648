//! sessiond embedded in another warp app through `sessiond::app::Sessiond`: its routes keep
//! to their own paths, its background tasks run, its events arrive in-process, and
//! shutdown stops it all and frees the data directory.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use sessiond::app::Sessiond;
use sessiond::config::ServeConfig;
use sessiond::domain::{EventData, EventFilter};
use uuid::Uuid;
use warp::{Filter, Reply};

#[allow(dead_code)] // its `main` only runs as the example
#[path = "../examples/desktop.rs"]
mod desktop;

const WAIT: Duration = Duration::from_secs(10);

fn config(dir: &std::path::Path) -> ServeConfig {
    ServeConfig {
        data_dir: dir.to_path_buf(),
        min_timeout_minutes: 0,
        sweep_interval_seconds: Some(1),
        expired_retention_minutes: 0,
        ..ServeConfig::default()
    }
}

async fn create_session(
    app: &(impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone + 'static),
    body: Value,
) -> Value {
    let reply = warp::test::request()
        .method("POST")
        .path("/api/messaging/sessions")
        .json(&body)
        .reply(app)
        .await;
    assert_eq!(reply.status(), 201, "{:?}", reply.body());
    serde_json::from_slice(reply.body()).expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_routes_answer_only_their_own_paths_whichever_order_they_are_mounted_in() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let sessiond = Sessiond::open(&config(dir.path())).await.unwrap();
    let host = || {
        warp::path("version")
            .map(|| "1.0".into_response())
            .or(warp::path("hosted").map(|| "host".into_response()))
            .unify()
    };
    let first = sessiond.routes().or(host()).unify().boxed();
    let last = host().or(sessiond.routes()).unify().boxed();

    for app in [first.clone(), last.clone()] {
        // Act
        let version = warp::test::request().path("/version").reply(&app).await;
        let health = warp::test::request()
            .path("/api/messaging/sessions/health")
            .reply(&app)
            .await;
        let unknown = warp::test::request().path("/elsewhere").reply(&app).await;
        let ours = warp::test::request()
            .path("/api/messaging/nothing-here")
            .reply(&app)
            .await;

        // Assert
        assert_eq!(version.status(), 200);
        assert_eq!(version.body(), "1.0");
        assert_eq!(health.status(), 200);
        // Not ours: warp's own answer, not sessiond's envelope.
        assert_eq!(unknown.status(), 404);
        assert!(!String::from_utf8_lossy(unknown.body()).contains("\"success\""));
        // Under our prefix: our envelope.
        assert_eq!(ours.status(), 404);
        let body: Value = serde_json::from_slice(ours.body()).unwrap();
        assert_eq!(body["error"]["code"], json!("NOT_FOUND"));
    }
    drop((first, last));
    sessiond.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn events_arrive_in_process_and_resume_from_an_id() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let sessiond = Sessiond::open(&config(dir.path())).await.unwrap();
    let app = sessiond.routes();
    let agent_id = Uuid::now_v7();
    let mut live = sessiond.events(EventFilter::Agent(agent_id), None).unwrap();

    // Act
    let created =
        create_session(&app, json!({"agentId": agent_id, "userId": Uuid::now_v7()})).await;
    let session_id: Uuid = created["sessionId"].as_str().unwrap().parse().unwrap();
    let message = sessiond
        .store()
        .append_message(
            session_id,
            sessiond::domain::NewMessage {
                content: "hello".into(),
                parent_id: None,
                author_id: None,
                metadata_json: "{}".into(),
                attachments: Vec::new(),
            },
        )
        .await
        .unwrap()
        .unwrap();
    let first = tokio::time::timeout(WAIT, live.next())
        .await
        .unwrap()
        .unwrap();
    let message_event = loop {
        let event = tokio::time::timeout(WAIT, live.next())
            .await
            .unwrap()
            .unwrap();
        if event.kind.name() == "message" {
            break event;
        }
    };
    let mut resumed = sessiond
        .events(EventFilter::Agent(agent_id), Some(first.id))
        .unwrap();
    let replayed = tokio::time::timeout(WAIT, resumed.next())
        .await
        .unwrap()
        .unwrap();

    // Assert
    assert_eq!(first.kind.name(), "session.created");
    assert_eq!(first.session_id, session_id);
    match &message_event.data {
        EventData::Message { message: got, .. } => assert_eq!(got.id, message.message.id),
        other => panic!("a message event, got {other:?}"),
    }
    assert!(replayed.id > first.id);
    assert!(sessiond
        .events(EventFilter::Agent(agent_id), Some(u64::MAX))
        .is_err());

    // Shutdown ends the streams.
    drop(app);
    let shutdown = tokio::spawn(sessiond.shutdown());
    // Events published before the shutdown may still be read; then the stream ends.
    let drained = tokio::time::timeout(WAIT, live.by_ref().collect::<Vec<_>>()).await;
    assert!(drained.is_ok(), "the stream did not end at shutdown");
    drop((live, resumed));
    shutdown.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_background_tasks_run_and_shutdown_frees_the_data_directory() {
    // Arrange: a session that expires at once, swept within a second.
    let dir = tempfile::tempdir().unwrap();
    let sessiond = Sessiond::open(&config(dir.path())).await.unwrap();
    let app = sessiond.routes();
    let agent_id = Uuid::now_v7();
    let mut events = sessiond.events(EventFilter::Agent(agent_id), None).unwrap();

    // Act
    let created = create_session(
        &app,
        json!({"agentId": agent_id, "userId": Uuid::now_v7(), "timeoutConfig": {"timeoutMinutes": 0}}),
    )
    .await;
    let session_id: Uuid = created["sessionId"].as_str().unwrap().parse().unwrap();
    let mut names = Vec::new();
    while !names.contains(&"session.expired") {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap();
        names.push(event.kind.name());
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while sessiond
        .store()
        .session(session_id)
        .await
        .unwrap()
        .is_some()
    {
        assert!(tokio::time::Instant::now() < deadline, "never swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((app, events));
    sessiond.shutdown().await.unwrap();
    let reopened = Sessiond::open(&config(dir.path())).await;

    // Assert
    assert_eq!(names, ["session.created", "session.expired"]);
    reopened.unwrap().shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_instance_on_the_same_directory_is_told_the_store_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let first = Sessiond::open(&config(dir.path())).await.unwrap();
    let second = Sessiond::open(&config(dir.path())).await;
    assert!(
        matches!(second, Err(sessiond::Error::InUse(_))),
        "{second:?}"
    );
    first.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_desktop_example_answers_through_its_embedded_agent_and_shuts_down_cleanly() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();

    // Act
    let summary = desktop::run(dir.path().to_path_buf()).await.unwrap();
    let again = desktop::run(dir.path().to_path_buf()).await.unwrap();

    // Assert: answered twice on the same store, so the first run closed it.
    assert_eq!(summary.question, "Hello from the desktop");
    assert_eq!(summary.answer, "You said: Hello from the desktop");
    assert_eq!(again.answer, summary.answer);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_desktop_example_refuses_a_store_another_instance_holds() {
    let dir = tempfile::tempdir().unwrap();
    let running = Sessiond::open(&config(dir.path())).await.unwrap();
    let second = desktop::run(dir.path().to_path_buf()).await;
    let error = second.expect_err("the store is in use");
    assert!(
        matches!(
            error.downcast_ref::<sessiond::Error>(),
            Some(sessiond::Error::InUse(_))
        ),
        "{error}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_before_1970_is_refused_before_anything_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(sessiond::domain::ManualClock::new(
        sessiond::domain::Timestamp::EPOCH,
    ));
    let opened = Sessiond::open_with_clock(&config(dir.path()), clock).await;
    match opened {
        Err(sessiond::Error::Config(line)) => assert!(line.contains("1970"), "{line}"),
        other => panic!("a configuration error, got {other:?}"),
    }
    assert!(!dir.path().join("db").exists(), "the store was opened");
}
