//! Crash safety of the real binary: concurrent writers over HTTP (create, append, renew,
//! delete, and short-lived sessions that the sweeper keeps deleting), SIGKILL at a random
//! moment, restart on the same data, then: every acknowledged write is there, nothing is
//! half-applied, and `sessiond check` finds the store clean.
//!
//! The same on PostgreSQL (a throwaway cluster): the server killed, the database not.
//!
//! `SESSIOND_CRASH_ROUNDS` sets the number of kills (20 by default; `make crash` runs 200);
//! `SESSIOND_CRASH_SEED` replays a run.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

#[path = "support/postgres.rs"]
mod postgres;
use postgres::Postgres;

const BINARY: &str = env!("CARGO_BIN_EXE_sessiond");
const WRITERS: usize = 12;
const AGENT: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";
const USER: &str = "0b8e6ad8-5e9a-4b0c-9f0e-3d2f1c7a8b90";

/// xorshift64*: enough randomness for choosing operations and kill times, and replayable.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the server acknowledged for one session.
#[derive(Default, Debug)]
struct Acked {
    /// seq -> (message id, content)
    messages: HashMap<u64, (String, String)>,
    renewals_at_least: u64,
    /// A DELETE was sent: without its 200 the session may or may not be gone.
    delete_sent: bool,
    deleted: bool,
    /// Touched since the last verification.
    dirty: bool,
}

type Ledger = Arc<Mutex<HashMap<String, Acked>>>;

struct Server {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("an ephemeral port");
    listener.local_addr().expect("a bound address").port()
}

/// Where the store is: sled in a directory, or a PostgreSQL database.
enum StoreAt<'a> {
    Dir(&'a Path),
    Postgres(&'a str),
}

impl StoreAt<'_> {
    fn args(&self) -> Vec<std::ffi::OsString> {
        match self {
            StoreAt::Dir(dir) => vec!["--data-dir".into(), dir.into()],
            StoreAt::Postgres(url) => vec!["--store".into(), url.into()],
        }
    }
}

async fn start(store: &StoreAt<'_>) -> Server {
    let port = free_port();
    let child = Command::new(BINARY)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .args(store.args())
        .args([
            "--min-timeout-minutes",
            "0",
            "--sweep-interval-seconds",
            "1",
            "--expired-retention-minutes",
            "0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the sessiond binary starts");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}/api/messaging"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = client
            .get(format!("{}/sessions/health", server.base))
            .send()
            .await
        {
            if response.status() == 200 {
                return server;
            }
        }
        assert!(
            Instant::now() < deadline,
            "sessiond did not answer health within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> Option<Value> {
    let response = client.post(url).json(&body).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// One writer: random operations until the server dies under it.
async fn write_until_killed(base: String, ledger: Ledger, mut rng: Rng) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a client");
    let mut own: Vec<String> = Vec::new();
    let mut failures = 0;
    while failures < 3 {
        let pick = rng.below(100);
        let target = (!own.is_empty()).then(|| own[rng.below(own.len() as u64) as usize].clone());
        let ok = match (pick, target) {
            (0..=14, _) | (_, None) => {
                let body = json!({ "agentId": AGENT, "userId": USER });
                match post(&client, format!("{base}/sessions"), body).await {
                    Some(created) => {
                        let id = created["sessionId"].as_str().unwrap_or_default().to_owned();
                        ledger.lock().unwrap().insert(
                            id.clone(),
                            Acked {
                                dirty: true,
                                ..Acked::default()
                            },
                        );
                        own.push(id);
                        true
                    }
                    None => false,
                }
            }
            // Sessions that expire at once: the sweeper deletes them every second.
            (15..=29, _) => {
                let body = json!({ "agentId": AGENT, "userId": USER, "timeoutConfig": { "timeoutMinutes": 0 } });
                post(&client, format!("{base}/sessions"), body)
                    .await
                    .is_some()
            }
            (30..=79, Some(id)) => {
                let content = format!("m{}", rng.next());
                let url = format!("{base}/sessions/{id}/messages");
                match post(&client, url, json!({ "content": content })).await {
                    Some(message) => {
                        let seq = message["seq"].as_u64().unwrap_or_default();
                        let message_id = message["id"].as_str().unwrap_or_default().to_owned();
                        let mut ledger = ledger.lock().unwrap();
                        let acked = ledger.entry(id).or_default();
                        acked.messages.insert(seq, (message_id, content));
                        acked.dirty = true;
                        true
                    }
                    None => false,
                }
            }
            (80..=94, Some(id)) => {
                match post(&client, format!("{base}/sessions/{id}/renew"), json!({})).await {
                    Some(info) => {
                        let count = info["renewalCount"].as_u64().unwrap_or_default();
                        let mut ledger = ledger.lock().unwrap();
                        let acked = ledger.entry(id).or_default();
                        acked.renewals_at_least = acked.renewals_at_least.max(count);
                        acked.dirty = true;
                        true
                    }
                    None => false,
                }
            }
            (_, Some(id)) => {
                ledger
                    .lock()
                    .unwrap()
                    .entry(id.clone())
                    .or_default()
                    .delete_sent = true;
                let deleted = client.delete(format!("{base}/sessions/{id}")).send().await;
                match deleted {
                    Ok(response) if response.status() == 200 => {
                        let mut ledger = ledger.lock().unwrap();
                        let acked = ledger.entry(id.clone()).or_default();
                        acked.deleted = true;
                        acked.dirty = true;
                        own.retain(|own_id| *own_id != id);
                        true
                    }
                    _ => false,
                }
            }
        };
        failures = if ok { 0 } else { failures + 1 };
    }
}

/// Checks every acknowledged write of the sessions in `ids` against the server.
async fn verify(base: &str, ledger: &Ledger, only_dirty: bool) -> usize {
    let client = reqwest::Client::new();
    type Expected = (String, u64, bool, bool, HashMap<u64, (String, String)>);
    let snapshot: Vec<Expected> = {
        let mut ledger = ledger.lock().unwrap();
        ledger
            .iter_mut()
            .filter(|(_, acked)| !only_dirty || acked.dirty)
            .map(|(id, acked)| {
                acked.dirty = false;
                (
                    id.clone(),
                    acked.renewals_at_least,
                    acked.delete_sent,
                    acked.deleted,
                    acked.messages.clone(),
                )
            })
            .collect()
    };
    for (id, renewals, delete_sent, deleted, messages) in &snapshot {
        let response = client
            .get(format!("{base}/sessions/{id}"))
            .send()
            .await
            .expect("the server answers");
        if *deleted {
            assert_eq!(
                response.status(),
                404,
                "session {id} was deleted with a 200 but is back"
            );
            continue;
        }
        if *delete_sent && response.status() == 404 {
            // The unacknowledged DELETE was applied before the kill: allowed.
            continue;
        }
        assert_eq!(response.status(), 200, "acknowledged session {id} is gone");
        let info: Value = response.json().await.expect("SessionInfo");
        let count = info["messageCount"].as_u64().unwrap_or_default();
        let highest = messages.keys().max().copied().unwrap_or(0);
        assert!(
            count >= highest,
            "session {id}: messageCount {count} < acknowledged seq {highest}"
        );
        assert!(
            info["renewalCount"].as_u64().unwrap_or_default() >= *renewals,
            "session {id} lost a renewal"
        );
        // Every stored message, in seq order with no gap, and every acknowledged one as sent.
        let mut seen = 0;
        while seen < count {
            let url = format!("{base}/sessions/{id}/messages?afterSeq={seen}&limit=100");
            let page: Value = client
                .get(url)
                .send()
                .await
                .expect("a page")
                .json()
                .await
                .expect("JSON");
            let mut batch: Vec<&Value> = page["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .collect();
            batch.reverse();
            assert!(
                !batch.is_empty(),
                "session {id}: messages end at {seen} of {count}"
            );
            for message in batch {
                let seq = message["seq"].as_u64().unwrap_or_default();
                assert_eq!(seq, seen + 1, "session {id}: a gap in seqs");
                if let Some((message_id, content)) = messages.get(&seq) {
                    assert_eq!(
                        message["id"].as_str(),
                        Some(message_id.as_str()),
                        "session {id} seq {seq}"
                    );
                    assert_eq!(
                        message["content"].as_str(),
                        Some(content.as_str()),
                        "session {id} seq {seq}"
                    );
                }
                seen = seq;
            }
        }
    }
    snapshot.len()
}

fn check_store(store: &StoreAt<'_>) {
    let output = Command::new(BINARY)
        .arg("check")
        .args(store.args())
        .output()
        .expect("check runs");
    assert!(
        output.status.success(),
        "sessiond check failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("a temp dir");
    kill_and_verify(&StoreAt::Dir(dir.path()), 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_on_postgres() {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("a cluster");
    kill_and_verify(&StoreAt::Postgres(&pg.url()), 10).await;
}

/// Kills the server `SESSIOND_CRASH_ROUNDS` times (else `default_rounds`) under load and
/// verifies every acknowledged write after each restart.
async fn kill_and_verify(store: &StoreAt<'_>, default_rounds: usize) {
    let rounds: usize = std::env::var("SESSIOND_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_rounds);
    let seed: u64 = std::env::var("SESSIOND_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("crash test: {rounds} rounds, SESSIOND_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let ledger: Ledger = Arc::default();
    let mut server = start(store).await;
    for round in 0..rounds {
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                tokio::spawn(write_until_killed(
                    server.base.clone(),
                    ledger.clone(),
                    Rng(rng.next() | 1),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50 + rng.below(500))).await;
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("the killed server is reaped");
        for writer in writers {
            writer.await.expect("a writer task ends cleanly");
        }
        check_store(store);
        server = start(store).await;
        let verified = verify(&server.base, &ledger, true).await;
        println!("round {round}: verified {verified} sessions touched this round");
    }
    let total = verify(&server.base, &ledger, false).await;
    let acked_messages: usize = ledger
        .lock()
        .unwrap()
        .values()
        .map(|a| a.messages.len())
        .sum();
    println!("all rounds: verified {total} sessions and {acked_messages} acknowledged messages");
    assert!(
        acked_messages > 0,
        "the writers got nothing acknowledged: the test tested nothing"
    );
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    check_store(store);
}
