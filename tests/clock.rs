//! The real binary under a wall clock that jumps, through libfaketime (Debian's `faketime`
//! package; `make test` installs it, and these tests skip, saying so, without it). The
//! monotonic clock is left alone, as an NTP step or an operator's `date -s` leaves it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_sessiond");

// Each binary test uses part of it.
#[allow(dead_code)]
#[path = "support/server.rs"]
mod server;
use server::Server;

/// Where Debian's libfaketime is, if it is installed.
fn libfaketime() -> Option<PathBuf> {
    let found = ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|triple| PathBuf::from(format!("/usr/lib/{triple}/faketime/libfaketime.so.1")))
        .find(|path| path.exists());
    if found.is_none() {
        eprintln!("skipping: libfaketime is not installed (Debian package faketime)");
    }
    found
}

/// A wall clock the test moves: libfaketime reads `file` at every clock call.
struct FakeClock {
    file: PathBuf,
    library: PathBuf,
}

impl FakeClock {
    fn new(dir: &Path, library: PathBuf) -> FakeClock {
        let clock = FakeClock {
            file: dir.join("faketime"),
            library,
        };
        clock.set("+0");
        clock
    }

    /// Sets the clock: `+0` is the real time, `+2d` two days ahead, a bare date and time
    /// that instant (frozen).
    fn set(&self, spec: &str) {
        std::fs::write(&self.file, spec).expect("the clock file can be written");
    }

    fn env(&self) -> [(&'static str, &Path); 4] {
        [
            ("LD_PRELOAD", &self.library),
            ("FAKETIME_TIMESTAMP_FILE", &self.file),
            ("FAKETIME_NO_CACHE", Path::new("1")),
            ("FAKETIME_DONT_FAKE_MONOTONIC", Path::new("1")),
        ]
    }
}

#[test]
fn a_clock_before_1970_at_start_is_refused_in_one_line() {
    let Some(library) = libfaketime() else { return };
    let dir = tempfile::tempdir().expect("a temp dir");
    let clock = FakeClock::new(dir.path(), library);
    clock.set("1969-12-31 23:00:00");

    let output = Command::new(BINARY)
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .envs(clock.env())
        .env_remove("SESSIOND_API_KEY")
        .output()
        .expect("the binary runs");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("1970"), "{stderr}");
}

/// A request's status and JSON body; the server must answer (not drop the connection).
async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let body = response.json().await.expect("a JSON body");
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_jump_ahead_deletes_nothing_and_a_clock_before_1970_panics_nowhere() {
    let Some(library) = libfaketime() else { return };
    let dir = tempfile::tempdir().expect("a temp dir");
    let clock = FakeClock::new(dir.path(), library);
    let mut server = Server::start_with(
        "127.0.0.1:0",
        &dir.path().join("data"),
        &[
            "--sweep-interval-seconds",
            "1",
            "--expired-retention-minutes",
            "1",
        ],
        &clock.env(),
    );
    let base = format!("http://{}/api/messaging", server.addr());
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    let mut sessions = Vec::new();
    for _ in 0..5 {
        let (status, created) = answer(
            client
                .post(format!("{base}/sessions"))
                .json(&json!({ "agentId": uuid::Uuid::new_v4(), "userId": uuid::Uuid::new_v4() })),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let id = created["sessionId"].as_str().expect("an id").to_owned();
        for n in 0..3 {
            let (status, _) = answer(
                client
                    .post(format!("{base}/sessions/{id}/messages"))
                    .json(&json!({ "content": format!("m{n}") })),
            )
            .await;
            assert_eq!(status, 201);
        }
        sessions.push(id);
    }

    // Two days ahead: every session has expired by the wall clock, long past the
    // retention, while the sweeper runs every second.
    clock.set("+2d");
    let (status, _) = answer(client.get(format!("{base}/sessions/{}", sessions[0]))).await;
    assert_eq!(status, 410, "expiry follows the wall clock");
    tokio::time::sleep(Duration::from_secs(4)).await;
    clock.set("+0");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &sessions {
        let (status, session) = answer(client.get(format!("{base}/sessions/{id}"))).await;
        assert_eq!(status, 200, "{session}");
        let (status, page) = answer(client.get(format!("{base}/sessions/{id}/messages"))).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["messages"].as_array().map(Vec::len), Some(3), "{page}");
    }

    // Before 1970: every request is answered, in JSON.
    clock.set("1969-06-01 00:00:00");
    let (status, created) = answer(
        client
            .post(format!("{base}/sessions"))
            .json(&json!({ "agentId": uuid::Uuid::new_v4(), "userId": uuid::Uuid::new_v4() })),
    )
    .await;
    assert!(
        status == 201 || created["success"] == json!(false),
        "{created}"
    );
    let (_, appended) = answer(
        client
            .post(format!("{base}/sessions/{}/messages", sessions[1]))
            .json(&json!({ "content": "in 1969" })),
    )
    .await;
    assert!(appended.is_object() && status < 500, "{status} {appended}");
    answer(client.get(format!("{base}/sessions/health"))).await;
    answer(client.get(format!("{base}/sessions?limit=5"))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    clock.set("+0");

    let (status, health) = answer(client.get(format!("{base}/sessions/health"))).await;
    assert_eq!(status, 200, "{health}");
    let (code, log) = server.stop_with("TERM");
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("wall clock"),
        "the held deletions were not logged:\n{log}"
    );
}
