//! POST and GET /sessions/{id}/messages, GET one message and GET its thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::helpers::{
    assert_canonical_uuid, embedded_app, field_str, field_u64, ids, millis, new_id, seqs,
    spawn_app, spawn_app_with_clock, Api, MINUTE_MS, T0_MS,
};

const MESSAGE_FIELDS: [&str; 10] = [
    "id",
    "sessionId",
    "seq",
    "parentId",
    "content",
    "authorId",
    "isAgent",
    "createdAt",
    "metadata",
    "attachments",
];

/// Descending `n..=m` as a vector, the order in which a page lists messages.
fn newest_first(oldest: u64, newest: u64) -> Vec<u64> {
    (oldest..=newest).rev().collect()
}

fn page_seqs(page: &Value) -> Vec<u64> {
    seqs(&page["messages"])
}

// ---------------------------------------------------------------------------------------------
// POST /sessions/{id}/messages

#[tokio::test(flavor = "multi_thread")]
async fn message_response_has_every_documented_field() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let metadata = json!({"lang": "en", "n": [1, 2]});

    // Act
    let message = app
        .post_message(
            &session.id,
            &json!({"content": "Hello", "metadata": metadata}),
        )
        .await
        .expect(201);

    // Assert
    for field in MESSAGE_FIELDS {
        assert!(
            message.get(field).is_some(),
            "Message lacks {field}: {message}"
        );
    }
    let id = field_str(&message, "id");
    assert_canonical_uuid(id);
    assert_eq!(
        Uuid::parse_str(id).expect("a UUID").get_version_num(),
        7,
        "message ids are UUID v7"
    );
    assert_eq!(message["sessionId"], json!(session.id));
    assert_eq!(message["seq"], json!(1));
    assert_eq!(message["parentId"], Value::Null);
    assert_eq!(message["content"], json!("Hello"));
    assert_eq!(message["authorId"], json!(session.user_id));
    assert_eq!(message["isAgent"], json!(false));
    assert!(millis(&message["createdAt"]) >= millis(&session.body["createdAt"]));
    let mut shown = metadata.clone();
    shown["sessionId"] = json!(session.id);
    shown["agentId"] = json!(session.agent_id);
    shown["userId"] = json!(session.user_id);
    assert_eq!(message["metadata"], shown);
    assert_eq!(message["attachments"], json!([]));
    let status = &message["sessionStatus"];
    millis(&status["expiresAt"]);
    assert!(status["renewalCount"].is_u64(), "sessionStatus: {status}");
    assert!(status["wasRenewed"].is_boolean(), "sessionStatus: {status}");
    assert_eq!(status["isNearExpiration"], json!(false));
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_get_consecutive_seqs_and_chain_to_the_newest() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;

    // Act
    let messages = app.append_many(&session.id, 3).await;

    // Assert
    let seqs: Vec<u64> = messages.iter().map(|m| field_u64(m, "seq")).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(messages[0]["parentId"], Value::Null);
    assert_eq!(messages[1]["parentId"], messages[0]["id"]);
    assert_eq!(messages[2]["parentId"], messages[1]["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn seqs_are_counted_per_session() {
    // Arrange
    let app = spawn_app().await;
    let first = app.create_session().await;
    let second = app.create_session().await;
    app.append_many(&first.id, 2).await;

    // Act
    let message = app.append(&second.id, "hi").await;

    // Assert
    assert_eq!(message["seq"], json!(1));
    assert_eq!(message["parentId"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_parent_starts_a_branch_and_the_default_follows_the_newest() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let root = app.append(&session.id, "root").await;
    app.append(&session.id, "first answer").await;

    // Act
    let edit = app
        .post_message(
            &session.id,
            &json!({"content": "edited answer", "parentId": root["id"]}),
        )
        .await
        .expect(201);
    let next = app.append(&session.id, "after the edit").await;

    // Assert
    assert_eq!(edit["parentId"], root["id"]);
    assert_eq!(edit["seq"], json!(3));
    assert_eq!(next["parentId"], edit["id"]);
    assert_eq!(next["seq"], json!(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn parent_id_accepts_any_uuid_form() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let root = app.append(&session.id, "root").await;
    app.append(&session.id, "second").await;
    let root_id = field_str(&root, "id");

    // Act
    let reply = app
        .post_message(
            &session.id,
            &json!({"content": "branch", "parentId": root_id.to_uppercase()}),
        )
        .await
        .expect(201);

    // Assert
    assert_eq!(reply["parentId"], json!(root_id));
}

#[tokio::test(flavor = "multi_thread")]
async fn parent_outside_the_session_is_invalid_parent() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let other = app.create_session().await;
    app.append(&session.id, "here").await;
    let foreign = app.append(&other.id, "there").await;

    for parent in [foreign["id"].clone(), json!(new_id())] {
        // Act
        let reply = app
            .post_message(
                &session.id,
                &json!({"content": "reply", "parentId": parent}),
            )
            .await;

        // Assert
        reply.expect_error(400, "INVALID_PARENT");
    }
    let info = app.get_session(&session.id).await.expect(200);
    assert_eq!(
        info["messageCount"],
        json!(1),
        "a rejected message is not stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_parent_id_is_invalid_uuid() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;

    // Act
    let reply = app
        .post_message(
            &session.id,
            &json!({"content": "reply", "parentId": "msg-1"}),
        )
        .await;

    // Assert
    reply.expect_error(400, "INVALID_UUID");
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_author_is_marked_as_agent() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;

    // Act
    let reply = app
        .post_message(
            &session.id,
            &json!({"content": "I am the agent", "authorId": session.agent_id.to_uppercase()}),
        )
        .await
        .expect(201);
    let user_reply = app
        .post_message(
            &session.id,
            &json!({"content": "I am the user", "authorId": session.user_id}),
        )
        .await
        .expect(201);

    // Assert
    assert_eq!(reply["authorId"], json!(session.agent_id));
    assert_eq!(reply["isAgent"], json!(true));
    assert_eq!(user_reply["authorId"], json!(session.user_id));
    assert_eq!(user_reply["isAgent"], json!(false));
}

#[tokio::test(flavor = "multi_thread")]
async fn stranger_author_is_forbidden() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let other = app.create_session().await;

    for stranger in [new_id(), other.user_id.clone(), other.agent_id.clone()] {
        // Act
        let reply = app
            .post_message(&session.id, &json!({"content": "hi", "authorId": stranger}))
            .await;

        // Assert
        reply.expect_error(403, "FORBIDDEN_AUTHOR");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_author_id_is_invalid_uuid() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;

    // Act
    let reply = app
        .post_message(&session.id, &json!({"content": "hi", "authorId": "user-1"}))
        .await;

    // Assert
    reply.expect_error(400, "INVALID_UUID");
}

#[tokio::test(flavor = "multi_thread")]
async fn content_must_be_a_non_empty_string() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;

    for content in [
        json!(5),
        json!(""),
        json!(["text"]),
        json!({"text": "hi"}),
        json!(true),
    ] {
        // Act
        let reply = app
            .post_message(&session.id, &json!({ "content": content }))
            .await;

        // Assert
        reply.expect_error(400, "INVALID_CONTENT");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn absent_or_null_content_is_missing_fields() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;

    for body in [json!({}), json!({"content": null}), json!({"metadata": {}})] {
        // Act
        let reply = app.post_message(&session.id, &body).await;

        // Assert
        reply.expect_error(400, "MISSING_FIELDS");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn content_over_4000_characters_is_rejected_with_the_documented_message() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;

    for content in ["a".repeat(4001), "é".repeat(4001), "😀".repeat(4001)] {
        // Act
        let reply = app
            .post_message(&session.id, &json!({ "content": content }))
            .await;

        // Assert
        let error = reply.expect_error(400, "INVALID_CONTENT");
        assert_eq!(
            error["message"],
            json!("Content exceeds maximum length of 4000 characters")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn content_of_exactly_4000_characters_is_accepted_whatever_their_byte_length() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;

    for content in ["a".repeat(4000), "é".repeat(4000), "😀".repeat(4000)] {
        // Act
        let message = app
            .post_message(&session.id, &json!({ "content": content }))
            .await
            .expect(201);

        // Assert
        assert_eq!(message["content"], json!(content));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn content_with_control_characters_is_stored_and_read_back_as_sent() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let content = "a\u{0}b\u{1}c\td";

    // Act
    let stored = app
        .post_message(&session.id, &json!({ "content": content }))
        .await
        .expect(201);
    let read = app
        .send(app.api(
            Method::GET,
            &format!(
                "/sessions/{}/messages/{}",
                session.id,
                stored["id"].as_str().unwrap()
            ),
        ))
        .await
        .expect(200);

    // Assert
    assert_eq!(stored["content"], json!(content));
    assert_eq!(read["content"], json!(content));
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_message_does_not_use_up_a_seq() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    app.post_message(&session.id, &json!({"content": ""}))
        .await
        .expect_error(400, "INVALID_CONTENT");

    // Act
    let message = app.append(&session.id, "first real message").await;

    // Assert
    assert_eq!(message["seq"], json!(1));
    assert_eq!(message["parentId"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn message_metadata_must_be_a_small_object() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;
    let oversized = json!({"k": "x".repeat(10240 - 8 + 1)});

    for metadata in [json!("text"), json!([1]), json!(3), oversized] {
        // Act
        let reply = app
            .post_message(&session.id, &json!({"content": "hi", "metadata": metadata}))
            .await;

        // Assert
        reply.expect_error(400, "INVALID_METADATA");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn attachments_are_stored_without_unknown_fields() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let attachments = json!([
        {"type": "image", "url": "https://example.com/a.png", "name": "a.png"},
        {"type": "file", "url": "https://example.com/b.pdf", "size": 12}
    ]);

    // Act
    let message = app
        .post_message(
            &session.id,
            &json!({"content": "see attached", "attachments": attachments}),
        )
        .await
        .expect(201);

    // Assert
    let stored = &message["attachments"];
    assert_eq!(stored.as_array().map(Vec::len), Some(2), "{message}");
    assert_eq!(stored[0]["type"], json!("image"));
    assert_eq!(stored[0]["url"], json!("https://example.com/a.png"));
    assert_eq!(stored[0]["name"], json!("a.png"));
    assert_eq!(stored[1]["type"], json!("file"));
    assert_eq!(stored[1]["url"], json!("https://example.com/b.pdf"));
    assert!(
        stored[1].get("size").is_none(),
        "unknown fields are ignored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_attachments_are_accepted() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let attachments: Vec<Value> = (0..16)
        .map(|n| json!({"type": "image", "url": format!("https://example.com/{n}.png")}))
        .collect();

    // Act
    let message = app
        .post_message(
            &session.id,
            &json!({"content": "album", "attachments": attachments}),
        )
        .await
        .expect(201);

    // Assert
    assert_eq!(message["attachments"].as_array().map(Vec::len), Some(16));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_attachments_are_rejected() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;
    let seventeen: Vec<Value> = (0..17)
        .map(|n| json!({"type": "image", "url": format!("https://example.com/{n}.png")}))
        .collect();
    let cases = [
        json!("https://example.com/a.png"),
        json!({"type": "image", "url": "https://example.com/a.png"}),
        json!([{"type": "image"}]),
        json!([{"url": "https://example.com/a.png"}]),
        json!([{"type": 1, "url": "https://example.com/a.png"}]),
        json!([5]),
        Value::Array(seventeen),
    ];

    for attachments in cases {
        // Act
        let reply = app
            .post_message(
                &session.id,
                &json!({"content": "hi", "attachments": attachments}),
            )
            .await;

        // Assert
        reply.expect_error(400, "INVALID_ATTACHMENTS");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transport_outside_the_documented_values_is_rejected() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;
    let bodies = [
        json!({"content": "hi", "transport": "bogus"}),
        json!({"content": "hi", "transport": "HTTP"}),
        json!({"content": "hi", "transport": "WebSocket"}),
        json!({"content": "hi", "transport": 1}),
        json!({"content": "hi", "mode": "bogus"}),
        json!({"content": "hi", "mode": "SYNC"}),
        json!({"content": "hi", "transport": null, "mode": "bogus"}),
    ];

    for body in bodies {
        // Act
        let reply = app.post_message(&session.id, &body).await;

        // Assert
        reply.expect_error(400, "INVALID_TRANSPORT");
    }
    let info = app.get_session(&session.id).await.expect(200);
    assert_eq!(info["messageCount"], json!(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_or_absent_transport_answers_201_at_once() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let bodies = [
        json!({"content": "a"}),
        json!({"content": "b", "transport": "websocket"}),
        json!({"content": "c", "transport": null}),
        json!({"content": "d", "mode": "websocket"}),
        json!({"content": "e", "transport": "websocket", "mode": "bogus"}),
    ];

    for (n, body) in bodies.iter().enumerate() {
        // Act
        let started = Instant::now();
        let message = app.post_message(&session.id, body).await.expect(201);

        // Assert: no waiting for an agent's reply (that would take the 30 s reply timeout).
        assert!(started.elapsed() < Duration::from_secs(5), "{body}");
        assert_eq!(message["seq"], json!(n + 1));
        assert!(message.get("agentResponse").is_none() || message["agentResponse"].is_null());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn message_renews_a_session_with_auto_renew() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.create_session().await;
    app.advance_clock(Duration::from_secs(10 * 60));

    // Act
    let message = app.append(&session.id, "keep me alive").await;

    // Assert: a full timeout from the message.
    let status = &message["sessionStatus"];
    assert_eq!(status["wasRenewed"], json!(true));
    assert_eq!(status["renewalCount"], json!(1));
    assert!(millis(&status["expiresAt"]) > millis(&session.body["expiresAt"]));
    assert_eq!(millis(&status["expiresAt"]), T0_MS + 40 * MINUTE_MS);
    let info = app.get_session(&session.id).await.expect(200);
    assert_eq!(info["renewalCount"], json!(1));
    assert_eq!(info["expiresAt"], status["expiresAt"]);
    assert_eq!(millis(&info["lastActivity"]), T0_MS + 10 * MINUTE_MS);
}

#[tokio::test(flavor = "multi_thread")]
async fn message_in_the_same_millisecond_as_the_last_renewal_renews_nothing() {
    // Arrange: a renewal must move the shown expiry by a millisecond at least.
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.create_session().await;

    // Act
    let message = app.append(&session.id, "at once").await;

    // Assert
    let status = &message["sessionStatus"];
    assert_eq!(status["wasRenewed"], json!(false));
    assert_eq!(status["renewalCount"], json!(0));
    assert_eq!(status["expiresAt"], session.body["expiresAt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn message_does_not_renew_a_session_without_auto_renew() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with_timeout(json!({"autoRenew": false}))
        .await;
    app.advance_clock(Duration::from_secs(10 * 60));

    // Act
    let message = app.append(&session.id, "busy but not renewing").await;

    // Assert
    let status = &message["sessionStatus"];
    assert_eq!(status["wasRenewed"], json!(false));
    assert_eq!(status["renewalCount"], json!(0));
    assert_eq!(status["expiresAt"], session.body["expiresAt"]);
    let info = app.get_session(&session.id).await.expect(200);
    assert_eq!(info["renewalCount"], json!(0));
    assert_eq!(info["expiresAt"], session.body["expiresAt"]);
    assert_eq!(millis(&info["lastActivity"]), T0_MS + 10 * MINUTE_MS);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_status_warns_inside_the_threshold() {
    // Arrange
    let app = spawn_app().await;
    let session = app
        .create_session_with_timeout(json!({"timeoutMinutes": 5, "warningThresholdMinutes": 5}))
        .await;

    // Act
    let message = app.append(&session.id, "hi").await;

    // Assert
    assert_eq!(message["sessionStatus"]["isNearExpiration"], json!(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn session_status_warns_from_the_first_millisecond_inside_the_threshold() {
    // Arrange: a 30-minute session without auto-renew warns during its last 5 minutes.
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with_timeout(json!({"autoRenew": false}))
        .await;

    // Act
    app.set_clock(T0_MS + 25 * MINUTE_MS - 1);
    let before = app.append(&session.id, "not yet").await;
    app.set_clock(T0_MS + 25 * MINUTE_MS);
    let at = app.append(&session.id, "now").await;

    // Assert
    assert_eq!(before["sessionStatus"]["isNearExpiration"], json!(false));
    assert_eq!(at["sessionStatus"]["isNearExpiration"], json!(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_of_an_unknown_session_are_404() {
    // Arrange
    let app = spawn_app().await;
    let missing = new_id();

    // Act
    let post = app.post_message(&missing, &json!({"content": "hi"})).await;
    let list = app.list_messages(&missing, "").await;
    let one = app
        .get(&format!("/sessions/{missing}/messages/{}", new_id()))
        .await;

    // Assert
    for reply in [post, list, one] {
        let error = reply.expect_error(404, "SESSION_NOT_FOUND");
        assert!(field_str(&error, "details").contains(&missing));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn message_routes_reject_malformed_ids_in_the_path() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;

    // Act
    let replies = [
        app.post_message("nope", &json!({"content": "hi"})).await,
        app.list_messages("nope", "").await,
        app.get(&format!("/sessions/{}/messages/nope", session.id))
            .await,
        app.get(&format!("/sessions/{}/messages/nope/thread", session.id))
            .await,
    ];

    // Assert
    for reply in replies {
        reply.expect_error(400, "INVALID_UUID");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_appends_get_seqs_one_to_fifty_in_one_branch() {
    // Arrange
    let app = Arc::new(spawn_app().await);
    let session = app.create_session().await;

    // Act
    let mut tasks = JoinSet::new();
    for n in 0..50 {
        let app = Arc::clone(&app);
        let id = session.id.clone();
        tasks.spawn(async move {
            app.post_message(&id, &json!({ "content": format!("concurrent {n}") }))
                .await
        });
    }
    let replies = tasks.join_all().await;

    // Assert
    let mut messages: Vec<Value> = replies.into_iter().map(|r| r.expect(201)).collect();
    messages.sort_by_key(|m| field_u64(m, "seq"));
    let got: Vec<u64> = messages.iter().map(|m| field_u64(m, "seq")).collect();
    assert_eq!(got, (1..=50).collect::<Vec<u64>>());
    assert_eq!(messages[0]["parentId"], Value::Null);
    for pair in messages.windows(2) {
        assert_eq!(
            pair[1]["parentId"], pair[0]["id"],
            "the default parent is the newest message, so seq {} must reply to seq {}",
            pair[1]["seq"], pair[0]["seq"]
        );
    }
    let info = app.get_session(&session.id).await.expect(200);
    assert_eq!(info["messageCount"], json!(50));
    let listed = app
        .list_messages(&session.id, "limit=100")
        .await
        .expect(200);
    assert_eq!(page_seqs(&listed), newest_first(1, 50));
}

// ---------------------------------------------------------------------------------------------
// GET /sessions/{id}/messages

#[tokio::test(flavor = "multi_thread")]
async fn default_page_is_the_newest_fifty_newest_first_with_cursors() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let messages = app.append_many(&session.id, 25).await;

    // Act
    let page = app.list_messages(&session.id, "").await.expect(200);

    // Assert
    assert_eq!(page_seqs(&page), newest_first(1, 25));
    assert_eq!(page["hasMore"], json!(false));
    let newest = &messages[24];
    let oldest = &messages[0];
    assert_eq!(
        page["cursors"],
        json!({
            "before": millis(&oldest["createdAt"]),
            "after": millis(&newest["createdAt"]),
            "beforeSeq": 1,
            "afterSeq": 25,
        })
    );
    let listed = &page["messages"][0];
    for field in MESSAGE_FIELDS {
        assert_eq!(listed[field], newest[field], "field {field}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_backward_by_before_seq_never_skips_or_repeats() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    app.append_many(&session.id, 25).await;

    // Act
    let first = app.list_messages(&session.id, "limit=10").await.expect(200);
    let second = app
        .list_messages(
            &session.id,
            &format!("limit=10&beforeSeq={}", first["cursors"]["beforeSeq"]),
        )
        .await
        .expect(200);
    let third = app
        .list_messages(
            &session.id,
            &format!("limit=10&beforeSeq={}", second["cursors"]["beforeSeq"]),
        )
        .await
        .expect(200);

    // Assert
    assert_eq!(page_seqs(&first), newest_first(16, 25));
    assert_eq!(first["hasMore"], json!(true));
    assert_eq!(first["cursors"]["beforeSeq"], json!(16));
    assert_eq!(first["cursors"]["afterSeq"], json!(25));
    assert_eq!(page_seqs(&second), newest_first(6, 15));
    assert_eq!(second["hasMore"], json!(true));
    assert_eq!(page_seqs(&third), newest_first(1, 5));
    assert_eq!(third["hasMore"], json!(false));
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_forward_by_after_seq_gives_the_oldest_newer_messages() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    app.append_many(&session.id, 25).await;

    // Act
    let first = app
        .list_messages(&session.id, "limit=10&afterSeq=0")
        .await
        .expect(200);
    let second = app
        .list_messages(
            &session.id,
            &format!("limit=10&afterSeq={}", first["cursors"]["afterSeq"]),
        )
        .await
        .expect(200);
    let third = app
        .list_messages(
            &session.id,
            &format!("limit=10&afterSeq={}", second["cursors"]["afterSeq"]),
        )
        .await
        .expect(200);
    let past_the_end = app
        .list_messages(&session.id, "limit=10&afterSeq=25")
        .await
        .expect(200);

    // Assert
    assert_eq!(page_seqs(&first), newest_first(1, 10));
    assert_eq!(first["hasMore"], json!(true));
    assert_eq!(page_seqs(&second), newest_first(11, 20));
    assert_eq!(second["hasMore"], json!(true));
    assert_eq!(page_seqs(&third), newest_first(21, 25));
    assert_eq!(third["hasMore"], json!(false));
    assert_eq!(page_seqs(&past_the_end), Vec::<u64>::new());
    assert_eq!(past_the_end["hasMore"], json!(false));
    assert_eq!(past_the_end["cursors"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn has_more_is_false_when_a_page_ends_at_the_last_message() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    app.append_many(&session.id, 20).await;

    // Act
    let whole = app.list_messages(&session.id, "limit=20").await.expect(200);
    let backward = app
        .list_messages(&session.id, "limit=10&beforeSeq=11")
        .await
        .expect(200);
    let forward = app
        .list_messages(&session.id, "limit=10&afterSeq=10")
        .await
        .expect(200);
    let inside = app
        .list_messages(&session.id, "limit=5&afterSeq=5&beforeSeq=11")
        .await
        .expect(200);

    // Assert
    assert_eq!(page_seqs(&whole), newest_first(1, 20));
    assert_eq!(page_seqs(&backward), newest_first(1, 10));
    assert_eq!(page_seqs(&forward), newest_first(11, 20));
    assert_eq!(page_seqs(&inside), newest_first(6, 10));
    for page in [whole, backward, forward, inside] {
        assert_eq!(page["hasMore"], json!(false), "hasMore is exact");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn both_bounds_give_the_newest_messages_inside_the_interval() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    app.append_many(&session.id, 25).await;

    // Act
    let partial = app
        .list_messages(&session.id, "afterSeq=5&beforeSeq=20&limit=5")
        .await
        .expect(200);
    let whole = app
        .list_messages(&session.id, "afterSeq=5&beforeSeq=12&limit=10")
        .await
        .expect(200);

    // Assert
    assert_eq!(page_seqs(&partial), newest_first(15, 19));
    assert_eq!(partial["hasMore"], json!(true));
    assert_eq!(page_seqs(&whole), newest_first(6, 11));
    assert_eq!(whole["hasMore"], json!(false), "only the interval counts");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_page_has_null_cursors_and_no_more() {
    // Arrange
    let app = spawn_app().await;
    let empty_session = app.create_session().await;
    let session = app.create_session().await;
    app.append_many(&session.id, 3).await;

    // Act
    let nothing_yet = app.list_messages(&empty_session.id, "").await.expect(200);
    let before_first = app
        .list_messages(&session.id, "beforeSeq=1")
        .await
        .expect(200);

    // Assert
    for page in [nothing_yet, before_first] {
        assert_eq!(page["messages"], json!([]));
        assert_eq!(page["hasMore"], json!(false));
        assert_eq!(page["cursors"], Value::Null);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn message_limit_defaults_to_50_and_is_clamped_to_1_and_100() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    app.append_many(&session.id, 101).await;

    // Act
    let default = app.list_messages(&session.id, "").await.expect(200);
    let zero = app.list_messages(&session.id, "limit=0").await.expect(200);
    let negative = app.list_messages(&session.id, "limit=-3").await.expect(200);
    let huge = app
        .list_messages(&session.id, "limit=1000")
        .await
        .expect(200);

    // Assert
    assert_eq!(page_seqs(&default), newest_first(52, 101));
    assert_eq!(default["hasMore"], json!(true));
    assert_eq!(page_seqs(&zero), vec![101]);
    assert_eq!(page_seqs(&negative), vec![101]);
    assert_eq!(page_seqs(&huge), newest_first(2, 101));
    assert_eq!(huge["hasMore"], json!(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_seq_bounds_are_clamped_not_rejected() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    app.append_many(&session.id, 3).await;

    // Act
    let below = app
        .list_messages(&session.id, "beforeSeq=-1")
        .await
        .expect(200);
    let beyond = app
        .list_messages(&session.id, "beforeSeq=9223372036854775807")
        .await
        .expect(200);
    let negative_after = app
        .list_messages(&session.id, "afterSeq=-10")
        .await
        .expect(200);

    // Assert
    assert_eq!(page_seqs(&below), Vec::<u64>::new());
    assert_eq!(page_seqs(&beyond), newest_first(1, 3));
    assert_eq!(page_seqs(&negative_after), newest_first(1, 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn message_pagination_must_be_plain_decimal_integers() {
    // Arrange
    let app = embedded_app().await;
    let session = app.create_session().await;
    app.append_many(&session.id, 2).await;
    let queries = [
        "limit=abc",
        "limit=",
        "limit=1e3",
        "limit=%2B5",
        "beforeSeq=%2B5",
        "beforeSeq=1.5",
        "afterSeq=1e3",
        "afterSeq=",
        "before=abc",
        "before=",
        "after=1e3",
        "after=%2B5",
        "beforeSeq=99999999999999999999",
    ];

    for query in queries {
        // Act
        let reply = app.list_messages(&session.id, query).await;

        // Assert
        reply.expect_error(400, "INVALID_PAGINATION");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn epoch_ms_bounds_are_exclusive() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let messages = app.append_many(&session.id, 25).await;
    let stamps: Vec<(u64, u64)> = messages
        .iter()
        .map(|m| (field_u64(m, "seq"), millis(&m["createdAt"])))
        .collect();
    let pivot = stamps[9].1;
    let newer: Vec<u64> = stamps
        .iter()
        .rev()
        .filter(|(_, ms)| *ms > pivot)
        .map(|(seq, _)| *seq)
        .collect();
    let older: Vec<u64> = stamps
        .iter()
        .rev()
        .filter(|(_, ms)| *ms < pivot)
        .map(|(seq, _)| *seq)
        .collect();

    // Act
    let after = app
        .list_messages(&session.id, &format!("after={pivot}&limit=100"))
        .await
        .expect(200);
    let before = app
        .list_messages(&session.id, &format!("before={pivot}&limit=100"))
        .await
        .expect(200);
    let everything = app
        .list_messages(&session.id, "after=0&limit=100")
        .await
        .expect(200);

    // Assert
    assert_eq!(page_seqs(&after), newer);
    assert_eq!(page_seqs(&before), older);
    assert_eq!(page_seqs(&everything), newest_first(1, 25));
}

#[tokio::test(flavor = "multi_thread")]
async fn after_only_epoch_paging_gives_the_oldest_newer_messages() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let messages = app.append_many(&session.id, 10).await;
    let first_ms = millis(&messages[0]["createdAt"]);
    let mut newer: Vec<u64> = messages
        .iter()
        .filter(|m| millis(&m["createdAt"]) > first_ms)
        .map(|m| field_u64(m, "seq"))
        .collect();
    newer.truncate(3);
    newer.reverse();

    // Act
    let page = app
        .list_messages(&session.id, &format!("after={first_ms}&limit=3"))
        .await
        .expect(200);

    // Assert
    assert_eq!(page_seqs(&page), newer);
}

#[tokio::test(flavor = "multi_thread")]
async fn parent_filter_returns_only_direct_replies() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let root = app.append(&session.id, "root").await;
    let first = app.append(&session.id, "first reply").await;
    let branch = app
        .post_message(
            &session.id,
            &json!({"content": "second reply", "parentId": root["id"]}),
        )
        .await
        .expect(201);
    app.append(&session.id, "reply to the branch").await;

    // Act
    let replies = app
        .list_messages(&session.id, &format!("parentId={}", field_str(&root, "id")))
        .await
        .expect(200);
    let leaf_replies = app
        .list_messages(
            &session.id,
            &format!("parentId={}", field_str(&first, "id")),
        )
        .await
        .expect(200);
    let malformed = app.list_messages(&session.id, "parentId=root").await;

    // Assert
    assert_eq!(
        ids(&replies["messages"]),
        vec![field_str(&branch, "id"), field_str(&first, "id")]
    );
    assert_eq!(leaf_replies["messages"], json!([]));
    malformed.expect_error(400, "INVALID_UUID");
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_to_one_message_page_by_seq_like_the_whole_session() {
    // Arrange: five direct replies to the root, each followed by an unrelated message.
    let app = spawn_app().await;
    let session = app.create_session().await;
    let root = app.append(&session.id, "root").await;
    let mut replies = Vec::new();
    for n in 0..5 {
        let reply = app
            .post_message(
                &session.id,
                &json!({"content": format!("reply {n}"), "parentId": root["id"]}),
            )
            .await
            .expect(201);
        replies.push(field_u64(&reply, "seq"));
        app.append(&session.id, "follow-up").await;
    }
    let parent = format!("parentId={}", field_str(&root, "id"));

    // Act
    let first = app
        .list_messages(&session.id, &format!("{parent}&limit=2"))
        .await
        .expect(200);
    let second = app
        .list_messages(
            &session.id,
            &format!(
                "{parent}&limit=2&beforeSeq={}",
                first["cursors"]["beforeSeq"]
            ),
        )
        .await
        .expect(200);
    let third = app
        .list_messages(
            &session.id,
            &format!(
                "{parent}&limit=2&beforeSeq={}",
                second["cursors"]["beforeSeq"]
            ),
        )
        .await
        .expect(200);

    // Assert: replies are seqs 2, 4, 6, 8, 10.
    assert_eq!(replies, vec![2, 4, 6, 8, 10]);
    assert_eq!(page_seqs(&first), vec![10, 8]);
    assert_eq!(first["hasMore"], json!(true));
    assert_eq!(page_seqs(&second), vec![6, 4]);
    assert_eq!(second["hasMore"], json!(true));
    assert_eq!(page_seqs(&third), vec![2]);
    assert_eq!(third["hasMore"], json!(false));
}

// ---------------------------------------------------------------------------------------------
// GET /sessions/{id}/messages/{messageId} and .../thread

#[tokio::test(flavor = "multi_thread")]
async fn message_can_be_read_by_id() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    app.append(&session.id, "first").await;
    let posted = app
        .post_message(
            &session.id,
            &json!({"content": "second", "metadata": {"k": "v"},
                    "attachments": [{"type": "link", "url": "https://example.com"}]}),
        )
        .await
        .expect(201);
    let id = field_str(&posted, "id");

    // Act
    let message = app
        .get(&format!("/sessions/{}/messages/{id}", session.id))
        .await
        .expect(200);
    let by_uppercase = app
        .get(&format!(
            "/sessions/{}/messages/{}",
            session.id,
            id.to_uppercase()
        ))
        .await
        .expect(200);

    // Assert
    for field in MESSAGE_FIELDS {
        assert_eq!(message[field], posted[field], "field {field}");
    }
    assert_eq!(by_uppercase["id"], json!(id));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_message_is_404_message_not_found() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let other = app.create_session().await;
    app.append(&session.id, "mine").await;
    let foreign = app.append(&other.id, "theirs").await;
    let foreign_id = field_str(&foreign, "id").to_owned();

    for message_id in [new_id(), foreign_id] {
        // Act
        let one = app
            .get(&format!("/sessions/{}/messages/{message_id}", session.id))
            .await;
        let thread = app
            .get(&format!(
                "/sessions/{}/messages/{message_id}/thread",
                session.id
            ))
            .await;

        // Assert
        one.expect_error(404, "MESSAGE_NOT_FOUND");
        thread.expect_error(404, "MESSAGE_NOT_FOUND");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn thread_runs_from_the_root_to_the_message_oldest_first() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let root = app.append(&session.id, "root").await;
    let first = app.append(&session.id, "first reply").await;
    let branch = app
        .post_message(
            &session.id,
            &json!({"content": "edit", "parentId": root["id"]}),
        )
        .await
        .expect(201);
    let leaf = app.append(&session.id, "reply to the edit").await;
    let thread_of = |message: &Value| {
        format!(
            "/sessions/{}/messages/{}/thread",
            session.id,
            field_str(message, "id")
        )
    };

    // Act
    let leaf_thread = app.get(&thread_of(&leaf)).await.expect(200);
    let first_thread = app.get(&thread_of(&first)).await.expect(200);
    let root_thread = app.get(&thread_of(&root)).await.expect(200);

    // Assert
    let id_of = |m: &Value| field_str(m, "id").to_owned();
    assert_eq!(
        ids(&leaf_thread["messages"]),
        vec![id_of(&root), id_of(&branch), id_of(&leaf)]
    );
    assert_eq!(
        ids(&first_thread["messages"]),
        vec![id_of(&root), id_of(&first)]
    );
    assert_eq!(ids(&root_thread["messages"]), vec![id_of(&root)]);
    assert_eq!(
        leaf_thread["messages"][2]["content"],
        json!("reply to the edit")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thread_limit_gives_the_last_messages_of_the_branch_and_says_when_it_goes_further() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let messages = app.append_many(&session.id, 4).await;
    let leaf = field_str(&messages[3], "id");
    let path = format!("/sessions/{}/messages/{leaf}/thread", session.id);

    // Act
    let last_two = app.get(&format!("{path}?limit=2")).await.expect(200);
    let whole = app.get(&path).await.expect(200);
    let clamped = app.get(&format!("{path}?limit=0")).await.expect(200);
    let malformed = app.get(&format!("{path}?limit=two")).await;

    // Assert
    assert_eq!(seqs(&last_two["messages"]), vec![3, 4]);
    assert_eq!(last_two["hasMore"], json!(true));
    assert_eq!(seqs(&whole["messages"]), vec![1, 2, 3, 4]);
    assert_eq!(whole["hasMore"], json!(false));
    assert_eq!(seqs(&clamped["messages"]), vec![4]);
    malformed.expect_error(400, "INVALID_PAGINATION");
}

/// Readers paging and walking threads while the session is deleted see it whole or gone:
/// never a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_racing_a_delete_answer_200_or_404_never_5xx() {
    for _ in 0..5 {
        // Arrange: more messages than one delete write removes, so a purge follows.
        let app = Arc::new(spawn_app().await);
        let session = app.create_session().await;
        let messages = app.append_many(&session.id, 300).await;
        let leaf = field_str(&messages[299], "id").to_owned();
        let paths = [
            format!(
                "/sessions/{}/messages?limit=100&before=99999999999999",
                session.id
            ),
            format!("/sessions/{}/messages?limit=100&afterSeq=0", session.id),
            format!("/sessions/{}/messages/{leaf}/thread", session.id),
        ];

        // Act
        let mut readers = JoinSet::new();
        for reader in 0..12 {
            let path = paths[reader % paths.len()].clone();
            let app = Arc::clone(&app);
            readers.spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..10 {
                    statuses.push(app.get(&path).await.status.as_u16());
                }
                statuses
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        app.delete_session(&session.id).await.expect(200);
        let statuses: Vec<u16> = readers.join_all().await.into_iter().flatten().collect();

        // Assert
        assert!(
            statuses
                .iter()
                .all(|&status| status == 200 || status == 404),
            "{statuses:?}"
        );
    }
}
