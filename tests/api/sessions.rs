//! POST /sessions, GET /sessions/{id}, GET /sessions (list) and GET /sessions/health.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::helpers::{
    assert_canonical_uuid, create_many_sessions, embedded_app, field_str, field_u64, millis,
    new_id, spawn_app, spawn_app_allowing_instant_expiry, spawn_app_with_clock, Api, MINUTE_MS,
    T0_MS,
};

const SESSION_INFO_FIELDS: [&str; 12] = [
    "sessionId",
    "agentId",
    "userId",
    "createdAt",
    "lastActivity",
    "metadata",
    "expiresAt",
    "timeoutConfig",
    "renewalCount",
    "timeRemaining",
    "isNearExpiration",
    "messageCount",
];

// ---------------------------------------------------------------------------------------------
// POST /sessions

#[tokio::test(flavor = "multi_thread")]
async fn create_session_returns_201_with_the_full_default_config() {
    // Arrange
    let app = spawn_app().await;
    let (agent, user) = (new_id(), new_id());

    // Act
    let created = app
        .try_create_session(&json!({"agentId": agent, "userId": user}))
        .await
        .expect(201);

    // Assert
    assert_canonical_uuid(field_str(&created, "sessionId"));
    assert_eq!(created["agentId"], json!(agent));
    assert_eq!(created["userId"], json!(user));
    assert!(created["metadata"].is_object(), "metadata: {created}");
    assert_eq!(
        created["timeoutConfig"],
        json!({"timeoutMinutes": 30, "autoRenew": true, "maxDurationMinutes": 720,
               "warningThresholdMinutes": 5})
    );
    let created_at = millis(&created["createdAt"]);
    assert_eq!(millis(&created["expiresAt"]) - created_at, 30 * MINUTE_MS);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_session_defaults_missing_limits_from_the_given_timeout() {
    // Arrange
    let app = spawn_app_allowing_instant_expiry().await;

    // Act
    let long = app
        .create_session_with_timeout(json!({"timeoutMinutes": 1000, "warningThresholdMinutes": 10}))
        .await;
    let short = app
        .create_session_with_timeout(json!({"timeoutMinutes": 2}))
        .await;
    let medium = app
        .create_session_with_timeout(json!({"timeoutMinutes": 10, "autoRenew": false}))
        .await;

    // Assert
    assert_eq!(
        long.body["timeoutConfig"],
        json!({"timeoutMinutes": 1000, "autoRenew": true, "maxDurationMinutes": 1000,
               "warningThresholdMinutes": 10})
    );
    assert_eq!(
        short.body["timeoutConfig"],
        json!({"timeoutMinutes": 2, "autoRenew": true, "maxDurationMinutes": 720,
               "warningThresholdMinutes": 2})
    );
    assert_eq!(
        medium.body["timeoutConfig"],
        json!({"timeoutMinutes": 10, "autoRenew": false, "maxDurationMinutes": 720,
               "warningThresholdMinutes": 5})
    );
    let long_created = millis(&long.body["createdAt"]);
    assert_eq!(
        millis(&long.body["expiresAt"]) - long_created,
        1000 * MINUTE_MS
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn create_session_accepts_a_full_config_at_the_bounds() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let session = app
        .create_session_with_timeout(json!({"timeoutMinutes": 1440, "autoRenew": false,
                                            "maxDurationMinutes": 2880,
                                            "warningThresholdMinutes": 0}))
        .await;
    let smallest = app
        .create_session_with_timeout(json!({"timeoutMinutes": 5, "maxDurationMinutes": 5}))
        .await;

    // Assert
    assert_eq!(
        session.body["timeoutConfig"],
        json!({"timeoutMinutes": 1440, "autoRenew": false, "maxDurationMinutes": 2880,
               "warningThresholdMinutes": 0})
    );
    assert_eq!(
        smallest.body["timeoutConfig"],
        json!({"timeoutMinutes": 5, "autoRenew": true, "maxDurationMinutes": 5,
               "warningThresholdMinutes": 5})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn create_session_rejects_out_of_range_timeout_fields_naming_the_field() {
    // Arrange
    let app = embedded_app().await;
    let cases = [
        (json!({"timeoutMinutes": 4}), "timeoutMinutes"),
        (json!({"timeoutMinutes": 0}), "timeoutMinutes"),
        (json!({"timeoutMinutes": 1441}), "timeoutMinutes"),
        (json!({"maxDurationMinutes": 2881}), "maxDurationMinutes"),
        (
            json!({"timeoutMinutes": 60, "maxDurationMinutes": 30}),
            "maxDurationMinutes|timeoutMinutes",
        ),
        (
            json!({"warningThresholdMinutes": 31}),
            "warningThresholdMinutes",
        ),
        (
            json!({"timeoutMinutes": 10, "warningThresholdMinutes": 11}),
            "warningThresholdMinutes",
        ),
    ];

    for (timeout_config, fields) in cases {
        // Act
        let reply = app
            .try_create_session(&json!({"agentId": new_id(), "userId": new_id(),
                                        "timeoutConfig": timeout_config}))
            .await;

        // Assert: a conflict between two fields may be reported on either of them.
        let error = reply.expect_error(400, "INVALID_TIMEOUT_CONFIG");
        let message = field_str(&error, "message");
        assert!(
            fields.split('|').any(|field| message.contains(field)),
            "message {message:?} must name {fields} (config {timeout_config})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_range_error_states_the_range() {
    // Arrange
    let app = embedded_app().await;

    // Act
    let reply = app
        .try_create_session(&json!({"agentId": new_id(), "userId": new_id(),
                                    "timeoutConfig": {"timeoutMinutes": 1441}}))
        .await;

    // Assert
    let error = reply.expect_error(400, "INVALID_TIMEOUT_CONFIG");
    let message = field_str(&error, "message");
    assert!(
        message.contains('5') && message.contains("1440"),
        "message {message:?} must state the range 5..=1440"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn create_session_rejects_mistyped_timeout_fields() {
    // Arrange
    let app = embedded_app().await;
    let cases = [
        (json!({"timeoutMinutes": 30.0}), "timeoutMinutes"),
        (json!({"timeoutMinutes": "30"}), "timeoutMinutes"),
        (json!({"timeoutMinutes": -30}), "timeoutMinutes"),
        (json!({"timeoutMinutes": true}), "timeoutMinutes"),
        (json!({"maxDurationMinutes": 60.5}), "maxDurationMinutes"),
        (
            json!({"warningThresholdMinutes": "5"}),
            "warningThresholdMinutes",
        ),
        (
            json!({"warningThresholdMinutes": -1}),
            "warningThresholdMinutes",
        ),
        (json!({"autoRenew": "yes"}), "autoRenew"),
        (json!({"autoRenew": 1}), "autoRenew"),
    ];

    for (timeout_config, field) in cases {
        // Act
        let reply = app
            .try_create_session(&json!({"agentId": new_id(), "userId": new_id(),
                                        "timeoutConfig": timeout_config}))
            .await;

        // Assert
        let error = reply.expect_error(400, "INVALID_TIMEOUT_CONFIG");
        let message = field_str(&error, "message");
        assert!(
            message.contains(field),
            "message {message:?} must name {field} (config {timeout_config})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_session_is_not_stored() {
    // Arrange
    let app = embedded_app().await;
    let agent = new_id();

    // Act
    app.try_create_session(&json!({"agentId": agent, "userId": new_id(),
                                   "timeoutConfig": {"timeoutMinutes": 99999}}))
        .await
        .expect_error(400, "INVALID_TIMEOUT_CONFIG");

    // Assert
    let listed = app
        .list_sessions(&format!("agentId={agent}&status=all"))
        .await
        .expect(200);
    assert_eq!(listed["total"], json!(0));
    assert_eq!(listed["stats"]["totalSessions"], json!(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn create_session_without_agent_or_user_is_missing_fields() {
    // Arrange
    let app = embedded_app().await;
    let bodies = [
        json!({}),
        json!({"userId": new_id()}),
        json!({"agentId": new_id()}),
        json!({"agentId": null, "userId": new_id()}),
        json!({"agentId": new_id(), "userId": null}),
    ];

    for body in bodies {
        // Act
        let reply = app.try_create_session(&body).await;

        // Assert
        reply.expect_error(400, "MISSING_FIELDS");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_session_rejects_ids_that_are_not_uuids() {
    // Arrange
    let app = embedded_app().await;
    let bodies = [
        json!({"agentId": "agent-1", "userId": new_id()}),
        json!({"agentId": new_id(), "userId": "123"}),
        json!({"agentId": "", "userId": new_id()}),
        json!({"agentId": 42, "userId": new_id()}),
        json!({"agentId": new_id(), "userId": "3c90c3cc-0d44-4b50-8888-8dd25736052"}),
    ];

    for body in bodies {
        // Act
        let reply = app.try_create_session(&body).await;

        // Assert
        reply.expect_error(400, "INVALID_UUID");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_session_rejects_metadata_that_is_not_an_object() {
    // Arrange
    let app = embedded_app().await;

    for metadata in [json!("text"), json!([1, 2]), json!(5), json!(true)] {
        // Act
        let reply = app
            .try_create_session(&json!({"agentId": new_id(), "userId": new_id(),
                                        "metadata": metadata}))
            .await;

        // Assert
        reply.expect_error(400, "INVALID_METADATA");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_session_limits_metadata_to_10_kib_of_compact_json() {
    // Arrange: `{"k":"…"}` is 8 bytes plus the string.
    let app = spawn_app().await;
    let at_limit = json!({"k": "x".repeat(10240 - 8)});
    let over_limit = json!({"k": "x".repeat(10240 - 8 + 1)});
    assert_eq!(serde_json::to_string(&at_limit).unwrap().len(), 10240);

    // Act
    let accepted = app
        .try_create_session(&json!({"agentId": new_id(), "userId": new_id(),
                                    "metadata": at_limit}))
        .await;
    let rejected = app
        .try_create_session(&json!({"agentId": new_id(), "userId": new_id(),
                                    "metadata": over_limit}))
        .await;

    // Assert
    let accepted = accepted.expect(201);
    assert_eq!(accepted["metadata"], at_limit);
    rejected.expect_error(400, "INVALID_METADATA");
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_limit_counts_utf8_bytes_not_characters() {
    // Arrange: "é" is 2 bytes; `{"k":"…"}` adds 8.
    let app = spawn_app().await;
    let at_limit = json!({"k": "é".repeat((10240 - 8) / 2)});
    let over_limit = json!({"k": format!("{}x", "é".repeat((10240 - 8) / 2))});
    assert_eq!(serde_json::to_string(&at_limit).unwrap().len(), 10240);

    // Act
    let accepted = app
        .try_create_session(&json!({"agentId": new_id(), "userId": new_id(),
                                    "metadata": at_limit}))
        .await;
    let rejected = app
        .try_create_session(&json!({"agentId": new_id(), "userId": new_id(),
                                    "metadata": over_limit}))
        .await;

    // Assert
    accepted.expect(201);
    rejected.expect_error(400, "INVALID_METADATA");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_session_stores_metadata_and_ignores_unknown_fields() {
    // Arrange
    let app = spawn_app().await;
    let metadata = json!({"channel": "web", "nested": {"n": 1, "list": [true, null]}});

    // Act
    let created = app
        .try_create_session(&json!({"agentId": new_id(), "userId": new_id(),
                                    "metadata": metadata, "colour": "blue",
                                    "timeoutConfig": {"timeoutMinutes": 45, "unknown": 1}}))
        .await
        .expect(201);

    // Assert
    assert_eq!(created["metadata"], metadata);
    assert_eq!(created["timeoutConfig"]["timeoutMinutes"], json!(45));
    assert!(created.get("colour").is_none());
    let info = app
        .get_session(field_str(&created, "sessionId"))
        .await
        .expect(200);
    assert_eq!(info["metadata"], metadata);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_session_treats_null_optional_fields_as_absent() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let top_level = app
        .try_create_session(&json!({"agentId": new_id(), "userId": new_id(),
                                    "metadata": null, "timeoutConfig": null}))
        .await;
    let nested = app
        .try_create_session(&json!({"agentId": new_id(), "userId": new_id(),
                                    "timeoutConfig": {"timeoutMinutes": null, "autoRenew": null,
                                                      "maxDurationMinutes": null,
                                                      "warningThresholdMinutes": null}}))
        .await;

    // Assert
    let default_config = json!({"timeoutMinutes": 30, "autoRenew": true,
                                "maxDurationMinutes": 720, "warningThresholdMinutes": 5});
    let top_level = top_level.expect(201);
    assert_eq!(top_level["timeoutConfig"], default_config);
    assert!(top_level["metadata"].is_object());
    assert_eq!(nested.expect(201)["timeoutConfig"], default_config);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_session_accepts_any_uuid_form_and_returns_it_lowercase_hyphenated() {
    // Arrange
    let app = spawn_app().await;
    let (agent, user) = (new_id(), new_id());
    let forms = [
        (agent.to_uppercase(), user.to_uppercase()),
        (format!("{{{agent}}}"), format!("{{{user}}}")),
        (agent.replace('-', ""), user.replace('-', "").to_uppercase()),
        (format!("urn:uuid:{agent}"), user.clone()),
    ];

    for (agent_form, user_form) in forms {
        // Act
        let created = app
            .try_create_session(&json!({"agentId": agent_form, "userId": user_form}))
            .await
            .expect(201);

        // Assert
        assert_eq!(created["agentId"], json!(agent));
        assert_eq!(created["userId"], json!(user));
    }
}

// ---------------------------------------------------------------------------------------------
// GET /sessions/{id}

#[tokio::test(flavor = "multi_thread")]
async fn get_session_returns_session_info() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with(json!({"metadata": {"topic": "billing"}}))
        .await;

    // Act
    let info = app.get_session(&session.id).await.expect(200);

    // Assert
    for field in SESSION_INFO_FIELDS {
        assert!(
            info.get(field).is_some(),
            "SessionInfo lacks {field}: {info}"
        );
    }
    assert_eq!(info["sessionId"], json!(session.id));
    assert_eq!(info["agentId"], json!(session.agent_id));
    assert_eq!(info["userId"], json!(session.user_id));
    assert_eq!(info["createdAt"], session.body["createdAt"]);
    assert_eq!(info["expiresAt"], session.body["expiresAt"]);
    assert_eq!(info["timeoutConfig"], session.body["timeoutConfig"]);
    assert_eq!(info["metadata"], json!({"topic": "billing"}));
    assert_eq!(info["renewalCount"], json!(0));
    assert_eq!(info["messageCount"], json!(0));
    assert_eq!(info["isNearExpiration"], json!(false));
    assert!(millis(&info["lastActivity"]) >= millis(&info["createdAt"]));
    assert_eq!(millis(&info["createdAt"]), T0_MS);
    assert_eq!(
        field_u64(&info, "timeRemaining"),
        30 * MINUTE_MS,
        "a fresh 30-minute session"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn time_remaining_counts_down_with_the_clock_to_zero_at_expiry() {
    // Arrange
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with_timeout(json!({"autoRenew": false}))
        .await;

    // Act
    let mut remaining = Vec::new();
    for at in [
        T0_MS + 1,
        T0_MS + 29 * MINUTE_MS,
        T0_MS + 30 * MINUTE_MS - 1,
        T0_MS + 30 * MINUTE_MS,
    ] {
        app.set_clock(at);
        let listing = app.list_sessions("status=all").await.expect(200);
        remaining.push(field_u64(&listing["sessions"][0], "timeRemaining"));
    }
    let listing = app.list_sessions("status=expired").await.expect(200);

    // Assert
    assert_eq!(remaining, [30 * MINUTE_MS - 1, MINUTE_MS, 1, 0]);
    assert_eq!(listing["sessions"][0]["sessionId"], json!(session.id));
}

#[tokio::test(flavor = "multi_thread")]
async fn session_inside_its_warning_threshold_is_near_expiration() {
    // Arrange: a 5-minute session warns during its last 5 minutes, i.e. from the start.
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with_timeout(json!({"timeoutMinutes": 5, "warningThresholdMinutes": 5}))
        .await;
    let never_warns = app
        .create_session_with_timeout(json!({"timeoutMinutes": 5, "warningThresholdMinutes": 0}))
        .await;

    // Act
    let info = app.get_session(&session.id).await.expect(200);
    let quiet = app.get_session(&never_warns.id).await.expect(200);

    // Assert
    assert_eq!(info["isNearExpiration"], json!(true));
    assert_eq!(field_u64(&info, "timeRemaining"), 5 * MINUTE_MS);
    assert_eq!(quiet["isNearExpiration"], json!(false));
}

#[tokio::test(flavor = "multi_thread")]
async fn session_is_near_expiration_from_the_threshold_until_it_expires() {
    // Arrange: a 30-minute session without auto-renew warns during its last 5 minutes.
    let app = spawn_app_with_clock(|_| {}).await;
    let session = app
        .create_session_with_timeout(json!({"autoRenew": false}))
        .await;

    // Act
    let mut near = Vec::new();
    for at in [
        T0_MS + 25 * MINUTE_MS - 1,
        T0_MS + 25 * MINUTE_MS,
        T0_MS + 30 * MINUTE_MS - 1,
    ] {
        app.set_clock(at);
        let info = app.get_session(&session.id).await.expect(200);
        near.push(info["isNearExpiration"].clone());
    }
    app.set_clock(T0_MS + 30 * MINUTE_MS);
    let expired = app.list_sessions("status=expired").await.expect(200);

    // Assert: not near once expired (there is no time left to warn about).
    assert_eq!(near, [json!(false), json!(true), json!(true)]);
    assert_eq!(expired["sessions"][0]["isNearExpiration"], json!(false));
}

#[tokio::test(flavor = "multi_thread")]
async fn get_session_counts_its_messages() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    let other = app.create_session().await;
    app.append_many(&session.id, 3).await;
    app.append(&other.id, "elsewhere").await;

    // Act
    let info = app.get_session(&session.id).await.expect(200);

    // Assert
    assert_eq!(info["messageCount"], json!(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_session_is_404_naming_the_id() {
    // Arrange
    let app = spawn_app().await;
    let missing = new_id();

    // Act
    let reply = app.get_session(&missing).await;

    // Assert
    let error = reply.expect_error(404, "SESSION_NOT_FOUND");
    assert_eq!(error["message"], json!("Session not found"));
    assert!(
        field_str(&error, "details").contains(&missing),
        "details must name {missing}: {error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_session_id_in_the_path_is_invalid_uuid() {
    // Arrange
    let app = embedded_app().await;

    for bad in ["not-a-uuid", "123", "3c90c3cc-0d44-4b50-8888-8dd25736052g"] {
        // Act
        let reply = app.get_session(bad).await;

        // Assert
        reply.expect_error(400, "INVALID_UUID");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn session_path_accepts_uppercase_and_unhyphenated_ids() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;

    for form in [session.id.to_uppercase(), session.id.replace('-', "")] {
        // Act
        let info = app.get_session(&form).await.expect(200);

        // Assert
        assert_eq!(info["sessionId"], json!(session.id));
    }
}

// ---------------------------------------------------------------------------------------------
// GET /sessions

fn listed_ids(listing: &Value) -> Vec<String> {
    listing["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("sessions is not an array: {listing}"))
        .iter()
        .map(|s| field_str(s, "sessionId").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_returns_session_infos_with_total_cursor_and_stats() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    app.append(&session.id, "hello").await;

    // Act
    let listing = app.list_sessions("").await.expect(200);

    // Assert
    assert_eq!(listing["total"], json!(1));
    assert_eq!(listing["nextCursor"], Value::Null);
    assert_eq!(
        listing["stats"],
        json!({"totalSessions": 1, "activeSessions": 1, "expiredSessions": 0})
    );
    let info = &listing["sessions"][0];
    for field in SESSION_INFO_FIELDS {
        assert!(
            info.get(field).is_some(),
            "SessionInfo lacks {field}: {info}"
        );
    }
    assert_eq!(info["sessionId"], json!(session.id));
    assert_eq!(info["messageCount"], json!(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_filters_by_agent_and_by_user() {
    // Arrange
    let app = spawn_app().await;
    let (agent, user) = (new_id(), new_id());
    let both = app
        .create_session_with(json!({"agentId": agent, "userId": user}))
        .await;
    let agent_only = app.create_session_with(json!({"agentId": agent})).await;
    let user_only = app.create_session_with(json!({"userId": user})).await;
    app.create_session().await;

    // Act
    let by_agent = app
        .list_sessions(&format!("agentId={agent}"))
        .await
        .expect(200);
    let by_user = app
        .list_sessions(&format!("userId={}", user.to_uppercase()))
        .await
        .expect(200);
    let by_both = app
        .list_sessions(&format!("agentId={agent}&userId={user}"))
        .await
        .expect(200);

    // Assert
    let as_set = |ids: Vec<String>| ids.into_iter().collect::<HashSet<_>>();
    assert_eq!(
        as_set(listed_ids(&by_agent)),
        as_set(vec![both.id.clone(), agent_only.id])
    );
    assert_eq!(by_agent["total"], json!(2));
    assert_eq!(
        as_set(listed_ids(&by_user)),
        as_set(vec![both.id.clone(), user_only.id])
    );
    assert_eq!(by_user["total"], json!(2));
    assert_eq!(listed_ids(&by_both), vec![both.id]);
    assert_eq!(by_both["total"], json!(1));
    assert_eq!(by_agent["stats"]["totalSessions"], json!(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_filters_by_status_and_reports_store_wide_stats() {
    // Arrange: a 5-minute session, expired by moving the clock 5 minutes on.
    let app = spawn_app_with_clock(|_| {}).await;
    let active_a = app.create_session().await;
    let active_b = app.create_session().await;
    let expired = app
        .create_session_with_timeout(json!({"timeoutMinutes": 5, "autoRenew": false}))
        .await;
    app.set_clock(millis(&expired.body["expiresAt"]));

    // Act
    let default = app.list_sessions("").await.expect(200);
    let active = app.list_sessions("status=active").await.expect(200);
    let expired_only = app.list_sessions("status=expired").await.expect(200);
    let all = app.list_sessions("status=all").await.expect(200);

    // Assert
    let as_set = |ids: Vec<String>| ids.into_iter().collect::<HashSet<_>>();
    let active_ids = as_set(vec![active_a.id.clone(), active_b.id.clone()]);
    assert_eq!(as_set(listed_ids(&default)), active_ids);
    assert_eq!(as_set(listed_ids(&active)), active_ids);
    assert_eq!(default["total"], json!(2));
    assert_eq!(listed_ids(&expired_only), vec![expired.id.clone()]);
    assert_eq!(expired_only["total"], json!(1));
    let expired_info = &expired_only["sessions"][0];
    assert_eq!(expired_info["timeRemaining"], json!(0));
    assert_eq!(expired_info["isNearExpiration"], json!(false));
    assert_eq!(
        as_set(listed_ids(&all)),
        as_set(vec![active_a.id, active_b.id, expired.id])
    );
    assert_eq!(all["total"], json!(3));
    let stats = json!({"totalSessions": 3, "activeSessions": 2, "expiredSessions": 1});
    for listing in [&default, &active, &expired_only, &all] {
        assert_eq!(listing["stats"], stats);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters_accept_percent_encoded_braced_ids() {
    // Arrange
    let app = spawn_app().await;
    let session = app.create_session().await;
    app.create_session().await;

    // Act
    let listing = app
        .list_sessions(&format!(
            "agentId=%7B{}%7D",
            session.agent_id.to_uppercase()
        ))
        .await
        .expect(200);

    // Assert
    assert_eq!(listed_ids(&listing), vec![session.id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_rejects_an_unknown_status() {
    // Arrange
    let app = embedded_app().await;

    for query in ["status=bogus", "status=ACTIVE", "status="] {
        // Act
        let reply = app.list_sessions(query).await;

        // Assert
        reply.expect_error(400, "INVALID_QUERY");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_rejects_filter_ids_that_are_not_uuids() {
    // Arrange
    let app = embedded_app().await;

    for query in ["agentId=agent-1", "userId=42"] {
        // Act
        let reply = app.list_sessions(query).await;

        // Assert
        reply.expect_error(400, "INVALID_UUID");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_rejects_a_limit_that_is_not_a_plain_integer() {
    // Arrange
    let app = embedded_app().await;
    app.create_session().await;

    for limit in [
        "%2B5",
        "1e3",
        "",
        "abc",
        "5.0",
        "0x10",
        "99999999999999999999",
    ] {
        // Act
        let reply = app.list_sessions(&format!("limit={limit}")).await;

        // Assert
        reply.expect_error(400, "INVALID_PAGINATION");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_rejects_a_cursor_it_did_not_issue() {
    // Arrange
    let app = spawn_app().await;
    for _ in 0..3 {
        app.create_session().await;
    }
    let first = app.list_sessions("limit=1").await.expect(200);
    let issued = field_str(&first, "nextCursor").to_owned();

    for forged in ["forged", "AAAAAAAAAAAAAAAA", "!!!", &format!("{issued}x")] {
        // Act
        let reply = app.list_sessions(&format!("cursor={forged}")).await;

        // Assert
        reply.expect_error(400, "INVALID_PAGINATION");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_clamps_small_limits_to_one() {
    // Arrange
    let app = spawn_app().await;
    for _ in 0..3 {
        app.create_session().await;
    }

    for limit in ["0", "-5", "1"] {
        // Act
        let listing = app
            .list_sessions(&format!("limit={limit}"))
            .await
            .expect(200);

        // Assert
        assert_eq!(listed_ids(&listing).len(), 1, "limit={limit}");
        assert_eq!(listing["total"], json!(3));
        assert!(listing["nextCursor"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_defaults_to_and_clamps_at_1000() {
    // Arrange
    let app = Arc::new(spawn_app().await);
    create_many_sessions(&app, 1001).await;

    // Act
    // elizaOS's client lists with no parameters and reads one page.
    let default = app.list_sessions("").await.expect(200);
    let huge = app.list_sessions("limit=5000").await.expect(200);
    let rest = app
        .list_sessions(&format!(
            "limit=5000&cursor={}",
            field_str(&huge, "nextCursor")
        ))
        .await
        .expect(200);

    // Assert
    assert_eq!(listed_ids(&default).len(), 1000);
    assert_eq!(default["nextCursor"], huge["nextCursor"]);
    assert_eq!(default["total"], json!(1001));
    assert_eq!(listed_ids(&huge).len(), 1000);
    assert_eq!(huge["total"], json!(1001));
    assert_eq!(listed_ids(&rest).len(), 1);
    assert_eq!(rest["nextCursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_lists_newest_first() {
    // Arrange
    let app = spawn_app().await;
    let mut created = Vec::new();
    for _ in 0..20 {
        created.push(app.create_session().await);
    }

    // Act
    let listing = app.list_sessions("").await.expect(200);

    // Assert
    let sessions = listing["sessions"].as_array().expect("an array");
    assert_eq!(sessions.len(), 20);
    let created_at: Vec<u64> = sessions.iter().map(|s| millis(&s["createdAt"])).collect();
    assert!(
        created_at.windows(2).all(|pair| pair[0] >= pair[1]),
        "not newest first: {created_at:?}"
    );
    let expected: HashSet<String> = created.into_iter().map(|s| s.id).collect();
    assert_eq!(
        listed_ids(&listing).into_iter().collect::<HashSet<_>>(),
        expected
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_sessions_paging_visits_every_session_exactly_once() {
    // Arrange
    let app = spawn_app().await;
    let agent = new_id();
    let mut expected = HashSet::new();
    for _ in 0..11 {
        expected.insert(app.create_session_with(json!({"agentId": agent})).await.id);
    }
    app.create_session().await; // another agent's session is never listed

    // Act
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("agentId={agent}&limit=3&cursor={cursor}"),
            None => format!("agentId={agent}&limit=3"),
        };
        let page = app.list_sessions(&query).await.expect(200);
        pages += 1;
        assert_eq!(page["total"], json!(11), "total counts across pages");
        assert_eq!(page["stats"]["totalSessions"], json!(12));
        seen.extend(listed_ids(&page));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging does not terminate");
    }

    // Assert
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 11, "a session was listed twice: {seen:?}");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), expected);
}

// ---------------------------------------------------------------------------------------------
// GET /sessions/health

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_active_and_expiring_sessions() {
    // Arrange: one session expired by the clock, then one quiet and one inside its warning.
    let app = spawn_app_with_clock(|_| {}).await;
    app.create_session_with_timeout(json!({"timeoutMinutes": 5, "warningThresholdMinutes": 0}))
        .await;
    app.set_clock(T0_MS + 5 * MINUTE_MS);
    app.create_session().await;
    app.create_session_with_timeout(json!({"timeoutMinutes": 5, "warningThresholdMinutes": 5}))
        .await;

    // Act
    let health = app.get("/sessions/health").await.expect(200);

    // Assert
    assert_eq!(health["status"], json!("healthy"));
    assert_eq!(health["activeSessions"], json!(2));
    assert_eq!(health["expiringSoon"], json!(1));
    assert_eq!(millis(&health["timestamp"]), T0_MS + 5 * MINUTE_MS);
    assert!(
        health["uptime"].as_f64().is_some_and(|s| s >= 0.0),
        "uptime must be a number of seconds: {health}"
    );
}
