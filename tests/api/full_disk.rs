//! A full disk, for real: the store on a small tmpfs that the test fills. Writes are refused
//! with a 503 while it is full, health says `degraded`, every acknowledged write stays
//! readable, and once space is freed the store takes writes again without a restart;
//! nothing refused is kept. Mounting needs root: without it these tests skip, saying so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use sessiond::domain::{EventData, EventFilter};
use sessiond::store::EventStream;

use crate::helpers::*;

/// A tmpfs mounted for one test; unmounted when dropped.
struct Tmpfs {
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `megabytes`, or says why not and gives `None`.
    fn mount(megabytes: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mount_point = dir.path().join("disk");
        std::fs::create_dir(&mount_point).expect("a mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&mount_point)
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Tmpfs {
                mount_point,
                _dir: dir,
            }),
            Ok(output) => {
                eprintln!(
                    "skipping: mounting a tmpfs was refused (needs root): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(error) => {
                eprintln!("skipping: `mount` could not run: {error}");
                None
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.mount_point.join("data")
    }

    /// Fills the file system to the last byte with a file of its own; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.mount_point.join("filler");
        let mut filler = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("a filler file");
        for chunk in [1 << 20, 4096, 1] {
            let bytes = vec![1u8; chunk];
            while matches!(filler.write(&bytes), Ok(written) if written > 0) {}
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

/// A server on `data_dir` with a small page cache, so that reads go to the disk. On sled
/// whatever the tests run on: the disk is the embedded store's.
async fn serve_on(data_dir: &Path) -> TestApp {
    let data_dir = data_dir.to_path_buf();
    spawn_app_with(move |config| {
        config.store = None;
        config.data_dir = data_dir;
        config.cache_mb = 1;
    })
    .await
}

/// What the test wrote and was told.
#[derive(Default)]
struct Ledger {
    /// (session id, content) of every message answered 201.
    acknowledged: Vec<(String, String)>,
    /// (session id, content) of every message answered 503.
    refused: Vec<(String, String)>,
}

impl Ledger {
    async fn append(&mut self, app: &TestApp, session_id: &str, content: String) -> u16 {
        let reply = app
            .post_message(session_id, &json!({ "content": content }))
            .await;
        let status = reply.status.as_u16();
        match status {
            201 => self.acknowledged.push((session_id.to_owned(), content)),
            503 => {
                reply.expect_error(503, "STORAGE_UNAVAILABLE");
                self.refused.push((session_id.to_owned(), content));
            }
            other => panic!("an append answered {other}: {}", reply.text),
        }
        status
    }

    /// Every acknowledged message is stored, and no refused one.
    async fn verify(&self, app: &TestApp) {
        let mut stored = std::collections::HashSet::new();
        let sessions: std::collections::BTreeSet<&str> = self
            .acknowledged
            .iter()
            .chain(&self.refused)
            .map(|(session, _)| session.as_str())
            .collect();
        for session in sessions {
            let mut query = "limit=100".to_owned();
            loop {
                let page = app.list_messages(session, &query).await.expect(200);
                for message in page["messages"].as_array().expect("a page of messages") {
                    stored.insert((session.to_owned(), field_str(message, "content").to_owned()));
                }
                if page["hasMore"] != json!(true) {
                    break;
                }
                let oldest = field_u64(&page["cursors"], "beforeSeq");
                query = format!("limit=100&beforeSeq={oldest}");
            }
        }
        for written in &self.acknowledged {
            assert!(
                stored.contains(written),
                "acknowledged but lost: {written:?}"
            );
        }
        for written in &self.refused {
            assert!(!stored.contains(written), "refused but kept: {written:?}");
        }
    }
}

/// The contents of the message events on `events`, up to the one with `last`.
async fn heard_messages(events: &mut EventStream, last: &str) -> Vec<String> {
    let mut heard = Vec::new();
    while heard.last().is_none_or(|content| content != last) {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the stream goes on")
            .expect("an event");
        if let EventData::Message { message, .. } = &event.data {
            heard.push(label(&message.content));
        }
    }
    heard
}

/// A message's content without its padding: what the assertions show.
fn label(content: &str) -> String {
    content.split(' ').take(3).collect::<Vec<_>>().join(" ")
}

/// Health's answer while the store refuses writes.
async fn expect_degraded(app: &TestApp) -> Value {
    let reply = app.get("/sessions/health").await;
    let body = reply.body.clone();
    reply.expect_error(503, "STORAGE_UNAVAILABLE");
    assert_eq!(body["status"], "degraded", "{body}");
    let reason = field_str(&body, "reason");
    assert!(reason.contains("disk is full"), "{body}");
    body
}

/// Polls health until it answers 200 `healthy` (the store checks the disk once a second).
async fn await_healthy(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = app.get("/sessions/health").await;
        if reply.status == 200 {
            assert_eq!(reply.body["status"], "healthy", "{}", reply.text);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store did not take writes again after space was freed: {}",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_without_a_restart() {
    let Some(disk) = Tmpfs::mount(64) else { return };
    let app = serve_on(&disk.data_dir()).await;
    let mut ledger = Ledger::default();
    // More than the 1 MiB cache holds, so that reads after the failure go to the disk.
    let mut sessions = Vec::new();
    for s in 0..40 {
        let session = app.create_session().await;
        for m in 0..20 {
            let content = format!("before {s}/{m} {}", "x".repeat(2000));
            assert_eq!(ledger.append(&app, &session.id, content).await, 201);
        }
        sessions.push(session.id);
    }

    // A live subscriber hears of every acknowledged message, and of no refused one.
    let watched = sessions[0].clone();
    let mut events = app
        .store()
        .events(EventFilter::Session(watched.parse().unwrap()), None)
        .expect("a live stream");

    let filler = disk.fill();
    let mut refusals = 0;
    for attempt in 0..1000 {
        let content = format!("while full {attempt} {}", "y".repeat(2000));
        if ledger.append(&app, &watched, content).await == 503 {
            refusals += 1;
            if refusals == 3 {
                break;
            }
        }
    }
    assert_eq!(refusals, 3, "the disk never filled up");

    let health = expect_degraded(&app).await;
    assert_eq!(field_u64(&health, "activeSessions"), 40);
    // Reads of everything acknowledged go on while writes are refused.
    ledger.verify(&app).await;
    for session in &sessions {
        app.get_session(session).await.expect(200);
    }
    // A write still finds the disk full: refused at once, in the envelope.
    app.try_create_session(&json!({ "agentId": new_id(), "userId": new_id() }))
        .await
        .expect_error(503, "STORAGE_UNAVAILABLE");
    // The metrics say so: the state, the refusals, and the batch that failed.
    let metrics = app.send(app.request(Method::GET, "/metrics")).await.text;
    assert_eq!(
        metric_sample(&metrics, "sessiond_storage_unavailable", &[]),
        1.0
    );
    assert!(
        metric_sample(
            &metrics,
            "sessiond_writes_refused_total",
            &[("reason", "STORAGE_UNAVAILABLE")]
        ) >= 1.0
    );
    assert!(
        metric_sample(
            &metrics,
            "sessiond_writes_failed_total",
            &[("reason", "storage")]
        ) >= 1.0
    );

    std::fs::remove_file(filler).expect("the filler can be removed");
    await_healthy(&app).await;
    let metrics = app.send(app.request(Method::GET, "/metrics")).await.text;
    assert_eq!(
        metric_sample(&metrics, "sessiond_storage_unavailable", &[]),
        0.0
    );
    for (attempt, session) in sessions.iter().enumerate() {
        let content = format!("after {attempt}");
        assert_eq!(ledger.append(&app, session, content).await, 201);
    }
    app.create_session().await;
    ledger.verify(&app).await;
    let heard = heard_messages(&mut events, "after 0").await;
    let acknowledged: Vec<String> = ledger
        .acknowledged
        .iter()
        .filter(|(session, content)| *session == watched && !content.starts_with("before"))
        .map(|(_, content)| label(content))
        .collect();
    assert_eq!(heard, acknowledged);
    drop(events);

    // The disk agrees with what was answered.
    app.server.shutdown().await.expect("a clean shutdown");
    let reopened = serve_on(&disk.data_dir()).await;
    ledger.verify(&reopened).await;
    assert!(reopened.store().check().expect("a check").is_clean());
    reopened.server.shutdown().await.expect("a clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_started_on_a_full_disk_serves_reads_and_takes_writes_once_space_is_freed() {
    let Some(disk) = Tmpfs::mount(48) else { return };
    let app = serve_on(&disk.data_dir()).await;
    let mut ledger = Ledger::default();
    let session = app.create_session().await;
    for m in 0..50 {
        let content = format!("kept {m}");
        assert_eq!(ledger.append(&app, &session.id, content).await, 201);
    }
    app.server.shutdown().await.expect("a clean shutdown");

    let filler = disk.fill();
    let app = serve_on(&disk.data_dir()).await;
    expect_degraded(&app).await;
    ledger.verify(&app).await;
    assert_eq!(
        ledger.append(&app, &session.id, "refused".into()).await,
        503
    );

    std::fs::remove_file(filler).expect("the filler can be removed");
    await_healthy(&app).await;
    assert_eq!(ledger.append(&app, &session.id, "taken".into()).await, 201);
    ledger.verify(&app).await;
    app.server.shutdown().await.expect("a clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_disk_keeps_a_reserve_it_can_afford_and_recovers_too() {
    // 8 MiB: the reserve is a sixteenth of it (1 MiB at least), not its 16 MiB default.
    let Some(disk) = Tmpfs::mount(8) else { return };
    let app = serve_on(&disk.data_dir()).await;
    let health = app.get("/sessions/health").await.expect(200);
    assert_eq!(health["status"], "healthy", "{health}");
    let mut ledger = Ledger::default();
    let session = app.create_session().await;
    for m in 0..20 {
        let content = format!("before {m}");
        assert_eq!(ledger.append(&app, &session.id, content).await, 201);
    }

    let filler = disk.fill();
    let mut refused = false;
    for attempt in 0..1000 {
        let content = format!("while full {attempt} {}", "y".repeat(2000));
        if ledger.append(&app, &session.id, content).await == 503 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the disk never filled up");
    expect_degraded(&app).await;
    ledger.verify(&app).await;

    std::fs::remove_file(filler).expect("the filler can be removed");
    await_healthy(&app).await;
    assert_eq!(ledger.append(&app, &session.id, "after".into()).await, 201);
    ledger.verify(&app).await;
    app.server.shutdown().await.expect("a clean shutdown");
}
