//! Data survives a graceful restart on the same data directory; the sweeper removes sessions
//! that expired more than the retention ago, with their messages, and keeps the others.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    field_str, ids, millis, spawn_app, spawn_app_with_clock, sweep_at, Api, MINUTE_MS,
};

const RETENTION: Duration = Duration::from_secs(60 * 60);
const RETENTION_MS: u64 = 60 * MINUTE_MS;

/// The `SessionInfo` fields that do not depend on the clock.
const STABLE_SESSION_FIELDS: [&str; 10] = [
    "sessionId",
    "agentId",
    "userId",
    "createdAt",
    "lastActivity",
    "metadata",
    "expiresAt",
    "timeoutConfig",
    "renewalCount",
    "messageCount",
];

#[tokio::test(flavor = "multi_thread")]
async fn sessions_and_messages_survive_a_restart() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let chatty = app
        .create_session_with(json!({"metadata": {"plan": "pro"},
                                    "timeoutConfig": {"timeoutMinutes": 90, "autoRenew": false}}))
        .await;
    let quiet = app.create_session().await;
    let deleted = app.create_session().await;
    let root = app.append(&chatty.id, "root").await;
    app.append_many(&chatty.id, 4).await;
    let branch = app
        .post_message(
            &chatty.id,
            &json!({"content": "branch", "parentId": root["id"], "authorId": chatty.agent_id,
                    "attachments": [{"type": "image", "url": "https://example.com/a.png"}]}),
        )
        .await
        .expect(201);
    let quiet_messages = app.append_many(&quiet.id, 2).await;
    app.advance_clock(Duration::from_secs(60));
    let renewed = app.renew(&quiet.id).await.expect(200);
    assert_eq!(
        millis(&renewed["expiresAt"]),
        millis(&quiet_messages[1]["createdAt"]) + 31 * MINUTE_MS
    );
    app.delete_session(&deleted.id).await.expect(200);
    let sessions_before = [
        app.get_session(&chatty.id).await.expect(200),
        app.get_session(&quiet.id).await.expect(200),
    ];
    let messages_before = [
        app.list_messages(&chatty.id, "limit=100").await.expect(200),
        app.list_messages(&quiet.id, "limit=100").await.expect(200),
    ];
    let listing_before = app.list_sessions("status=all").await.expect(200);

    // Act
    let app = app.restart().await;

    // Assert
    for before in &sessions_before {
        let after = app
            .get_session(field_str(before, "sessionId"))
            .await
            .expect(200);
        for field in STABLE_SESSION_FIELDS {
            assert_eq!(after[field], before[field], "session field {field}");
        }
    }
    for (session, before) in [&chatty, &quiet].into_iter().zip(&messages_before) {
        let after = app
            .list_messages(&session.id, "limit=100")
            .await
            .expect(200);
        assert_eq!(after, *before);
    }
    let listing_after = app.list_sessions("status=all").await.expect(200);
    assert_eq!(listing_after["total"], json!(2));
    assert_eq!(listing_after["stats"], listing_before["stats"]);
    assert_eq!(
        listing_after["stats"],
        json!({"totalSessions": 2, "activeSessions": 2, "expiredSessions": 0})
    );
    let by_agent = app
        .list_sessions(&format!("agentId={}", chatty.agent_id))
        .await
        .expect(200);
    assert_eq!(by_agent["total"], json!(1));
    let thread = app
        .get(&format!(
            "/sessions/{}/messages/{}/thread",
            chatty.id,
            field_str(&branch, "id")
        ))
        .await
        .expect(200);
    assert_eq!(
        ids(&thread["messages"]),
        vec![field_str(&root, "id"), field_str(&branch, "id")]
    );
    assert_eq!(thread["messages"][1]["attachments"], branch["attachments"]);
    assert_eq!(thread["messages"][1]["isAgent"], json!(true));
    app.get_session(&deleted.id)
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread")]
async fn seqs_continue_after_a_restart() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let messages = app.append_many(&session.id, 5).await;
    let app = app.restart().await;

    // Act
    let next = app.append(&session.id, "after the restart").await;

    // Assert
    assert_eq!(next["seq"], json!(6));
    assert_eq!(next["parentId"], messages[4]["id"]);
    let info = app.get_session(&session.id).await.expect(200);
    assert_eq!(info["messageCount"], json!(6));
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_removes_sessions_expired_past_retention_with_their_messages() {
    // Arrange
    let app = spawn_app().await;
    let short = app
        .create_session_with_timeout(json!({"timeoutMinutes": 5}))
        .await;
    let long = app
        .create_session_with_timeout(json!({"timeoutMinutes": 1440}))
        .await;
    let short_messages = app.append_many(&short.id, 3).await;
    app.append_many(&long.id, 2).await;
    let short_expiry = millis(&app.get_session(&short.id).await.expect(200)["expiresAt"]);

    // Act: well past the short session's expiry plus the retention, before the long one's.
    let removed = sweep_at(&app, short_expiry + RETENTION_MS + MINUTE_MS, RETENTION).await;

    // Assert
    assert_eq!(removed, 1);
    app.get_session(&short.id)
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    app.list_messages(&short.id, "")
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    app.get(&format!(
        "/sessions/{}/messages/{}",
        short.id,
        field_str(&short_messages[0], "id")
    ))
    .await
    .expect_error(404, "SESSION_NOT_FOUND");
    let kept = app.get_session(&long.id).await.expect(200);
    assert_eq!(kept["messageCount"], json!(2));
    let page = app.list_messages(&long.id, "").await.expect(200);
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(2));
    let listing = app.list_sessions("status=all").await.expect(200);
    assert_eq!(listing["total"], json!(1));
    assert_eq!(listing["stats"]["totalSessions"], json!(1));
    let by_agent = app
        .list_sessions(&format!("agentId={}&status=all", short.agent_id))
        .await
        .expect(200);
    assert_eq!(by_agent["total"], json!(0), "index entries are removed too");
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_keeps_sessions_expired_within_retention_and_active_ones() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let active = app.create_session().await;
    let expired = app.expired_session().await;
    app.append(&active.id, "still chatting").await;

    // Act: a sweep at the instant the expired session expired.
    let removed = sweep_at(&app, millis(&expired.body["expiresAt"]), RETENTION).await;

    // Assert
    assert_eq!(removed, 0);
    app.get_session(&expired.id)
        .await
        .expect_error(410, "SESSION_EXPIRED");
    let info = app.get_session(&active.id).await.expect(200);
    assert_eq!(info["messageCount"], json!(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_keeps_a_session_until_the_retention_has_passed() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let expired = app.expired_session().await;
    let expires_at = millis(&expired.body["expiresAt"]);

    // Act
    let just_before = sweep_at(&app, expires_at + RETENTION_MS - 1, RETENTION).await;
    let exactly = sweep_at(&app, expires_at + RETENTION_MS, RETENTION).await;
    let still_there = app.get_session(&expired.id).await;
    let just_after = sweep_at(&app, expires_at + RETENTION_MS + 1, RETENTION).await;

    // Assert
    assert_eq!(
        just_before, 0,
        "expired less than the retention ago is kept"
    );
    assert_eq!(exactly, 0, "expired exactly the retention ago is kept");
    still_there.expect_error(410, "SESSION_EXPIRED");
    assert_eq!(just_after, 1);
    app.get_session(&expired.id)
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread")]
async fn swept_sessions_stay_gone_after_a_restart() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let kept = app.create_session().await;
    let expired = app.expired_session().await;
    let removed = sweep_at(
        &app,
        millis(&expired.body["expiresAt"]) + RETENTION_MS + MINUTE_MS,
        RETENTION,
    )
    .await;
    assert_eq!(removed, 1);

    // Act
    let app = app.restart().await;

    // Assert
    app.get_session(&expired.id)
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    app.get_session(&kept.id).await.expect(200);
    let listing = app.list_sessions("status=all").await.expect(200);
    assert_eq!(listing["total"], json!(1));
}
