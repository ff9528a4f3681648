//! Renew, heartbeat, PATCH timeout, DELETE, expired sessions and concurrent renewals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::helpers::{
    embedded_app, field_str, field_u64, millis, new_id, spawn_app,
    spawn_app_allowing_instant_expiry, spawn_app_with_clock, sweep_at, wait_for_clock_past, Api,
    Session, TestApp, MINUTE_MS, T0_MS,
};

const MINUTE: Duration = Duration::from_secs(60);
const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------------
// POST /sessions/{id}/renew

#[tokio::test(flavor = "multi_thread")]
async fn renew_moves_expiry_later_and_counts_the_renewal() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.create_session().await;
    let created_at = millis(&session.body["createdAt"]);
    assert_eq!(created_at, T0_MS);
    app.advance_clock(10 * MINUTE);

    // Act
    let info = app.renew(&session.id).await.expect(200);

    // Assert: a full timeout from the renewal, well under the maximum duration.
    assert_eq!(info["sessionId"], json!(session.id));
    assert_eq!(info["renewalCount"], json!(1));
    let expires_at = millis(&info["expiresAt"]);
    assert_eq!(expires_at, T0_MS + 40 * MINUTE_MS);
    assert!(expires_at > millis(&session.body["expiresAt"]));
    assert!(expires_at <= created_at + 720 * MINUTE_MS);
    assert_eq!(
        info["timeRemaining"],
        json!(30 * MINUTE_MS),
        "SessionInfo: {info}"
    );
    assert_eq!(info["messageCount"], json!(0));
    let stored = app.get_session(&session.id).await.expect(200);
    assert_eq!(stored["renewalCount"], json!(1));
    assert_eq!(stored["expiresAt"], info["expiresAt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_renew_works_without_auto_renew() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with_timeout(json!({"autoRenew": false}))
        .await;
    app.advance_clock(MS);

    // Act
    let info = app.renew(&session.id).await.expect(200);

    // Assert: one millisecond later is enough to move the expiry.
    assert_eq!(info["renewalCount"], json!(1));
    assert_eq!(millis(&info["expiresAt"]), T0_MS + 30 * MINUTE_MS + 1);
    assert!(millis(&info["expiresAt"]) > millis(&session.body["expiresAt"]));
    assert_eq!(info["timeoutConfig"]["autoRenew"], json!(false));
}

#[tokio::test(flavor = "multi_thread")]
async fn renew_at_max_duration_is_422_and_changes_nothing() {
    // Arrange: timeout == maxDuration, so the session already expires at createdAt + maxDuration.
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with_timeout(json!({"timeoutMinutes": 30, "maxDurationMinutes": 30}))
        .await;
    // The last millisecond of its life: any later and it would answer 410.
    app.advance_clock(30 * MINUTE - MS);

    // Act
    let reply = app.renew(&session.id).await;

    // Assert
    reply.expect_error(422, "MAX_DURATION_REACHED");
    let info = app.get_session(&session.id).await.expect(200);
    assert_eq!(info["renewalCount"], json!(0));
    assert_eq!(info["expiresAt"], session.body["expiresAt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn renew_is_capped_at_max_duration() {
    // Arrange: one minute of headroom between the timeout and the maximum duration.
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with_timeout(json!({"timeoutMinutes": 30, "maxDurationMinutes": 31}))
        .await;
    let created_at = millis(&session.body["createdAt"]);
    // One millisecond short of the cap: a full timeout still fits.
    app.advance_clock(MINUTE - MS);
    let uncapped = app.renew(&session.id).await.expect(200);
    app.advance_clock(2 * MS);

    // Act: a full timeout from here would end past the cap.
    let info = app.renew(&session.id).await.expect(200);

    // Assert
    assert_eq!(
        millis(&uncapped["expiresAt"]),
        created_at + 31 * MINUTE_MS - 1
    );
    assert_eq!(info["renewalCount"], json!(2));
    let expires_at = millis(&info["expiresAt"]);
    assert!(expires_at > created_at + 30 * MINUTE_MS);
    assert_eq!(expires_at, created_at + 31 * MINUTE_MS);
}

#[tokio::test(flavor = "multi_thread")]
async fn renewing_an_unknown_session_is_404() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let renew = app.renew(&new_id()).await;
    let heartbeat = app.heartbeat(&new_id()).await;
    let patch = app
        .patch_timeout(&new_id(), &json!({"timeoutMinutes": 10}))
        .await;
    let delete = app.delete_session(&new_id()).await;

    // Assert
    for reply in [renew, heartbeat, patch, delete] {
        reply.expect_error(404, "SESSION_NOT_FOUND");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_routes_reject_malformed_session_ids() {
    // Arrange
    let app = embedded_app().await;

    // Act
    let renew = app.renew("nope").await;
    let heartbeat = app.heartbeat("nope").await;
    let patch = app
        .patch_timeout("nope", &json!({"timeoutMinutes": 10}))
        .await;
    let delete = app.delete_session("nope").await;

    // Assert
    for reply in [renew, heartbeat, patch, delete] {
        reply.expect_error(400, "INVALID_UUID");
    }
}

/// 50 renewals at once on one session. A renewal counts only when it moves the shown
/// `expiresAt` (milliseconds) later, so those that land in the same millisecond as an earlier
/// one answer 422 and write nothing. Every 200 shows the state its own renewal wrote: the
/// answered counts are exactly 1..=N for the N that succeeded, each with a later expiry than
/// the count before, and the session ends with renewalCount N (no lost update).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_renewals_never_lose_an_update_and_each_shows_a_later_expiry() {
    // Arrange
    let app = Arc::new(spawn_app().await);
    let session = app.create_session().await;
    wait_for_clock_past(millis(&session.body["createdAt"])).await;

    // Act
    let mut tasks = JoinSet::new();
    for _ in 0..50 {
        let app = Arc::clone(&app);
        let id = session.id.clone();
        tasks.spawn(async move { app.renew(&id).await });
    }
    let replies = tasks.join_all().await;

    // Assert
    let mut states: BTreeMap<u64, u64> = BTreeMap::new();
    for reply in replies {
        if reply.status == 422 {
            reply.expect_error(422, "MAX_DURATION_REACHED");
            continue;
        }
        let info = reply.expect(200);
        let count = field_u64(&info, "renewalCount");
        let expires_at = millis(&info["expiresAt"]);
        let previous = states.insert(count, expires_at);
        assert!(
            previous.is_none(),
            "two renewals were both answered with renewalCount {count}: a lost update"
        );
    }
    let renewed = states.len() as u64;
    assert!(renewed >= 1, "no renewal succeeded");
    assert_eq!(
        states.keys().copied().collect::<Vec<u64>>(),
        (1..=renewed).collect::<Vec<u64>>()
    );
    let expiries: Vec<u64> = states.values().copied().collect();
    assert!(
        expiries.windows(2).all(|pair| pair[0] < pair[1]),
        "two renewals showed the same expiresAt, or a later one an earlier: {expiries:?}"
    );
    let stored = app.get_session(&session.id).await.expect(200);
    assert_eq!(stored["renewalCount"], json!(renewed));
    assert_eq!(millis(&stored["expiresAt"]), states[&renewed]);
}

// ---------------------------------------------------------------------------------------------
// POST /sessions/{id}/heartbeat

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_renews_a_session_with_auto_renew() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.create_session().await;
    let created_at = millis(&session.body["createdAt"]);
    app.advance_clock(5 * MINUTE);

    // Act
    let info = app.heartbeat(&session.id).await.expect(200);

    // Assert
    assert_eq!(info["sessionId"], json!(session.id));
    assert_eq!(info["renewalCount"], json!(1));
    assert!(millis(&info["expiresAt"]) > millis(&session.body["expiresAt"]));
    assert_eq!(millis(&info["expiresAt"]), created_at + 35 * MINUTE_MS);
    assert_eq!(millis(&info["lastActivity"]), created_at + 5 * MINUTE_MS);
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_without_auto_renew_only_records_activity() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with_timeout(json!({"autoRenew": false}))
        .await;
    let created_at = millis(&session.body["createdAt"]);
    app.advance_clock(5 * MINUTE);

    // Act
    let info = app.heartbeat(&session.id).await.expect(200);

    // Assert
    assert_eq!(info["renewalCount"], json!(0));
    assert_eq!(info["expiresAt"], session.body["expiresAt"]);
    assert_eq!(millis(&info["lastActivity"]), created_at + 5 * MINUTE_MS);
    assert_eq!(info["timeRemaining"], json!(25 * MINUTE_MS));
    let stored = app.get_session(&session.id).await.expect(200);
    assert_eq!(stored["renewalCount"], json!(0));
    assert_eq!(stored["lastActivity"], info["lastActivity"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_at_max_duration_answers_200_without_renewing() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with_timeout(json!({"timeoutMinutes": 30, "maxDurationMinutes": 30}))
        .await;
    app.advance_clock(10 * MINUTE);

    // Act
    let info = app.heartbeat(&session.id).await.expect(200);

    // Assert
    assert_eq!(info["renewalCount"], json!(0));
    assert_eq!(info["expiresAt"], session.body["expiresAt"]);
}

// ---------------------------------------------------------------------------------------------
// PATCH /sessions/{id}/timeout

async fn session_with_custom_config(app: &TestApp) -> Session {
    app.create_session_with_timeout(json!({"timeoutMinutes": 60, "autoRenew": false,
                                           "maxDurationMinutes": 600,
                                           "warningThresholdMinutes": 10}))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_timeout_keeps_the_sessions_values_for_fields_not_given() {
    // Arrange
    let app = spawn_app().await;
    let session = session_with_custom_config(&app).await;
    let created_at = millis(&session.body["createdAt"]);

    // Act
    let info = app
        .patch_timeout(&session.id, &json!({"timeoutMinutes": 45}))
        .await
        .expect(200);

    // Assert
    assert_eq!(
        info["timeoutConfig"],
        json!({"timeoutMinutes": 45, "autoRenew": false, "maxDurationMinutes": 600,
               "warningThresholdMinutes": 10})
    );
    assert_eq!(millis(&info["expiresAt"]), created_at + 45 * MINUTE_MS);
    assert_eq!(info["renewalCount"], json!(0));
    let stored = app.get_session(&session.id).await.expect(200);
    assert_eq!(stored["timeoutConfig"], info["timeoutConfig"]);
    assert_eq!(stored["expiresAt"], info["expiresAt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_timeout_can_change_each_field_alone() {
    // Arrange
    let app = spawn_app().await;
    let session = session_with_custom_config(&app).await;

    // Act
    let auto_renew = app
        .patch_timeout(&session.id, &json!({"autoRenew": true}))
        .await
        .expect(200);
    let warning = app
        .patch_timeout(
            &session.id,
            &json!({"warningThresholdMinutes": 0, "colour": "red"}),
        )
        .await
        .expect(200);
    let max_duration = app
        .patch_timeout(
            &session.id,
            &json!({"maxDurationMinutes": 60, "timeoutMinutes": null}),
        )
        .await
        .expect(200);

    // Assert
    assert_eq!(
        auto_renew["timeoutConfig"],
        json!({"timeoutMinutes": 60, "autoRenew": true, "maxDurationMinutes": 600,
               "warningThresholdMinutes": 10})
    );
    assert_eq!(
        warning["timeoutConfig"],
        json!({"timeoutMinutes": 60, "autoRenew": true, "maxDurationMinutes": 600,
               "warningThresholdMinutes": 0})
    );
    assert_eq!(
        max_duration["timeoutConfig"],
        json!({"timeoutMinutes": 60, "autoRenew": true, "maxDurationMinutes": 60,
               "warningThresholdMinutes": 0})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_recomputes_expiry_from_the_last_renewal() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.create_session().await;
    app.advance_clock(10 * MINUTE);
    let renewed = app.renew(&session.id).await.expect(200);
    let renewed_expiry = millis(&renewed["expiresAt"]);
    assert_eq!(renewed_expiry, T0_MS + 40 * MINUTE_MS);
    app.advance_clock(MINUTE);

    // Act
    let info = app
        .patch_timeout(&session.id, &json!({"timeoutMinutes": 45}))
        .await
        .expect(200);

    // Assert: renewedAt + 45 minutes, i.e. the renewal's expiry (renewedAt + 30) + 15.
    assert_eq!(millis(&info["expiresAt"]), renewed_expiry + 15 * MINUTE_MS);
    assert_eq!(info["renewalCount"], json!(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_patch_changes_nothing() {
    // Arrange
    let app = spawn_app().await;
    let session = session_with_custom_config(&app).await;

    // Act
    let info = app.patch_timeout(&session.id, &json!({})).await.expect(200);

    // Assert
    assert_eq!(info["timeoutConfig"], session.body["timeoutConfig"]);
    assert_eq!(info["expiresAt"], session.body["expiresAt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_patch_is_rejected_and_changes_nothing() {
    // Arrange
    let app = spawn_app().await;
    let session = session_with_custom_config(&app).await;
    let cases = [
        (json!({"timeoutMinutes": "45"}), "timeoutMinutes"),
        (json!({"timeoutMinutes": 45.0}), "timeoutMinutes"),
        (json!({"timeoutMinutes": -45}), "timeoutMinutes"),
        (json!({"timeoutMinutes": 4}), "timeoutMinutes"),
        (json!({"timeoutMinutes": 1441}), "timeoutMinutes"),
        (
            json!({"timeoutMinutes": 700}),
            "maxDurationMinutes|timeoutMinutes",
        ),
        (json!({"maxDurationMinutes": 2881}), "maxDurationMinutes"),
        (
            json!({"maxDurationMinutes": 59}),
            "maxDurationMinutes|timeoutMinutes",
        ),
        (
            json!({"warningThresholdMinutes": 61}),
            "warningThresholdMinutes",
        ),
        (
            json!({"timeoutMinutes": 8, "maxDurationMinutes": 8}),
            "warningThresholdMinutes",
        ),
        (json!({"autoRenew": "no"}), "autoRenew"),
    ];

    for (patch, fields) in cases {
        // Act
        let reply = app.patch_timeout(&session.id, &patch).await;

        // Assert: a conflict between two fields may be reported on either of them.
        let error = reply.expect_error(400, "INVALID_TIMEOUT_CONFIG");
        let message = field_str(&error, "message");
        assert!(
            fields.split('|').any(|field| message.contains(field)),
            "message {message:?} must name {fields} (patch {patch})"
        );
    }
    let stored = app.get_session(&session.id).await.expect(200);
    assert_eq!(stored["timeoutConfig"], session.body["timeoutConfig"]);
    assert_eq!(stored["expiresAt"], session.body["expiresAt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_that_leaves_the_session_expired_answers_200_with_no_time_left() {
    // Arrange: ten minutes into a 30-minute session.
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.create_session().await;
    app.advance_clock(10 * MINUTE);

    // Act: a 10-minute timeout makes it expire this very millisecond.
    let info = app
        .patch_timeout(
            &session.id,
            &json!({"timeoutMinutes": 10, "warningThresholdMinutes": 0}),
        )
        .await
        .expect(200);

    // Assert
    assert_eq!(info["timeRemaining"], json!(0));
    assert_eq!(info["isNearExpiration"], json!(false));
    assert_eq!(millis(&info["expiresAt"]), T0_MS + 10 * MINUTE_MS);
    app.get_session(&session.id)
        .await
        .expect_error(410, "SESSION_EXPIRED");
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_that_leaves_the_session_expired_with_a_zero_timeout_answers_200_with_no_time_left() {
    // Arrange: a zero timeout is only valid where the server allows it.
    let app = spawn_app_allowing_instant_expiry().await;
    let session = app.create_session().await;

    // Act
    let info = app
        .patch_timeout(
            &session.id,
            &json!({"timeoutMinutes": 0, "warningThresholdMinutes": 0}),
        )
        .await
        .expect(200);

    // Assert
    assert_eq!(info["timeRemaining"], json!(0));
    assert_eq!(info["isNearExpiration"], json!(false));
    assert_eq!(info["expiresAt"], session.body["createdAt"]);
    app.get_session(&session.id)
        .await
        .expect_error(410, "SESSION_EXPIRED");
}

// ---------------------------------------------------------------------------------------------
// DELETE /sessions/{id}

#[tokio::test(flavor = "multi_thread")]
async fn delete_answers_the_documented_body() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;

    // Act
    let body = app.delete_session(&session.id).await.expect(200);

    // Assert
    assert_eq!(
        body,
        json!({"success": true,
               "message": format!("Session {} deleted successfully", session.id)})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_session_and_its_messages_are_gone() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let kept = app.create_session().await;
    let messages = app.append_many(&session.id, 3).await;
    app.append(&kept.id, "still here").await;
    let message_id = field_str(&messages[1], "id");

    // Act
    app.delete_session(&session.id).await.expect(200);

    // Assert
    let gone = [
        app.get_session(&session.id).await,
        app.list_messages(&session.id, "").await,
        app.get(&format!("/sessions/{}/messages/{message_id}", session.id))
            .await,
        app.get(&format!(
            "/sessions/{}/messages/{message_id}/thread",
            session.id
        ))
        .await,
        app.post_message(&session.id, &json!({"content": "hello?"}))
            .await,
        app.renew(&session.id).await,
        app.delete_session(&session.id).await,
    ];
    for reply in gone {
        reply.expect_error(404, "SESSION_NOT_FOUND");
    }
    let listing = app
        .list_sessions(&format!("agentId={}&status=all", session.agent_id))
        .await
        .expect(200);
    assert_eq!(listing["total"], json!(0));
    assert_eq!(listing["stats"]["totalSessions"], json!(1));
    let kept_page = app.list_messages(&kept.id, "").await.expect(200);
    assert_eq!(kept_page["messages"].as_array().map(Vec::len), Some(1));
}

// ---------------------------------------------------------------------------------------------
// Expired sessions

#[tokio::test(flavor = "multi_thread")]
async fn session_is_usable_until_its_last_millisecond_and_expired_at_expires_at() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with_timeout(json!({"timeoutMinutes": 5, "autoRenew": false}))
        .await;
    let expires_at = millis(&session.body["expiresAt"]);
    assert_eq!(expires_at, T0_MS + 5 * MINUTE_MS);

    // Act
    app.set_clock(expires_at - 1);
    let last_message = app
        .post_message(&session.id, &json!({"content": "just in time"}))
        .await;
    let last_moment = app.get_session(&session.id).await;
    app.set_clock(expires_at);
    let too_late = app
        .post_message(&session.id, &json!({"content": "too late"}))
        .await;
    let expired = app.get_session(&session.id).await;

    // Assert
    last_message.expect(201);
    let info = last_moment.expect(200);
    assert_eq!(info["timeRemaining"], json!(1));
    assert_eq!(info["isNearExpiration"], json!(true));
    assert_eq!(info["messageCount"], json!(1));
    too_late.expect_error(410, "SESSION_EXPIRED");
    expired.expect_error(410, "SESSION_EXPIRED");
}

#[tokio::test(flavor = "multi_thread")]
async fn session_with_a_zero_timeout_is_expired_at_once() {
    // Arrange
    let app = spawn_app_allowing_instant_expiry().await;

    // Act
    let session = app
        .create_session_with_timeout(json!({"timeoutMinutes": 0}))
        .await;

    // Assert
    assert_eq!(
        session.body["timeoutConfig"],
        json!({"timeoutMinutes": 0, "autoRenew": true, "maxDurationMinutes": 720,
               "warningThresholdMinutes": 0})
    );
    assert_eq!(session.body["expiresAt"], session.body["createdAt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_session_answers_410_on_every_route_naming_id_and_expiry() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.expired_session().await;
    let id = &session.id;
    let expires_at = field_str(&session.body, "expiresAt");
    let message_id = new_id();

    // Act
    let replies = [
        ("GET session", app.get_session(id).await),
        (
            "POST message",
            app.post_message(id, &json!({"content": "anyone there?"}))
                .await,
        ),
        ("GET messages", app.list_messages(id, "").await),
        (
            "GET message",
            app.get(&format!("/sessions/{id}/messages/{message_id}"))
                .await,
        ),
        (
            "GET thread",
            app.get(&format!("/sessions/{id}/messages/{message_id}/thread"))
                .await,
        ),
        ("POST renew", app.renew(id).await),
        ("POST heartbeat", app.heartbeat(id).await),
        (
            "PATCH timeout",
            app.patch_timeout(id, &json!({"timeoutMinutes": 30})).await,
        ),
    ];

    // Assert
    for (route, reply) in replies {
        assert_eq!(reply.status.as_u16(), 410, "{route}: {}", reply.text);
        let error = reply.expect_error(410, "SESSION_EXPIRED");
        assert_eq!(error["message"], json!("Session has expired"), "{route}");
        let details = field_str(&error, "details");
        assert!(
            details.contains(id.as_str()) && details.contains(expires_at),
            "{route}: details {details:?} must name {id} and {expires_at}"
        );
    }
    let stored = app
        .list_sessions(&format!("agentId={}&status=expired", session.agent_id))
        .await
        .expect(200);
    assert_eq!(stored["sessions"][0]["messageCount"], json!(0));
    assert_eq!(stored["sessions"][0]["renewalCount"], json!(0));
    assert_eq!(
        stored["sessions"][0]["timeoutConfig"]["timeoutMinutes"],
        json!(5)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_session_can_still_be_deleted() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.expired_session().await;

    // Act
    let body = app.delete_session(&session.id).await.expect(200);

    // Assert
    assert_eq!(
        body,
        json!({"success": true,
               "message": format!("Session {} deleted successfully", session.id)})
    );
    app.get_session(&session.id)
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_session_is_404_once_swept() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.expired_session().await;
    let retention = Duration::from_secs(60 * 60);
    let expires_at = millis(&session.body["expiresAt"]);

    // Act: the first millisecond past the retention.
    let removed = sweep_at(&app, expires_at + 60 * MINUTE_MS + 1, retention).await;

    // Assert
    assert_eq!(removed, 1);
    let error = app
        .get_session(&session.id)
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    assert!(field_str(&error, "details").contains(&session.id));
    app.delete_session(&session.id)
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread")]
async fn session_info_of_an_expired_session_lists_no_time_left() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app.expired_session().await;

    // Act
    let listing = app.list_sessions("status=expired").await.expect(200);

    // Assert
    let info: &Value = &listing["sessions"][0];
    assert_eq!(info["sessionId"], json!(session.id));
    assert_eq!(info["timeRemaining"], json!(0));
    assert_eq!(info["isNearExpiration"], json!(false));
}
