//! Connection limits and CORS: a silent or slow client cannot hold a connection, the
//! connection cap holds, and browser origins get exactly what `--cors-origin` allows.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, Api, API, DEFAULT_MAX_HEAD_BYTES};

/// Reads until the server closes the connection (or `limit` passes); returns what it sent
/// and how long that took.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(limit))
        .expect("a read timeout can be set");
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    (received, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    // Arrange
    let app = spawn_app_with(|c| c.header_read_timeout_seconds = 1).await;
    let addr = app.addr;

    // Act
    let (received, took) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connects");
        stream
            .write_all(b"GET /api/messaging/sessions/health HTTP/1.1\r\nHost: x\r\n")
            .expect("writes half a request head");
        read_until_closed(&mut stream, Duration::from_secs(10))
    })
    .await
    .expect("the client thread ends");

    // Assert
    assert!(took < Duration::from_secs(5), "held for {took:?}");
    assert!(
        !String::from_utf8_lossy(&received).contains("200 OK"),
        "the half request was served"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_moves_no_bytes_is_closed_after_the_idle_timeout() {
    // Arrange: a body announced but never sent.
    let app = spawn_app_with(|c| {
        c.idle_timeout_seconds = 1;
        c.header_read_timeout_seconds = 1;
    })
    .await;
    let addr = app.addr;

    // Act
    let took = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connects");
        stream
            .write_all(
                b"POST /api/messaging/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            )
            .expect("writes a head and one byte of body");
        read_until_closed(&mut stream, Duration::from_secs(10)).1
    })
    .await
    .expect("the client thread ends");

    // Assert
    assert!(took < Duration::from_secs(5), "held for {took:?}");
}

/// Whether the server has closed `stream` (it reads an end of stream within a moment).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("a read timeout can be set");
    match stream.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        Ok(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_cap_a_new_connection_closes_the_one_waiting_longest_for_a_request() {
    // Arrange: three connections at a time, taken by a client that was served and keeps
    // its connection, then one trickling a body, then a silent one; the timeouts are far
    // off, so only the cap's own rule can free a slot.
    let app = spawn_app_with(|c| {
        c.max_connections = 3;
        c.max_streams = 1;
        c.header_read_timeout_seconds = 60;
        c.request_read_timeout_seconds = 60;
        c.idle_timeout_seconds = 60;
    })
    .await;
    let mut kept_alive = TcpStream::connect(app.addr).expect("the first connection is accepted");
    kept_alive
        .write_all(b"GET /api/messaging/sessions/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("writes a request");
    kept_alive
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout can be set");
    let mut answer = [0u8; 4096];
    assert!(kept_alive.read(&mut answer).expect("an answer") > 0);
    let mut trickling = TcpStream::connect(app.addr).expect("the second connection is accepted");
    trickling
        .write_all(
            b"POST /api/messaging/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .expect("writes a head and a byte of body");
    std::thread::sleep(Duration::from_millis(100));
    let mut silent = TcpStream::connect(app.addr).expect("the third connection is accepted");
    std::thread::sleep(Duration::from_millis(100));

    // Act
    let health = app.get("/sessions/health").await;

    // Assert
    assert_eq!(health.status, 200, "{}", health.text);
    assert!(
        closed_by_server(&mut trickling),
        "the connection waiting longest was kept"
    );
    assert!(
        !closed_by_server(&mut silent),
        "a newer waiting connection was closed too"
    );
    assert!(
        !closed_by_server(&mut kept_alive),
        "a served client's idle connection went before a silent one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_cap_connections_being_answered_are_kept_and_a_new_one_waits() {
    // Arrange: two connections at a time, both being answered: an event stream and a
    // request held for the agent's reply (up to 3 s).
    let app = spawn_app_with(|c| {
        c.max_connections = 2;
        c.max_streams = 1;
        c.reply_timeout_seconds = 3;
    })
    .await;
    let session = app.create_session().await;
    let mut stream = app
        .api(Method::GET, &format!("/sessions/{}/events", session.id))
        .send()
        .await
        .expect("a stream opens");
    assert_eq!(stream.status(), 200);
    let held = {
        let client = app.api_unpooled(Method::POST, &format!("/sessions/{}/messages", session.id));
        tokio::spawn(
            client
                .json(&json!({"content": "hello", "transport": "http"}))
                .send(),
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = app.url(&format!("{API}/sessions/health"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .expect("a client");

    // Act
    let while_held = client.get(&url).send().await;
    let answered = held
        .await
        .expect("the held request ends")
        .expect("it is answered");
    let after = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(response) = client.get(&url).send().await {
                return response.status();
            }
        }
    })
    .await;

    // Assert
    assert!(
        while_held.is_err(),
        "a third connection was served while both were being answered"
    );
    assert_eq!(answered.status(), 201);
    assert_eq!(after.expect("served once the held request ended"), 200);
    let stream_open = match tokio::time::timeout(Duration::from_millis(200), stream.chunk()).await {
        Err(_) | Ok(Ok(Some(_))) => true,
        Ok(Ok(None) | Err(_)) => false,
    };
    assert!(stream_open, "the event stream was closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_origin_gets_cors_headers_also_on_errors() {
    // Arrange
    let origin = "https://app.example.com";
    let app = spawn_app_with(|c| c.cors_origins = vec![origin.to_owned()]).await;

    // Act
    let preflight = app
        .client
        .request(Method::OPTIONS, app.url(&format!("{API}/sessions")))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type, x-api-key")
        .send()
        .await
        .expect("the preflight is answered");
    let not_found = app
        .client
        .get(app.url(&format!("{API}/sessions/{}", uuid::Uuid::new_v4())))
        .header("Origin", origin)
        .send()
        .await
        .expect("answered");

    // Assert
    assert_eq!(preflight.status(), 200);
    assert_eq!(preflight.headers()["access-control-allow-origin"], origin);
    assert_eq!(not_found.status(), 404);
    assert_eq!(not_found.headers()["access-control-allow-origin"], origin);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_origin_is_refused_with_the_envelope_and_no_cors_by_default() {
    // Arrange
    let configured =
        spawn_app_with(|c| c.cors_origins = vec!["https://app.example.com".to_owned()]).await;
    let default = spawn_app().await;
    let preflight = |app: &crate::helpers::TestApp| {
        app.client
            .request(Method::OPTIONS, app.url(&format!("{API}/sessions")))
            .header("Origin", "https://evil.example.com")
            .header("Access-Control-Request-Method", "POST")
            .send()
    };

    // Act
    let refused = preflight(&configured).await.expect("answered");
    let plain = default
        .client
        .get(default.url(&format!("{API}/sessions/health")))
        .header("Origin", "https://app.example.com")
        .send()
        .await
        .expect("answered");

    // Assert
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.expect("the envelope");
    assert_eq!(body["error"]["code"], "CORS_FORBIDDEN");
    assert!(plain.headers().get("access-control-allow-origin").is_none());
}

/// A connection waiting on the server — a held reply, a reply stream — is not idle: with a
/// reply timeout longer than the idle timeout, both end with their answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_wait_longer_than_the_idle_timeout_still_gets_its_answer() {
    // Arrange
    let app = spawn_app_with(|c| {
        c.idle_timeout_seconds = 1;
        c.header_read_timeout_seconds = 1;
        c.reply_timeout_seconds = 3;
    })
    .await;
    let session = app.create_session().await;
    let path = format!("{API}/sessions/{}/messages", session.id);

    // Act
    let held = app
        .post(
            &format!("/sessions/{}/messages", session.id),
            &json!({"content": "q", "transport": "http"}),
        )
        .await;
    let streamed = app
        .request(Method::POST, &path)
        .json(&json!({"content": "q2", "transport": "sse"}))
        .send()
        .await
        .expect("the stream answers")
        .text()
        .await
        .expect("the stream ends normally, not cut");

    // Assert
    let held = held.expect(201);
    assert_eq!(held["agentResponse"], Value::Null);
    assert!(streamed.contains("event: user_message"), "{streamed}");
    assert!(
        streamed.contains("event: done\ndata: {\"reason\":\"timeout\"}"),
        "{streamed}"
    );
}

/// A connection that sends nothing at all is closed after the header timeout from accept,
/// not held for the (longer) idle timeout; so is an idle keep-alive connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_connection_is_closed_after_the_header_timeout_from_accept() {
    // Arrange
    let app = spawn_app_with(|c| {
        c.header_read_timeout_seconds = 1;
        c.idle_timeout_seconds = 60;
    })
    .await;
    let addr = app.addr;

    // Act
    let (silent, kept_alive) = tokio::task::spawn_blocking(move || {
        let mut silent = TcpStream::connect(addr).expect("connects");
        let silent = read_until_closed(&mut silent, Duration::from_secs(20)).1;
        let mut kept_alive = TcpStream::connect(addr).expect("connects");
        kept_alive
            .write_all(b"GET /api/messaging/sessions/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("writes a request");
        let (answer, kept_alive) = read_until_closed(&mut kept_alive, Duration::from_secs(20));
        assert!(String::from_utf8_lossy(&answer).contains("200 OK"));
        (silent, kept_alive)
    })
    .await
    .expect("the client thread ends");

    // Assert
    assert!(
        silent < Duration::from_secs(5),
        "held silent for {silent:?}"
    );
    assert!(
        kept_alive < Duration::from_secs(5),
        "held idle for {kept_alive:?}"
    );
}

/// A body trickled in a byte at a time moves bytes well within the idle timeout, and is
/// still cut off at the whole-request deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_body_is_cut_off_at_the_request_read_deadline() {
    // Arrange
    let app = spawn_app_with(|c| {
        c.header_read_timeout_seconds = 1;
        c.request_read_timeout_seconds = 2;
        c.idle_timeout_seconds = 60;
    })
    .await;
    let addr = app.addr;

    // Act
    let (sent, took, answer) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).expect("connects");
        stream
            .write_all(
                b"POST /api/messaging/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
            )
            .expect("writes a head");
        let (mut sent, mut answer) = (0, Vec::new());
        while started.elapsed() < Duration::from_secs(20) && stream.write_all(b" ").is_ok() {
            sent += 1;
            std::thread::sleep(Duration::from_millis(200));
            let mut received = [0u8; 4096];
            stream.set_nonblocking(true).expect("nonblocking");
            let read = stream.read(&mut received);
            stream.set_nonblocking(false).expect("blocking");
            match read {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&received[..n]),
                Err(_) => {}
            }
        }
        answer.extend(read_until_closed(&mut stream, Duration::from_secs(5)).0);
        (sent, started.elapsed(), String::from_utf8_lossy(&answer).into_owned())
    })
    .await
    .expect("the client thread ends");

    // Assert
    assert!(sent < 100, "the whole body went through ({sent} bytes)");
    assert!(took < Duration::from_secs(6), "trickled for {took:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"REQUEST_TIMEOUT""#), "{answer}");
}

/// Bodies being read share one budget: once requests announcing bodies have taken it,
/// another request with a body is refused with 503 at once, and requests without a body
/// are served.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_past_the_in_flight_budget_are_refused_with_503() {
    // Arrange: a 1 MiB budget, taken by 16 requests that announce 64 KiB and send none.
    let app = spawn_app_with(|c| c.max_inflight_body_mb = 1).await;
    let addr = app.addr;
    let mut stuck = Vec::new();
    for _ in 0..16 {
        let mut stream = TcpStream::connect(addr).expect("connects");
        stream
            .write_all(
                b"POST /api/messaging/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n",
            )
            .expect("writes a head");
        stuck.push(stream);
    }

    // Act: the reservations are made when the heads are read; retry until they are.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let reply = app.try_create_session(&json!({})).await;
        if reply.status.as_u16() == 503 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let health = app.get("/sessions/health").await;
    drop(stuck);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let reply = app
            .try_create_session(
                &json!({"agentId": crate::helpers::new_id(), "userId": crate::helpers::new_id()}),
            )
            .await;
        if reply.status.as_u16() != 503 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Assert
    refused.expect_error(503, "SERVER_BUSY");
    health.expect(200);
    after.expect(201);
}

/// Sends `request` on a connection of its own and returns the status and the JSON body of
/// the answer.
fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    // The server may answer and close before it has read all of a huge request.
    let _ = stream.write_all(request);
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10));
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_head_or_a_request_hyper_cannot_parse_gets_the_envelope() {
    // Arrange
    let app = spawn_app().await;
    let addr = app.addr;
    let with_header = |size: usize| {
        let mut request = b"GET /api/messaging/sessions/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', size));
        request.extend_from_slice(b"\r\n\r\n");
        request
    };
    let mut long_uri = b"GET /api/messaging/sessions/health?q=".to_vec();
    long_uri.extend(std::iter::repeat_n(b'a', 70_000));
    long_uri.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");

    // Act
    let answers = tokio::task::spawn_blocking(move || {
        [
            raw_exchange(addr, &with_header(1_000_000)),
            raw_exchange(addr, &with_header(100_000)),
            raw_exchange(addr, &with_header(66_000)),
            raw_exchange(addr, &long_uri),
            raw_exchange(addr, b"NOT HTTP AT ALL\r\n\r\n"),
            raw_exchange(addr, &with_header(60_000)),
        ]
    })
    .await
    .expect("the client thread ends");

    // Assert
    let codes: Vec<(u16, Value)> = answers
        .iter()
        .map(|(status, body)| (*status, body["error"]["code"].clone()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (431, json!("HEADERS_TOO_LARGE")),
            (431, json!("HEADERS_TOO_LARGE")),
            (431, json!("HEADERS_TOO_LARGE")),
            (414, json!("URI_TOO_LONG")),
            (400, json!("INVALID_REQUEST")),
            (200, Value::Null),
        ]
    );
    assert_eq!(answers[5].1["status"], json!("healthy"));
}

/// The cap counts the head the client sent: the request id the server adds to a request
/// without one does not push a head at the cap over it.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_at_the_cap_is_answered_and_one_byte_over_it_is_not() {
    // Arrange: the request line and headers of `head(padding)` come to 84 + padding bytes
    // as the cap counts them (each header's name, value and 4 bytes of separators; the
    // request line's method, target and 12; the blank line's 2).
    let app = spawn_app().await;
    let addr = app.addr;
    let head = |padding: usize| {
        let mut request = b"GET /api/messaging/sessions/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', padding));
        request.extend_from_slice(b"\r\n\r\n");
        request
    };
    let at_cap = DEFAULT_MAX_HEAD_BYTES - 84;

    // Act
    let (at, over) = tokio::task::spawn_blocking(move || {
        (
            raw_exchange(addr, &head(at_cap)),
            raw_exchange(addr, &head(at_cap + 1)),
        )
    })
    .await
    .expect("the client thread ends");

    // Assert
    assert_eq!(at.0, 200, "{}", at.1);
    assert_eq!(
        (over.0, &over.1["error"]["code"]),
        (431, &json!("HEADERS_TOO_LARGE"))
    );
}

/// A client that stops reading an answer it asked for (here an event stream) is idle: the
/// server's writes then wait on the client, and the connection is closed after the idle
/// timeout instead of being held for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_its_stream_is_closed_after_the_idle_timeout() {
    // Arrange: a stream nobody reads, and enough events to fill the socket's buffers.
    let app = std::sync::Arc::new(
        spawn_app_with(|c| {
            c.idle_timeout_seconds = 1;
            c.header_read_timeout_seconds = 1;
        })
        .await,
    );
    let session = app.create_session().await;
    let mut reader = TcpStream::connect(app.addr).expect("connects");
    reader
        .write_all(
            format!(
                "GET {API}/events?agentId={} HTTP/1.1\r\nHost: x\r\n\r\n",
                session.agent_id
            )
            .as_bytes(),
        )
        .expect("asks for the stream");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Act
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..16 {
        let (app, id) = (app.clone(), session.id.clone());
        writers.spawn(async move {
            for n in 0..150 {
                let content = format!("{writer}-{n}-{}", "x".repeat(3900));
                app.post_message(&id, &json!({ "content": content }))
                    .await
                    .expect(201);
            }
        });
    }
    writers.join_all().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let closed = tokio::task::spawn_blocking(move || {
        reader
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("a read timeout can be set");
        let mut buffer = vec![0; 1 << 16];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            match reader.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => {}
                // Nothing more within the read timeout: the server still holds it open.
                Err(_) => return false,
            }
        }
        false
    })
    .await
    .expect("the reader thread ends");

    // Assert
    assert!(
        closed,
        "the connection of a reader that stopped reading is still open"
    );
}
