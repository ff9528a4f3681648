//! The PostgreSQL store through the binary: a store moved sled → PostgreSQL → sled, and a
//! database the binary must refuse. Each test starts a throwaway cluster of its own.

use std::path::Path;
use std::process::Output;

#[path = "support/postgres.rs"]
mod postgres;
use postgres::Postgres;

// Only its way of running the binary is used here.
#[allow(dead_code)]
#[path = "support/server.rs"]
mod server;

const BINARY: &str = env!("CARGO_BIN_EXE_sessiond");

/// Runs the binary with `args`, feeding it `input` on stdin.
fn run(args: &[&str], input: &[u8]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    server::run_with_input(&args, input)
}

fn succeeded(output: Output) -> Output {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A sled store with branches, an agent's reply with an attachment, metadata and an empty
/// session, written through the library.
fn write_sled_store(dir: &Path) {
    use sessiond::domain::{Attachment, NewMessage, Session, TimeoutConfig, Timestamp};
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let store = sessiond::store::Store::open(dir, &Default::default()).expect("a new store");
        let timeout = TimeoutConfig {
            timeout_minutes: 60,
            auto_renew: true,
            max_duration_minutes: 720,
            warning_threshold_minutes: 5,
        };
        for n in 0..5 {
            let now = Timestamp::now();
            let session = Session::new(
                now.new_v7(),
                now.new_v7(),
                now.new_v7(),
                timeout,
                format!("{{\"n\":{n}}}"),
                now,
            );
            let (id, agent) = (session.id, session.agent_id);
            store.create_session(session).await.expect("stored");
            let mut first = None;
            for m in 0..n {
                let new = NewMessage {
                    content: format!("message {m}"),
                    // Every third one branches from the first.
                    parent_id: if m % 3 == 2 { first } else { None },
                    author_id: (m % 2 == 1).then_some(agent),
                    metadata_json: "{\"k\":\"v\"}".into(),
                    attachments: vec![Attachment {
                        kind: "file".into(),
                        url: format!("https://example.com/{m}"),
                        name: None,
                    }],
                };
                let appended = store
                    .append_message(id, new)
                    .await
                    .expect("stored")
                    .expect("accepted");
                first.get_or_insert(appended.message.id);
            }
        }
        store.close().expect("closed");
    });
}

#[test]
fn a_store_moved_from_sled_to_postgres_and_back_exports_the_same_every_time() {
    // Arrange
    let pg = Postgres::start();
    let (source, back) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_sled_store(source.path());
    let source_dir = source.path().to_str().unwrap();
    let back_dir = back.path().to_str().unwrap();
    let url = pg.url();

    // Act
    let from_sled = succeeded(run(&["export", "--data-dir", source_dir], b""));
    succeeded(run(&["import", "--store", &url], &from_sled.stdout));
    let from_postgres = succeeded(run(&["export", "--store", &url], b""));
    succeeded(run(
        &["import", "--data-dir", back_dir],
        &from_postgres.stdout,
    ));
    let from_sled_again = succeeded(run(&["export", "--data-dir", back_dir], b""));
    let check = run(&["check", "--data-dir", back_dir], b"");

    // Assert
    // The header, five sessions, the end line.
    assert_eq!(from_sled.stdout.iter().filter(|&&b| b == b'\n').count(), 7);
    assert_eq!(from_postgres.stdout, from_sled.stdout);
    assert_eq!(from_sled_again.stdout, from_sled.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert_eq!(pg.psql(&url, "SELECT count(*) FROM messages"), "10");
}

#[test]
fn a_database_of_a_newer_sessiond_is_refused_in_one_line_that_hides_the_password() {
    // Arrange: tables made by this sessiond, then marked as a newer schema's.
    let pg = Postgres::start();
    let url = pg.url();
    succeeded(run(&["export", "--store", &url], b""));
    pg.psql(
        &url,
        "UPDATE sessiond_meta SET value = 99 WHERE key = 'schema_version'",
    );
    // Trust authentication takes any password: one is given only to be hidden.
    let with_password = url.replacen("postgres@", "postgres:s3cret-pw@", 1);

    // Act
    let served = run(
        &["serve", "--addr", "127.0.0.1:0", "--store", &with_password],
        b"",
    );

    // Assert
    let stderr = String::from_utf8_lossy(&served.stderr);
    assert!(!served.status.success());
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("version 99") && last.contains("postgres:***@"),
        "{stderr}"
    );
}

/// A server on the PostgreSQL database at `url`.
async fn node(url: &str) -> sessiond::app::RunningServer {
    let config = sessiond::config::ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        store: Some(url.to_owned()),
        ..sessiond::config::ServeConfig::default()
    };
    sessiond::app::start(config).await.expect("a node starts")
}

fn api(server: &sessiond::app::RunningServer, path: &str) -> String {
    format!("http://{}/api/messaging{path}", server.local_addr())
}

/// Creates a session of a new agent and user on `server`, with `more` fields; its id.
async fn create_session(
    client: &reqwest::Client,
    server: &sessiond::app::RunningServer,
    mut more: serde_json::Value,
) -> String {
    more["agentId"] = serde_json::json!(uuid::Uuid::new_v4());
    more["userId"] = serde_json::json!(uuid::Uuid::new_v4());
    let response = client
        .post(api(server, "/sessions"))
        .json(&more)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: serde_json::Value = response.json().await.unwrap();
    created["sessionId"].as_str().unwrap().to_owned()
}

/// The newest hundred messages of `session`, as `server` lists them.
async fn newest_messages(
    client: &reqwest::Client,
    server: &sessiond::app::RunningServer,
    session: &str,
) -> serde_json::Value {
    let path = format!("/sessions/{session}/messages?limit=100");
    client
        .get(api(server, &path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Reads `(id, name)` of each event of an SSE response until `wanted` message events came.
async fn message_events(response: reqwest::Response, wanted: usize) -> Vec<(u64, String)> {
    let mut stream = response.bytes_stream();
    let (mut text, mut events) = (String::new(), Vec::new());
    let read = async {
        while events.iter().filter(|(_, name)| name == "message").count() < wanted {
            let chunk = stream.next().await.expect("the stream goes on").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = text.find("\n\n") {
                let frame: String = text.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(str::to_owned)
                };
                if let (Some(id), Some(name)) = (field("id: "), field("event: ")) {
                    events.push((id.parse().unwrap(), name));
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), read)
        .await
        .expect("every event arrives");
    events
}

use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_on_one_database_share_every_write_and_every_event_in_order() {
    // Arrange
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = pg.url();
    let nodes = [node(&url).await, node(&url).await, node(&url).await];
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let session = create_session(&client, &nodes[0], serde_json::json!({})).await;
    let events_path = format!("/sessions/{session}/events");
    let follower = client
        .get(api(&nodes[1], &events_path))
        .send()
        .await
        .unwrap();
    const APPENDS: usize = 30;

    // Act: appends spread over the three nodes, four at a time.
    let mut appends = tokio::task::JoinSet::new();
    for n in 0..APPENDS {
        let (client, target) = (
            client.clone(),
            api(&nodes[n % 3], &format!("/sessions/{session}/messages")),
        );
        appends.spawn(async move {
            let response = client
                .post(target)
                .json(&serde_json::json!({"content": format!("m{n}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
        });
        if appends.len() == 4 {
            appends.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = appends.join_next().await {
        done.unwrap();
    }
    let seen = message_events(follower, APPENDS).await;
    let resume_after = seen[APPENDS / 2].0;
    let resumed = client
        .get(api(&nodes[2], &events_path))
        .header("Last-Event-ID", resume_after.to_string())
        .send()
        .await
        .unwrap();
    let rest = message_events(resumed, APPENDS / 2 - 1).await;
    let listed = newest_messages(&client, &nodes[2], &session).await;

    // Assert
    let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    assert_eq!(
        seen.iter().filter(|(_, name)| name == "message").count(),
        APPENDS
    );
    let after: Vec<u64> = seen
        .iter()
        .filter(|(id, name)| *id > resume_after && name == "message")
        .map(|(id, _)| *id)
        .collect();
    let resumed_ids: Vec<u64> = rest
        .iter()
        .filter(|(_, name)| name == "message")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        resumed_ids, after,
        "resumed on another node: nothing lost or repeated"
    );
    let mut seqs: Vec<u64> = listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=APPENDS as u64).collect::<Vec<_>>());
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_announce_a_sessions_warning_and_expiry_once_each() {
    use sessiond::domain::{ManualClock, Timestamp};
    // Arrange: three nodes on one clock, so that each node's notifier finds the deadlines.
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = pg.url();
    let clock = std::sync::Arc::new(ManualClock::new(Timestamp::now()));
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let config = sessiond::config::ServeConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            store: Some(url.clone()),
            ..sessiond::config::ServeConfig::default()
        };
        nodes.push(
            sessiond::app::start_with_clock(config, clock.clone())
                .await
                .expect("a node starts"),
        );
    }
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    create_session(
        &client,
        &nodes[0],
        serde_json::json!({"timeoutConfig": {"timeoutMinutes": 5, "warningThresholdMinutes": 1}}),
    )
    .await;
    let count = |kind: &str| {
        pg.psql(
            &url,
            &format!("SELECT count(*) FROM events WHERE kind = '{kind}'"),
        )
    };
    // Each node's notifier looks every 250 ms: a few looks each.
    let looks = || tokio::time::sleep(std::time::Duration::from_millis(1500));

    // Act
    clock.advance(std::time::Duration::from_secs(4 * 60 + 30));
    looks().await;
    let expiring = count("session.expiring");
    clock.advance(std::time::Duration::from_secs(60));
    looks().await;

    // Assert
    assert_eq!(expiring, "1");
    assert_eq!(count("session.expiring"), "1");
    assert_eq!(count("session.expired"), "1");
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_answers_503_while_postgres_restarts_and_recovers_by_itself_losing_nothing() {
    // Arrange
    let pg = std::sync::Arc::new(tokio::task::spawn_blocking(Postgres::start).await.unwrap());
    let url = pg.url();
    let server = node(&url).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let session = create_session(&client, &server, serde_json::json!({})).await;
    let append = |n: usize| {
        let (client, target) = (
            client.clone(),
            api(&server, &format!("/sessions/{session}/messages")),
        );
        async move {
            let response = client
                .post(target)
                .json(&serde_json::json!({"content": format!("m{n}")}))
                .send()
                .await
                .unwrap();
            (n, response.status().as_u16())
        }
    };

    // Act: appends one after another while PostgreSQL restarts, then until one succeeds.
    let restarting = {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            pg.restart();
        })
    };
    let mut answers = Vec::new();
    let mut n = 0;
    while !restarting.is_finished() || answers.last().is_none_or(|(_, status)| *status != 201) {
        answers.push(append(n).await);
        n += 1;
        assert!(
            n < 5000,
            "the node never recovered: {:?}",
            &answers[answers.len() - 5..]
        );
    }
    restarting.await.unwrap();
    let after: Vec<(usize, u16)> = futures_util::future::join_all((n..n + 5).map(append)).await;
    let listed = newest_messages(&client, &server, &session).await;

    // Assert
    let statuses: std::collections::BTreeSet<u16> =
        answers.iter().map(|(_, status)| *status).collect();
    assert_eq!(
        statuses,
        [201, 503].into(),
        "appends while PostgreSQL was away: 503, and only then"
    );
    assert!(after.iter().all(|(_, status)| *status == 201), "{after:?}");
    let acknowledged: std::collections::BTreeSet<String> = answers
        .iter()
        .chain(&after)
        .filter(|(_, status)| *status == 201)
        .map(|(n, _)| format!("m{n}"))
        .collect();
    let stored: std::collections::BTreeSet<String> = listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["content"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        acknowledged.is_subset(&stored),
        "lost: {:?}",
        acknowledged.difference(&stored)
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_under_load_loses_no_acknowledged_write_and_the_others_keep_serving() {
    // Arrange: three sessiond processes on one database.
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = pg.url();
    let data = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let (url, dir) = (url.clone(), data.path().to_path_buf());
        nodes.push(
            tokio::task::spawn_blocking(move || server::Server::start(&dir, &["--store", &url]))
                .await
                .unwrap(),
        );
    }
    let bases: Vec<String> = nodes
        .iter()
        .map(|node| format!("http://{}/api/messaging", node.addr()))
        .collect();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let created: serde_json::Value = client
        .post(format!("{}/sessions", bases[1]))
        .json(&serde_json::json!({"agentId": uuid::Uuid::new_v4(), "userId": uuid::Uuid::new_v4()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = created["sessionId"].as_str().unwrap().to_owned();
    let killed_at = std::sync::Arc::new(std::sync::OnceLock::<std::time::Instant>::new());
    let stop_at = std::time::Instant::now() + std::time::Duration::from_millis(1500);

    // Act: six writers, each on one node, while the first node is killed.
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..6 {
        let (client, base, session, killed_at) = (
            client.clone(),
            bases[writer % 3].clone(),
            session.clone(),
            killed_at.clone(),
        );
        writers.spawn(async move {
            // (content, acknowledged after the kill)
            let mut acknowledged = Vec::new();
            let mut n = 0;
            while std::time::Instant::now() < stop_at {
                let content = format!("w{writer} m{n}");
                n += 1;
                let sent = client
                    .post(format!("{base}/sessions/{session}/messages"))
                    .json(&serde_json::json!({"content": content}))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 201 => {
                        let after_kill = killed_at.get().is_some();
                        acknowledged.push((content, after_kill));
                    }
                    // The killed node's connections fail; its writer waits out the run.
                    _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                }
            }
            acknowledged
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    nodes[0].child.kill().unwrap();
    nodes[0].child.wait().unwrap();
    killed_at.set(std::time::Instant::now()).unwrap();
    let mut acknowledged = Vec::new();
    while let Some(done) = writers.join_next().await {
        acknowledged.extend(done.unwrap());
    }
    // Every stored message, as the database has it.
    let rows = pg.psql(
        &url,
        &format!(
            "SELECT seq || ' ' || convert_from(content, 'UTF8') FROM messages \
             WHERE session_id = '{session}'"
        ),
    );

    // Assert
    let stored: Vec<(String, u64)> = rows
        .lines()
        .map(|row| {
            let (seq, content) = row.split_once(' ').unwrap();
            (content.to_owned(), seq.parse().unwrap())
        })
        .collect();
    let contents: std::collections::BTreeSet<&str> =
        stored.iter().map(|(content, _)| content.as_str()).collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .map(|(content, _)| content)
        .filter(|content| !contents.contains(content.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    assert!(
        acknowledged.iter().filter(|(_, after)| *after).count() > 10,
        "the other nodes went on serving after the kill"
    );
    let mut seqs: Vec<u64> = stored.iter().map(|(_, seq)| *seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
}
