//! What elizaOS clients read beyond the core contract: `channelId` on every session answer,
//! each message's metadata shown over its session's context, and one page of sessions that
//! holds them all.

use serde_json::{json, Value};

use crate::helpers::{field_str, spawn_app, spawn_app_with_clock, Api, Session, TestApp};

/// The metadata a message of `session` shows when it was sent with `{"lang": "en"}`.
fn merged(session: &Session) -> Value {
    json!({
        "platform": "discord",
        "lang": "en",
        "sessionId": session.id,
        "agentId": session.agent_id,
        "userId": session.user_id,
    })
}

async fn session_with_context(app: &TestApp) -> Session {
    app.create_session_with(json!({
        // A session key named like a context key does not change what the context says.
        "metadata": {"platform": "discord", "lang": "fr", "sessionId": "not this"},
    }))
    .await
}

/// Posts "hi" with `{"lang": "en"}` of its own; asserts 201.
async fn post_in_english(app: &TestApp, session: &Session) -> Value {
    app.post_message(
        &session.id,
        &json!({"content": "hi", "metadata": {"lang": "en"}}),
    )
    .await
    .expect(201)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_session_answer_carries_channel_id_equal_to_the_session_id() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.create_session().await;
    // Later than its creation, so the renewal below moves the expiry.
    app.advance_clock(std::time::Duration::from_secs(60));

    // Act
    let answers = [
        session.body.clone(),
        app.get_session(&session.id).await.expect(200),
        app.renew(&session.id).await.expect(200),
        app.heartbeat(&session.id).await.expect(200),
        app.patch_timeout(&session.id, &json!({"timeoutMinutes": 40}))
            .await
            .expect(200),
    ];
    let listing = app.list_sessions("").await.expect(200);

    // Assert
    for answer in &answers {
        assert_eq!(answer["channelId"], json!(session.id), "{answer}");
    }
    let listed = &listing["sessions"][0];
    assert_eq!(listed["channelId"], listed["sessionId"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_message_answer_shows_its_metadata_over_the_session_context() {
    // Arrange
    let app = spawn_app().await;
    let session = session_with_context(&app).await;

    // Act
    let posted = post_in_english(&app, &session).await;
    let id = field_str(&posted, "id");
    let page = app.list_messages(&session.id, "").await.expect(200);
    let one = app
        .get(&format!("/sessions/{}/messages/{id}", session.id))
        .await
        .expect(200);
    let thread = app
        .get(&format!("/sessions/{}/messages/{id}/thread", session.id))
        .await
        .expect(200);
    let feather = app
        .send(
            app.request(
                reqwest::Method::POST,
                &format!("/v1/ask-feather/sessions/{}/messages", session.id),
            )
            .json(&json!({"content": "via feather", "workflow": "w1"})),
        )
        .await
        .expect(200);

    // Assert
    let expected = merged(&session);
    assert_eq!(posted["metadata"], expected);
    assert_eq!(page["messages"][0]["metadata"], expected);
    assert_eq!(one["metadata"], expected);
    assert_eq!(thread["messages"][0]["metadata"], expected);
    let mut feather_expected = expected.clone();
    feather_expected["lang"] = json!("fr");
    feather_expected["workflow"] = json!("w1");
    assert_eq!(feather["metadata"], feather_expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_clients_own_metadata_is_stored_with_a_message() {
    // Arrange
    let app = spawn_app().await;
    let session = session_with_context(&app).await;

    // Act
    let posted = post_in_english(&app, &session).await;

    // Assert
    let stored = app
        .store()
        .message(
            session.id.parse().expect("a UUID"),
            field_str(&posted, "id").parse().expect("a UUID"),
        )
        .await
        .expect("the store reads")
        .expect("the message is stored");
    assert_eq!(stored.metadata_json, r#"{"lang":"en"}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_without_metadata_shows_the_context_alone() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;

    // Act
    let posted = app.append(&session.id, "plain").await;

    // Assert
    assert_eq!(
        posted["metadata"],
        json!({"sessionId": session.id, "agentId": session.agent_id, "userId": session.user_id})
    );
}
