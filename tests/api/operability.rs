//! What an operator watches: `/metrics` in Prometheus's text format, checked by promtool
//! under load, counting exactly the requests and writes sent; the key it needs on the API's
//! address and not on the metrics listener's; and the request id every response carries.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

const KEY: &str = "metrics-test-key";

/// The metrics, read from the listener at `addr` without a key.
async fn scrape(app: &TestApp, addr: std::net::SocketAddr) -> String {
    let response = app
        .client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("the metrics listener answers");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    response.text().await.expect("a body")
}

/// `promtool check metrics` accepts `text` (it lints names, types, help and units).
fn assert_promtool_accepts(text: &str) {
    use std::io::Write;
    let mut promtool = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => panic!(
            "promtool (Debian's prometheus package) cannot run: {error}; `make test-deps` installs it"
        ),
    };
    promtool
        .stdin
        .take()
        .expect("a stdin")
        .write_all(text.as_bytes())
        .expect("promtool reads the metrics");
    let checked = promtool.wait_with_output().expect("promtool ends");
    assert!(
        checked.status.success(),
        "promtool refused the metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// A server with an API key and a metrics listener, on a manual clock.
async fn spawn_metered_app() -> (TestApp, std::net::SocketAddr) {
    let app = spawn_app_with_clock(|config| {
        config.api_key = Some(KEY.into());
        config.metrics_addr = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await;
    let metrics_addr = app
        .server
        .metrics_addr()
        .expect("--metrics-addr opened a listener");
    (app, metrics_addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_the_requests_and_writes_sent_and_pass_promtool_under_load() {
    // Arrange
    let (app, metrics_addr) = spawn_metered_app().await;
    let app = Arc::new(app);
    let before = scrape(&app, metrics_addr).await;

    // Act: a load of appends that goes on until it has been scraped three times.
    let sessions = create_many_sessions(&app, 4).await;
    let scraped = tokio_util::sync::CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    for session in sessions.clone() {
        let (app, scraped) = (app.clone(), scraped.clone());
        load.spawn(async move {
            let mut sent = 0u64;
            while !scraped.is_cancelled() || sent == 0 {
                let content = json!({ "content": format!("m{sent}") });
                app.post_message(&session.id, &content).await.expect(201);
                sent += 1;
            }
            sent
        });
    }
    let mut mid_load = Vec::new();
    for _ in 0..3 {
        mid_load.push(scrape(&app, metrics_addr).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    scraped.cancel();
    let mut appended = 0;
    while let Some(sent) = load.join_next().await {
        appended += sent.expect("a load task");
    }
    // A renewal in the millisecond of the last one (the appends') would move nothing and
    // be refused.
    let target = &sessions[0].id;
    app.advance_clock(Duration::from_millis(1));
    app.renew(target).await.expect(200);
    app.advance_clock(Duration::from_millis(1));
    app.renew(target).await.expect(200);
    let missing = new_id();
    app.post_message(&missing, &json!({ "content": "to nobody" }))
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    let stream = app
        .api(Method::GET, &format!("/sessions/{target}/events"))
        .send()
        .await
        .expect("a stream opens");
    assert_eq!(stream.status(), 200);
    let during = scrape(&app, metrics_addr).await;
    drop(stream);

    // Assert
    for text in mid_load.iter().chain([&during]) {
        assert_promtool_accepts(text);
    }
    let moved = |name: &str, labels: &[(&str, &str)]| {
        metric_sample(&during, name, labels) - metric_sample(&before, name, labels)
    };
    let posted = [
        ("route", "/api/messaging/sessions/{sessionId}/messages"),
        ("method", "POST"),
    ];
    assert_eq!(
        moved(
            "sessiond_http_requests_total",
            &[posted[0], posted[1], ("status", "201")]
        ),
        appended as f64
    );
    assert_eq!(
        moved(
            "sessiond_http_request_duration_seconds_count",
            &[posted[0], posted[1], ("status", "201")]
        ),
        appended as f64
    );
    assert_eq!(
        moved(
            "sessiond_http_requests_total",
            &[posted[0], posted[1], ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "sessiond_http_requests_total",
            &[
                ("route", "/api/messaging/sessions"),
                ("method", "POST"),
                ("status", "201")
            ]
        ),
        4.0
    );
    assert_eq!(
        moved("sessiond_messages_appended_total", &[]),
        appended as f64
    );
    assert_eq!(
        moved("sessiond_events_published_total", &[("type", "message")]),
        appended as f64
    );
    assert_eq!(moved("sessiond_renewals_total", &[("kind", "manual")]), 2.0);
    assert_eq!(
        moved(
            "sessiond_writes_refused_total",
            &[("reason", "SESSION_NOT_FOUND")]
        ),
        1.0
    );
    // Every write went through a batch: the batches' writes add up to at least these.
    assert!(moved("sessiond_writer_batch_writes_sum", &[]) >= (appended + 4 + 2) as f64);
    assert!(moved("sessiond_writer_sync_seconds_count", &[]) >= 1.0);
    assert_eq!(metric_sample(&during, "sessiond_sessions_active", &[]), 4.0);
    assert_eq!(metric_sample(&during, "sessiond_streams_open", &[]), 1.0);
    assert_eq!(
        metric_sample(&during, "sessiond_storage_unavailable", &[]),
        0.0
    );
    assert!(metric_sample(&during, "sessiond_store_bytes", &[]) > 0.0);
    assert!(metric_sample(&during, "process_resident_memory_bytes", &[]) > 0.0);
    let engine = if app.store.is_some() {
        "postgres"
    } else {
        "sled"
    };
    assert_eq!(
        metric_sample(&during, "sessiond_build_info", &[("engine", engine)]),
        1.0
    );
    // Routes are named by template: no id appears in any series.
    for session in &sessions {
        assert!(!during.contains(&session.id), "a raw path in the metrics");
    }
    assert!(!during.contains(&missing));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_the_key_on_the_api_address_and_not_on_the_metrics_listener() {
    // Arrange
    let (app, metrics_addr) = spawn_metered_app().await;

    // Act
    let without_key = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("an answer");
    let with_key = app.send(app.request(Method::GET, "/metrics")).await;
    let listener_other_path = app
        .client
        .get(format!("http://{metrics_addr}/api/messaging/sessions"))
        .send()
        .await
        .expect("an answer");

    // Assert
    assert_eq!(without_key.status(), 401);
    assert_eq!(with_key.status, 200);
    assert!(with_key.text.contains("sessiond_http_requests_total"));
    assert!(!scrape(&app, metrics_addr).await.is_empty());
    // The metrics listener serves the metrics and nothing else.
    assert_eq!(listener_other_path.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_carries_a_request_id_the_clients_own_when_sane() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let kept = app
        .send(
            app.api(Method::GET, "/sessions/health")
                .header("X-Request-Id", "trace-42.a:b_c"),
        )
        .await;
    let replaced = app
        .send(
            app.api(Method::GET, "/sessions/health")
                .header("X-Request-Id", "not sane"),
        )
        .await;
    let first = app.get(&format!("/sessions/{}", new_id())).await;
    let second = app.get(&format!("/sessions/{}", new_id())).await;

    // Assert
    assert_eq!(kept.headers["x-request-id"], "trace-42.a:b_c");
    let made = replaced.headers["x-request-id"]
        .to_str()
        .expect("an ASCII id");
    assert_ne!(made, "not sane");
    assert!(uuid::Uuid::parse_str(made).is_ok(), "{made}");
    assert_eq!(first.status, 404);
    assert_ne!(
        first.headers["x-request-id"],
        second.headers["x-request-id"]
    );
}

/// The metric names an expression in `text` uses (`sessiond_…`, `process_…`), without the
/// histogram suffixes.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for prefix in ["sessiond_", "process_"] {
        for (start, _) in text.match_indices(prefix) {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name)
                .to_owned();
            names.insert(name);
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sample_dashboard_and_alerts_use_only_metrics_the_server_serves() {
    // Arrange
    let (app, metrics_addr) = spawn_metered_app().await;
    // Request series appear with the first request.
    app.get("/sessions/health").await.expect(200);
    let served = scrape(&app, metrics_addr).await;
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let dashboard = std::fs::read_to_string(docs.join("grafana-dashboard.json"))
        .expect("docs/grafana-dashboard.json");
    let alerts = docs.join("prometheus-alerts.yml");

    // Act
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let used = metric_names(&dashboard)
        .into_iter()
        .chain(metric_names(
            &std::fs::read_to_string(&alerts).expect("docs/prometheus-alerts.yml"),
        ))
        .collect::<std::collections::BTreeSet<_>>();
    let checked = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&alerts)
        .output()
        .expect("promtool runs; `make test-deps` installs it");

    // Assert
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() > 10));
    assert!(used.len() > 15, "{used:?}");
    for name in &used {
        assert!(
            served.contains(&format!("# TYPE {name} ")),
            "{name} is not served"
        );
    }
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_method_of_the_clients_own_is_counted_as_other_never_as_a_series_of_its_own() {
    // Arrange
    let (app, metrics_addr) = spawn_metered_app().await;
    let before = scrape(&app, metrics_addr).await;

    // Act
    for method in ["FOO1", "FOO2", "FOO3"] {
        let method = Method::from_bytes(method.as_bytes()).expect("a token is a method");
        app.send(app.api(method, "/sessions")).await;
    }
    let after = scrape(&app, metrics_addr).await;

    // Assert
    let others =
        |text: &str| metric_sample(text, "sessiond_http_requests_total", &[("method", "other")]);
    assert_eq!(others(&after) - others(&before), 3.0);
    assert!(!after.contains("FOO"), "a client's method became a label");
}
