//! The router's own errors (unknown route, wrong method, bad JSON, content type, body size) and
//! the API key: always the JSON error envelope with the right status, never a bare text body.

use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    embedded_app, new_id, spawn_app, spawn_app_with, Api, TestApp, API, API_KEY_HEADER,
    DEFAULT_MAX_BODY_BYTES,
};

const API_KEY: &str = "s3cret-key";

/// A create-session body padded (with an ignored unknown field) to exactly `len` bytes.
fn session_body_of_len(len: usize) -> String {
    let prefix = format!(
        r#"{{"agentId":"{}","userId":"{}","pad":""#,
        new_id(),
        new_id()
    );
    let suffix = r#""}"#;
    let padding = len - prefix.len() - suffix.len();
    let body = format!("{prefix}{}{suffix}", "x".repeat(padding));
    assert_eq!(body.len(), len);
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_route_is_a_404_not_found_envelope() {
    // Arrange
    let app = spawn_app().await;
    let id = new_id();
    let requests = [
        (Method::GET, "/".to_owned()),
        (Method::GET, "/nope".to_owned()),
        (Method::GET, format!("{API}/nope")),
        (Method::POST, format!("{API}/nope")),
        (Method::GET, format!("{API}/sessions/{id}/nope")),
        (
            Method::POST,
            format!("{API}/sessions/{id}/messages/{id}/thread/more"),
        ),
        (Method::DELETE, "/api/other/sessions".to_owned()),
    ];

    for (method, path) in requests {
        // Act
        let reply = app.send(app.request(method.clone(), &path)).await;

        // Assert
        assert_eq!(
            reply.status.as_u16(),
            404,
            "{method} {path}: {}",
            reply.text
        );
        reply.expect_error(404, "NOT_FOUND");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_path_without_the_api_prefix_is_404_with_a_hint_to_the_prefixed_path() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let sessions = app.send(app.request(Method::GET, "/sessions")).await;
    let elsewhere = app.send(app.request(Method::GET, "/favicon.ico")).await;

    // Assert
    let error = sessions.expect_error(404, "NOT_FOUND");
    let details = error["details"].as_str().expect("details");
    assert!(
        details.contains("did you mean /api/messaging/sessions?"),
        "{details}"
    );
    let error = elsewhere.expect_error(404, "NOT_FOUND");
    let details = error["details"].as_str().expect("details");
    assert!(details.contains("/api/openapi.json"), "{details}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_method_on_an_existing_route_is_a_405_envelope() {
    // Arrange
    let app = spawn_app().await;
    let id = new_id();
    let requests = [
        (Method::PUT, "/sessions".to_owned()),
        (Method::DELETE, "/sessions".to_owned()),
        (Method::PATCH, "/sessions/health".to_owned()),
        (Method::PUT, format!("/sessions/{id}")),
        (Method::POST, format!("/sessions/{id}")),
        (Method::GET, format!("/sessions/{id}/renew")),
        (Method::GET, format!("/sessions/{id}/heartbeat")),
        (Method::POST, format!("/sessions/{id}/timeout")),
        (Method::DELETE, format!("/sessions/{id}/messages")),
        (Method::DELETE, format!("/sessions/{id}/messages/{id}")),
        (Method::POST, format!("/sessions/{id}/messages/{id}/thread")),
    ];

    for (method, path) in requests {
        // Act
        let reply = app.send(app.api(method.clone(), &path)).await;

        // Assert
        assert_eq!(
            reply.status.as_u16(),
            405,
            "{method} {path}: {}",
            reply.text
        );
        reply.expect_error(405, "METHOD_NOT_ALLOWED");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_is_invalid_json() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;
    let bodies = [
        "{not json",
        r#"{"agentId": "#,
        "",
        "{\"content\": \"hi\"} trailing",
    ];

    for body in bodies {
        // Act
        let create = app
            .post_raw("/sessions", Some("application/json"), body.to_owned())
            .await;
        let message = app
            .post_raw(
                &format!("/sessions/{}/messages", session.id),
                Some("application/json"),
                body.to_owned(),
            )
            .await;
        let patch = app
            .call(
                Method::PATCH,
                &format!("/sessions/{}/timeout", session.id),
                Some("application/json"),
                Some(body.to_owned()),
            )
            .await;

        // Assert
        create.expect_error(400, "INVALID_JSON");
        message.expect_error(400, "INVALID_JSON");
        patch.expect_error(400, "INVALID_JSON");
    }
    let info = app.get_session(&session.id).await.expect(200);
    assert_eq!(info["messageCount"], json!(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn json_that_is_not_an_object_is_invalid_json() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;

    for body in [
        "[]",
        r#"[{"content": "hi"}]"#,
        "5",
        r#""text""#,
        "null",
        "true",
    ] {
        // Act
        let create = app
            .post_raw("/sessions", Some("application/json"), body.to_owned())
            .await;
        let message = app
            .post_raw(
                &format!("/sessions/{}/messages", session.id),
                Some("application/json"),
                body.to_owned(),
            )
            .await;

        // Assert
        create.expect_error(400, "INVALID_JSON");
        message.expect_error(400, "INVALID_JSON");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn body_without_a_json_content_type_is_415() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;
    let session_body = json!({"agentId": new_id(), "userId": new_id()}).to_string();
    let message_body = json!({"content": "hi"}).to_string();

    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        // Act
        let create = app
            .post_raw("/sessions", content_type, session_body.clone())
            .await;
        let message = app
            .post_raw(
                &format!("/sessions/{}/messages", session.id),
                content_type,
                message_body.clone(),
            )
            .await;
        let patch = app
            .call(
                Method::PATCH,
                &format!("/sessions/{}/timeout", session.id),
                content_type,
                Some(r#"{"timeoutMinutes": 10}"#.to_owned()),
            )
            .await;

        // Assert
        create.expect_error(415, "UNSUPPORTED_MEDIA_TYPE");
        message.expect_error(415, "UNSUPPORTED_MEDIA_TYPE");
        patch.expect_error(415, "UNSUPPORTED_MEDIA_TYPE");
    }
    let listing = app.list_sessions("status=all").await.expect(200);
    assert_eq!(listing["total"], json!(1), "nothing was created");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_content_type_with_parameters_is_accepted() {
    // Arrange
    let app = embedded_app().await;
    let body = json!({"agentId": new_id(), "userId": new_id()}).to_string();

    for content_type in [
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
    ] {
        // Act
        let reply = app
            .post_raw("/sessions", Some(content_type), body.clone())
            .await;

        // Assert
        reply.expect(201);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn posts_without_a_body_need_no_content_type() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;

    // Act
    let renew = app.renew(&session.id).await;
    let heartbeat = app.heartbeat(&session.id).await;

    // Assert
    renew.expect(200);
    heartbeat.expect(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn body_of_exactly_64_kib_is_accepted_and_one_byte_more_is_413() {
    // Arrange
    let app = spawn_app().await;
    let at_limit = session_body_of_len(DEFAULT_MAX_BODY_BYTES);
    let over_limit = session_body_of_len(DEFAULT_MAX_BODY_BYTES + 1);
    let far_over = session_body_of_len(200_000);

    // Act
    let accepted = app
        .post_raw("/sessions", Some("application/json"), at_limit)
        .await;
    // On the pooled client: the 413 must close the connection, since its body was left
    // unread, so the next request on this client still works.
    let rejected = app
        .post_raw("/sessions", Some("application/json"), over_limit)
        .await;
    let rejected_far = app.post_raw_unpooled("/sessions", far_over).await;

    // Assert
    accepted.expect(201);
    assert_eq!(
        rejected.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    rejected.expect_error(413, "PAYLOAD_TOO_LARGE");
    rejected_far.expect_error(413, "PAYLOAD_TOO_LARGE");
    let listing = app.list_sessions("").await.expect(200);
    assert_eq!(listing["total"], json!(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_smaller_configured_body_limit_is_enforced_on_every_route() {
    // Arrange
    let app = spawn_app_with(|config| config.max_body_bytes = 1024).await;
    let session = app.create_session().await;
    let message_at_limit = {
        let overhead = json!({"content": ""}).to_string().len();
        json!({"content": "m".repeat(1024 - overhead)}).to_string()
    };
    let message_over_limit = json!({"content": "m".repeat(1500)}).to_string();
    let messages_path = format!("/sessions/{}/messages", session.id);

    // Act
    let create_at_limit = app
        .post_raw(
            "/sessions",
            Some("application/json"),
            session_body_of_len(1024),
        )
        .await;
    let create_over_limit = app
        .post_raw_unpooled("/sessions", session_body_of_len(1025))
        .await;
    let message_ok = app
        .post_raw(&messages_path, Some("application/json"), message_at_limit)
        .await;
    let message_too_big = app
        .post_raw_unpooled(&messages_path, message_over_limit)
        .await;
    let patch_too_big = app
        .send(
            app.api_unpooled(Method::PATCH, &format!("/sessions/{}/timeout", session.id))
                .json(&json!({"pad": "p".repeat(2000)})),
        )
        .await;

    // Assert
    create_at_limit.expect(201);
    create_over_limit.expect_error(413, "PAYLOAD_TOO_LARGE");
    message_ok.expect(201);
    message_too_big.expect_error(413, "PAYLOAD_TOO_LARGE");
    patch_too_big.expect_error(413, "PAYLOAD_TOO_LARGE");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_is_required_on_every_route_when_configured() {
    // Arrange
    let app = spawn_app_with(|config| config.api_key = Some(API_KEY.to_owned())).await;
    let session = app.create_session().await;
    let body = json!({"agentId": new_id(), "userId": new_id()});
    let requests = [
        app.client.get(app.url(&format!("{API}/sessions"))),
        app.client
            .get(app.url(&format!("{API}/sessions/{}", session.id))),
        app.client
            .post(app.url(&format!("{API}/sessions")))
            .json(&body),
        app.client
            .post(app.url(&format!("{API}/sessions")))
            .header(CONTENT_TYPE, "application/json")
            .body("{not json"),
        app.client
            .delete(app.url(&format!("{API}/sessions/{}", session.id))),
        app.client.get(app.url(&format!("{API}/nope"))),
        app.client.get(app.url("/nope")),
        app.client
            .get(app.url(&format!("{API}/sessions")))
            .header(API_KEY_HEADER, "wrong"),
        app.client
            .get(app.url(&format!("{API}/sessions")))
            .header(API_KEY_HEADER, ""),
        app.client
            .get(app.url(&format!("{API}/sessions")))
            .header(API_KEY_HEADER, API_KEY.to_uppercase()),
        app.client
            .get(app.url("/nope"))
            .header(API_KEY_HEADER, "wrong"),
    ];

    for request in requests {
        // Act
        let reply = app.send(request).await;

        // Assert
        reply.expect_error(401, "UNAUTHORIZED");
    }
    let still_there = app.get_session(&session.id).await.expect(200);
    assert_eq!(still_there["sessionId"], json!(session.id));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_right_api_key_reaches_the_routes() {
    // Arrange
    let app = spawn_app_with(|config| config.api_key = Some(API_KEY.to_owned())).await;

    // Act
    let created = app
        .send(
            app.client
                .post(app.url(&format!("{API}/sessions")))
                .header("x-api-key", API_KEY)
                .json(&json!({"agentId": new_id(), "userId": new_id()})),
        )
        .await;
    let unknown = app.get("/nope").await;

    // Assert
    created.expect(201);
    unknown.expect_error(404, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_needs_no_api_key() {
    // Arrange
    let app = spawn_app_with(|config| config.api_key = Some(API_KEY.to_owned())).await;
    app.create_session().await;

    // Act
    let health = app
        .send(app.client.get(app.url(&format!("{API}/sessions/health"))))
        .await
        .expect(200);

    // Assert
    assert_eq!(health["status"], json!("healthy"));
    assert_eq!(health["activeSessions"], json!(1));
}

/// Sends one HTTP/1.1 request with a chunked body over a raw socket (reqwest, as configured
/// here, always sends a Content-Length) and returns the status and the body text.
async fn post_chunked(app: &TestApp, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(app.addr)
        .await
        .expect("the server accepts connections");
    let mut request = format!(
        "POST {API}{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.addr
    );
    for chunk in body.as_bytes().chunks(4096) {
        request.push_str(&format!("{:x}\r\n", chunk.len()));
        request.push_str(std::str::from_utf8(chunk).expect("the test body is ASCII"));
        request.push_str("\r\n");
    }
    request.push_str("0\r\n\r\n");
    // The server may answer 413 and close before reading everything; that is fine.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    (status, response)
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_bodies_are_accepted_and_limited_like_any_other() {
    // Arrange
    let app = spawn_app().await;
    let small = session_body_of_len(300);
    let oversized = session_body_of_len(DEFAULT_MAX_BODY_BYTES + 1);

    // Act
    let (small_status, _) = post_chunked(&app, "/sessions", &small).await;
    let (big_status, big_response) = post_chunked(&app, "/sessions", &oversized).await;

    // Assert
    assert_eq!(small_status, 201);
    assert_eq!(big_status, 413, "{big_response}");
    assert!(big_response.contains("PAYLOAD_TOO_LARGE"), "{big_response}");
    let listing = app.list_sessions("").await.expect(200);
    assert_eq!(listing["total"], json!(1));
}
