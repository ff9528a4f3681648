//! Online backup: `GET /api/admin/export` on a live server and `sessiond backup` driving it,
//! against the real binary on a real port. A backup taken under write load restores, with
//! `sessiond import`, every session and message acknowledged before it began.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

const BINARY: &str = env!("CARGO_BIN_EXE_sessiond");

// Each binary test uses part of it.
#[allow(dead_code)]
#[path = "support/server.rs"]
mod server;
use server::Server;

const API_KEY: &str = "backup-test-key";

/// Runs `sessiond backup` with `args` (and `env`), its stdout and stderr captured.
fn backup(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BINARY)
        .arg("backup")
        .args(args)
        .env_remove("SESSIOND_API_KEY")
        .env_remove("SESSIOND_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

/// Runs the binary with `args`, feeding it `input` on stdin.
fn run_with_input(args: &[&str], input: &[u8]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    server::run_with_input(&args, input)
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn url_of(server: &Server) -> String {
    format!("http://{}", server.addr())
}

/// Microseconds since the epoch, now.
fn now_micros() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970");
    u64::try_from(since.as_micros()).expect("micros fit in u64")
}

/// An export of `sessions` sessions of `messages` messages of `content_chars` characters
/// each, made here, so that a store of some size can be loaded quickly with `import`.
fn synthetic_export(sessions: usize, messages: usize, content_chars: usize) -> Vec<u8> {
    let now = now_micros();
    let content = "x".repeat(content_chars);
    let mut out = b"{\"format\":\"sessiond-export\",\"version\":2}\n".to_vec();
    for _ in 0..sessions {
        let (user, agent) = (Uuid::new_v4(), Uuid::new_v4());
        let mut lines = Vec::with_capacity(messages);
        let mut parent: Option<Uuid> = None;
        for seq in 1..=messages {
            let id = Uuid::now_v7();
            lines.push(json!({
                "id": id, "seq": seq, "parentId": parent, "content": content,
                "authorId": user, "isAgent": false, "createdAt": now,
                "metadataJson": "{}", "attachments": [],
            }));
            parent = Some(id);
        }
        let session = json!({
            "id": Uuid::now_v7(), "agentId": agent, "userId": user,
            "createdAt": now, "lastActivity": now, "renewedAt": now, "renewalCount": 0,
            "timeout": {"timeoutMinutes": 1440, "autoRenew": true,
                        "maxDurationMinutes": 2880, "warningThresholdMinutes": 5},
            "metadataJson": "{}", "messageCount": messages, "lastMessageId": parent,
            "lastMessageAt": now, "expiringNoticedFor": null, "expiredNoticed": false,
        });
        serde_json::to_writer(&mut out, &json!({"session": session, "messages": lines}))
            .expect("JSON");
        out.push(b'\n');
    }
    let end = json!({"end": true, "sessions": sessions, "messages": sessions * messages});
    serde_json::to_writer(&mut out, &end).expect("JSON");
    out.push(b'\n');
    out
}

/// Loads `export` into a new store in `dir`.
fn load_store(dir: &Path, export: &[u8]) {
    let dir = dir.to_str().expect("a UTF-8 path");
    let loaded = run_with_input(&["import", "--data-dir", dir], export);
    assert!(loaded.status.success(), "{:?}", stderr_lines(&loaded));
}

/// Every session of the store in `dir` with the ids of its messages, read with
/// `sessiond export`.
fn stored_in(dir: &Path) -> HashMap<Uuid, HashSet<Uuid>> {
    let dir = dir.to_str().expect("a UTF-8 path");
    let exported = run_with_input(&["export", "--data-dir", dir], b"");
    assert!(exported.status.success(), "{:?}", stderr_lines(&exported));
    let text = String::from_utf8(exported.stdout).expect("UTF-8");
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("session").is_some())
        .map(|line| {
            let id = |value: &Value| value["id"].as_str().and_then(|id| id.parse().ok());
            let session = id(&line["session"]).expect("a session id");
            let messages = line["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|message| id(message).expect("a message id"))
                .collect();
            (session, messages)
        })
        .collect()
}

/// A write the server acknowledged with a 2xx, and when the answer arrived.
#[derive(Clone, Copy, Debug)]
enum Acknowledged {
    Session(Uuid, Instant),
    Message(Uuid, Uuid, Instant),
}

/// Creates sessions and appends messages to them over HTTP until `stop`, recording each
/// write acknowledged.
async fn write_load(
    url: String,
    acknowledged: Arc<Mutex<Vec<Acknowledged>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let client = reqwest::Client::new();
    let id_of = |body: &Value, field: &str| -> Uuid {
        body[field]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("an id")
    };
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let created = client
            .post(format!("{url}/api/messaging/sessions"))
            .header("x-api-key", API_KEY)
            .json(&json!({"agentId": Uuid::new_v4(), "userId": Uuid::new_v4()}))
            .send()
            .await
            .expect("the server answers");
        assert_eq!(created.status().as_u16(), 201);
        let session = id_of(&created.json().await.expect("JSON"), "sessionId");
        acknowledged
            .lock()
            .unwrap()
            .push(Acknowledged::Session(session, Instant::now()));
        for n in 0..5 {
            let appended = client
                .post(format!("{url}/api/messaging/sessions/{session}/messages"))
                .header("x-api-key", API_KEY)
                .json(&json!({"content": format!("message {n} written under load")}))
                .send()
                .await
                .expect("the server answers");
            assert_eq!(appended.status().as_u16(), 201);
            let message = id_of(&appended.json().await.expect("JSON"), "id");
            acknowledged.lock().unwrap().push(Acknowledged::Message(
                session,
                message,
                Instant::now(),
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_write_load_restores_every_write_acknowledged_before_it_began() {
    // Arrange: a store of some size, so the export takes a while, and writers at work.
    let dir = tempfile::tempdir().expect("a temp dir");
    let (store, restored) = (dir.path().join("store"), dir.path().join("restored"));
    load_store(&store, &synthetic_export(1500, 3, 200));
    let preloaded = stored_in(&store);
    let server = Server::start(&store, &["--api-key", API_KEY]);
    let url = url_of(&server);
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..6)
        .map(|_| tokio::spawn(write_load(url.clone(), acknowledged.clone(), stop.clone())))
        .collect();
    // The writers are at work once each has had writes acknowledged.
    while acknowledged.lock().unwrap().len() < 60 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Act: back up while the writers go on, then restore into a fresh store.
    let began = Instant::now();
    let backup_url = url.clone();
    let taken = tokio::task::spawn_blocking(move || {
        backup(&["--url", &backup_url, "--api-key", API_KEY], &[])
    })
    .await
    .expect("the backup ran");
    let ended = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("a writer ran without failing");
    }
    let restore = run_with_input(
        &["import", "--data-dir", restored.to_str().expect("UTF-8")],
        &taken.stdout,
    );

    // Assert
    let lines = stderr_lines(&taken);
    assert!(taken.status.success(), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("backed up ") && lines[0].ends_with(&format!("from {url}")),
        "{lines:?}"
    );
    assert!(restore.status.success(), "{:?}", stderr_lines(&restore));
    let acknowledged = acknowledged.lock().unwrap().clone();
    let during = acknowledged
        .iter()
        .filter(|write| match write {
            Acknowledged::Session(_, at) | Acknowledged::Message(_, _, at) => {
                *at > began && *at < ended
            }
        })
        .count();
    assert!(during > 0, "no write was acknowledged while the backup ran");
    let restored = stored_in(&restored);
    let mut checked = (0, 0);
    for (session, messages) in &preloaded {
        assert_eq!(restored.get(session), Some(messages), "preloaded {session}");
    }
    for write in acknowledged {
        match write {
            Acknowledged::Session(session, at) if at < began => {
                assert!(restored.contains_key(&session), "session {session} lost");
                checked.0 += 1;
            }
            Acknowledged::Message(session, message, at) if at < began => {
                let kept = restored
                    .get(&session)
                    .is_some_and(|ids| ids.contains(&message));
                assert!(kept, "message {message} of session {session} lost");
                checked.1 += 1;
            }
            _ => {}
        }
    }
    assert!(
        checked.0 > 0 && checked.1 > 0,
        "the load wrote nothing before the backup"
    );
}

#[test]
fn the_export_needs_the_api_key_and_backup_sends_it() {
    // Arrange
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = Server::start(dir.path(), &["--api-key", API_KEY]);
    let url = url_of(&server);

    // Act
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (status, body): (u16, Value) = runtime.block_on(async {
        let answer = reqwest::get(format!("{url}/api/admin/export"))
            .await
            .expect("the server answers");
        (answer.status().as_u16(), answer.json().await.expect("JSON"))
    });
    let without_key = backup(&["--url", &url], &[]);
    let wrong_key = backup(&["--url", &url, "--api-key", "not-the-key"], &[]);
    let key_from_env = backup(&["--url", &url], &[("SESSIOND_API_KEY", API_KEY)]);
    let url_and_key_from_env = backup(
        &[],
        &[("SESSIOND_URL", &url), ("SESSIOND_API_KEY", API_KEY)],
    );

    // Assert
    assert_eq!(status, 401);
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    for refused in [&without_key, &wrong_key] {
        let lines = stderr_lines(refused);
        assert_eq!(refused.status.code(), Some(1), "{lines:?}");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("refused the backup: 401 UNAUTHORIZED"),
            "{lines:?}"
        );
        assert!(refused.stdout.is_empty());
    }
    for taken in [&key_from_env, &url_and_key_from_env] {
        assert!(taken.status.success(), "{:?}", stderr_lines(taken));
        let text = String::from_utf8_lossy(&taken.stdout);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                r#"{"format":"sessiond-export","version":2}"#,
                r#"{"end":true,"sessions":0,"messages":0}"#
            ]
        );
    }
}

/// Opens `GET /api/admin/export` and reads only the head of the answer: the export then
/// waits for a reader that never comes. A small receive buffer keeps the kernel from
/// reading the export on its behalf.
async fn stalled_export(addr: std::net::SocketAddr) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small buffer");
    let mut stream = socket.connect(addr).await.expect("connects");
    let request =
        format!("GET /api/admin/export HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {API_KEY}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("a head");
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn a_second_export_while_one_is_sent_is_refused_with_the_envelope() {
    // Arrange: a store far larger than what sockets and the server buffer (about 20 MB).
    let dir = tempfile::tempdir().expect("a temp dir");
    load_store(dir.path(), &synthetic_export(1700, 3, 4000));
    let server = Server::start(dir.path(), &["--api-key", API_KEY]);
    let (addr, url) = (server.addr(), url_of(&server));
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");

    // Act
    let (stalled, head) = runtime.block_on(stalled_export(addr));
    let second = backup(&["--url", &url, "--api-key", API_KEY], &[]);
    let (status, content_type, body) = runtime.block_on(async {
        let answer = reqwest::Client::new()
            .get(format!("{url}/api/admin/export"))
            .header("x-api-key", API_KEY)
            .send()
            .await
            .expect("the server answers");
        let content_type = answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        (
            answer.status().as_u16(),
            content_type,
            answer.json::<Value>().await.expect("JSON"),
        )
    });
    drop(stalled);
    // The slot is free once the first export's connection is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    let third = loop {
        let attempt = backup(&["--url", &url, "--api-key", API_KEY], &[]);
        if attempt.status.success() || Instant::now() > deadline {
            break attempt;
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    // Assert
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/x-ndjson"), "{head}");
    assert_eq!(status, 409);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "EXPORT_RUNNING");
    let lines = stderr_lines(&second);
    assert_eq!(second.status.code(), Some(1), "{lines:?}");
    assert!(lines[0].contains("409 EXPORT_RUNNING"), "{lines:?}");
    assert!(third.status.success(), "{:?}", stderr_lines(&third));
}

#[test]
fn a_backup_cut_short_by_the_server_stopping_exits_1_and_import_refuses_it() {
    // Arrange: a store far larger than what sockets buffer, and a backup whose output is
    // not read yet, so that it is halfway when the server stops.
    let dir = tempfile::tempdir().expect("a temp dir");
    load_store(dir.path(), &synthetic_export(1700, 3, 4000));
    let mut server = Server::start(dir.path(), &[]);
    let mut running = Command::new(BINARY)
        .args(["backup", "--url", &url_of(&server)])
        .env_remove("SESSIOND_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut stdout = running.stdout.take().expect("piped");
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("the export has begun");

    // Act
    let (code, log) = server.stop_with("TERM");
    let mut written = first.to_vec();
    stdout.read_to_end(&mut written).expect("the rest");
    let taken = running.wait_with_output().expect("the backup ends");
    let restored = tempfile::tempdir().expect("a temp dir");
    let restore = run_with_input(
        &[
            "import",
            "--data-dir",
            restored.path().to_str().expect("UTF-8"),
        ],
        &written,
    );

    // Assert
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("export cut short: the server is stopping"),
        "{log}"
    );
    let lines = stderr_lines(&taken);
    assert_eq!(taken.status.code(), Some(1), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("the backup is incomplete"), "{lines:?}");
    assert!(written.len() > 100, "some of the export came");
    // Other lines may come first: the store logs a slow write batch, say.
    let refused = stderr_lines(&restore);
    assert_eq!(restore.status.code(), Some(1), "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|line| line.starts_with("sessiond: import stopped at line")
                && line.contains("the export ends without its end line")),
        "{refused:?}"
    );
}

/// A server that answers one request with `answer` and then closes the connection.
fn answering_once(answer: &'static [u8]) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = listener.local_addr().expect("an address");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("a connection");
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(read) => request.extend_from_slice(&buffer[..read]),
            }
        }
        let _ = stream.write_all(answer);
    });
    addr
}

#[test]
fn a_backup_that_ends_without_the_end_line_exits_1_and_says_so() {
    // Arrange: one answer broken off inside its chunked body, one that ends cleanly but
    // without the export's end line.
    let broken = answering_once(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n29\r\n{\"format\":\"sessiond-export\",\"version\":2}\n\r\n",
    );
    let unended = answering_once(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n29\r\n{\"format\":\"sessiond-export\",\"version\":2}\n\r\n0\r\n\r\n",
    );

    // Act
    let broken = backup(&["--url", &format!("http://{broken}")], &[]);
    let unended = backup(&["--url", &format!("http://{unended}")], &[]);

    // Assert
    for (output, why) in [(&broken, "broke off"), (&unended, "before its end line")] {
        let lines = stderr_lines(output);
        assert_eq!(output.status.code(), Some(1), "{lines:?}");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("the backup is incomplete") && lines[0].contains(why),
            "{lines:?}"
        );
    }
}

#[test]
fn a_backup_of_a_closed_port_or_an_https_url_fails_in_one_line() {
    // Arrange: a port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.local_addr().expect("an address")
    };

    // Act
    let refused = backup(&["--url", &format!("http://{closed}")], &[]);
    let https = backup(&["--url", "https://sessions.example.com"], &[]);

    // Assert
    let lines = stderr_lines(&refused);
    assert_eq!(refused.status.code(), Some(1), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("cannot connect to"), "{lines:?}");
    let lines = stderr_lines(&https);
    assert_eq!(https.status.code(), Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("plain http:// only") && lines[0].contains("curl"),
        "{lines:?}"
    );
    assert!(refused.stdout.is_empty() && https.stdout.is_empty());
}

#[test]
fn a_backup_on_a_terminal_draws_its_progress_and_ends_with_its_summary() {
    // Arrange
    let dir = tempfile::tempdir().expect("a temp dir");
    load_store(dir.path(), &synthetic_export(20, 2, 100));
    let server = Server::start(dir.path(), &[]);
    let file = dir.path().join("backup.ndjson");
    let command = format!(
        "'{BINARY}' backup --url {} > '{}'",
        url_of(&server),
        file.display()
    );

    // Act: stdout goes to the file, so the terminal shows stderr only.
    let shown = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("SESSIOND_API_KEY")
        .output()
        .expect("script (util-linux) runs");

    // Assert
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("backing up sessions"), "{shown:?}");
    assert!(
        shown.contains("backed up 20 sessions, 40 messages ("),
        "{shown:?}"
    );
    let written = std::fs::read_to_string(&file).expect("the backup");
    assert!(
        written.ends_with("{\"end\":true,\"sessions\":20,\"messages\":40}\n"),
        "{written}"
    );
}
