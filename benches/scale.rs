//! Scale benchmark: a store of 1M sessions and 10M messages, loaded through the library,
//! then measured the way a restarted server sees it.
//!
//! 1. Load (this process): `Store::import_session` from 64 tasks, 10 messages per session.
//!    One session in ten times out after 5 minutes, the others after 60.
//! 2. Disk: bytes of the data directory against the raw payload — the stored fields
//!    themselves: content and metadata JSON as text, ids as 16 bytes, numbers and times as
//!    8 (4 for the timeout settings).
//! 3. Restart (a child process, so that memory is its own): start the server on the store
//!    and time it until it listens; RSS then; latency of health, a list page, a messages page
//!    and durable appends at 32 concurrent requests.
//! 4. Sweep: move the server's clock past the short sessions' expiry and run the sweeper's
//!    `sweep_once`, which removes them (while the notifier records their `session.expired`)
//!    as durable appends go on; p99 of those appends against the idle p99, and how long the sweep took.
//!
//! `cargo bench --bench scale` (the full size; the load takes several minutes and is kept
//! in `scale-store-<sessions>` in the target directory, for the next run) appends a table to
//! `bench/results.md`. `SESSIOND_SCALE_SESSIONS` sets the size. Under
//! `cargo test --all-targets` it runs a small smoke version.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sessiond::config::ServeConfig;
use sessiond::domain::{Clock, ManualClock, NewMessage, Session, TimeoutConfig, Timestamp};
use sessiond::store::{Store, StoreOptions};
use tokio::task::JoinSet;
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// As the sessiond binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MESSAGES_PER_SESSION: usize = 10;
/// One session in this many times out early and is swept in step 4.
const SHORT_ONE_IN: usize = 10;
const SHORT_TIMEOUT_MINUTES: u32 = 5;
const LONG_TIMEOUT_MINUTES: u32 = 60;
const LOADERS: usize = 64;
const CONCURRENCY: usize = 32;
const MINUTE: Duration = Duration::from_secs(60);
/// The store's name and the table's title say whether sled compresses (feature
/// `compression`): the two kinds of store cannot open each other.
const COMPRESSION: &str = if cfg!(feature = "compression") {
    "-zstd"
} else {
    ""
};

/// What was loaded, kept beside the store so that a later run can reuse it.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Loaded {
    sessions: usize,
    messages: usize,
    short_sessions: usize,
    /// The load's clock: every session was created then.
    t0_micros: u64,
    raw_payload_bytes: u64,
    load_seconds: f64,
    /// The first open after the load: sled replays its whole log since its last snapshot
    /// (written at each open), here the entire load.
    first_open_ms: f64,
    /// A few long-lived sessions, for the latency runs.
    sample_sessions: Vec<Uuid>,
}

/// What the restarted server measured.
#[derive(Serialize, Deserialize, Debug, Default)]
struct Measured {
    open_ms: f64,
    rss_after_open_mb: f64,
    rss_peak_mb: f64,
    runs: Vec<Run>,
    sweep_seconds: f64,
    swept_sessions: u64,
}

#[derive(Serialize, Deserialize, Debug)]
struct Run {
    name: String,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    failures: usize,
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(at) = args.iter().position(|a| a == "--measure") {
        let dir = PathBuf::from(&args[at + 1]);
        let seconds: u64 = args[at + 2].parse()?;
        let measured = runtime.block_on(measure(&dir, Duration::from_secs(seconds)))?;
        println!("MEASURED {}", serde_json::to_string(&measured)?);
        return Ok(());
    }
    let full = args.iter().any(|a| a == "--bench");
    let sessions: usize = match std::env::var("SESSIOND_SCALE_SESSIONS") {
        Ok(n) => n.parse()?,
        Err(_) if full => 1_000_000,
        Err(_) => 2_000,
    };
    let seconds = if full { 5 } else { 1 };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(Path::new("target"))
        .join(format!("scale-store-{sessions}{COMPRESSION}"));
    let loaded = match reuse(&dir, sessions) {
        Some(loaded) => {
            println!("reusing the store in {}", dir.display());
            loaded
        }
        None => runtime.block_on(load(&dir, sessions))?,
    };
    let disk = dir_bytes(&dir)?;
    println!(
        "loaded {} sessions, {} messages in {:.0} s ({:.0} sessions/s); disk {:.1} MB, raw \
         payload {:.1} MB, {:.2}x",
        loaded.sessions,
        loaded.messages,
        loaded.load_seconds,
        loaded.sessions as f64 / loaded.load_seconds,
        disk as f64 / 1e6,
        loaded.raw_payload_bytes as f64 / 1e6,
        disk as f64 / loaded.raw_payload_bytes as f64
    );
    // The sweep changes the store: measure a copy, keep the loaded one for the next run.
    let work = dir.with_extension("run");
    let _ = std::fs::remove_dir_all(&work);
    copy_dir(&dir, &work)?;
    let output = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--measure",
            &work.display().to_string(),
            &seconds.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let _ = std::fs::remove_dir_all(&work);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let measured: Measured = match stdout.lines().find_map(|l| l.strip_prefix("MEASURED ")) {
        Some(json) if output.status.success() => serde_json::from_str(json)?,
        _ => return Err(format!("the measuring process failed: {stdout}").into()),
    };
    let table = table(&loaded, disk, &measured);
    println!("{table}");
    if full {
        use std::io::Write;
        let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results.md");
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(results)?
            .write_all(table.as_bytes())?;
    } else {
        // The smoke run checks that the figures exist, not their size.
        assert_eq!(measured.swept_sessions as usize, loaded.short_sessions);
        assert!(measured.runs.iter().all(|run| run.failures == 0));
    }
    Ok(())
}

fn reuse(dir: &Path, sessions: usize) -> Option<Loaded> {
    let loaded: Loaded =
        serde_json::from_slice(&std::fs::read(dir.join("loaded.json")).ok()?).ok()?;
    (loaded.sessions == sessions).then_some(loaded)
}

/// Words for message text: real text compresses, random bytes would not.
const WORDS: &[&str] = &[
    "the", "agent", "session", "reply", "could", "you", "please", "check", "order", "status",
    "thanks", "when", "will", "it", "arrive", "tomorrow", "morning", "account", "update",
    "address", "payment", "failed", "retry", "card", "invoice", "shipping", "delay", "sorry",
    "for", "the", "trouble", "here", "is", "what", "I", "found", "about", "your", "request",
];

/// A message text of 40 to 300 bytes, the same for the same `seed`.
fn text(seed: u64) -> String {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let target = 40 + (state >> 33) as usize % 260;
    let mut out = String::with_capacity(target + 12);
    while out.len() < target {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(WORDS[(state >> 33) as usize % WORDS.len()]);
        out.push(' ');
    }
    out
}

const SESSION_METADATA: &str = r#"{"channel":"web","locale":"en-US"}"#;
const MESSAGE_METADATA: &str = r#"{"source":"chat"}"#;

fn raw_session_bytes() -> u64 {
    // ids (3 x 16), timeout settings (4 x 4), times (created, activity, expiry: 3 x 8),
    // renewal and message counts (2 x 8), metadata.
    48 + 16 + 24 + 16 + SESSION_METADATA.len() as u64
}

fn raw_message_bytes(content: &str) -> u64 {
    // id, session, author, parent (4 x 16), seq and time (2 x 8), content, metadata.
    64 + 16 + content.len() as u64 + MESSAGE_METADATA.len() as u64
}

async fn load(dir: &Path, sessions: usize) -> Result<Loaded, BoxError> {
    let _ = std::fs::remove_dir_all(dir);
    let store = Store::open(dir, &StoreOptions::default())?;
    let t0 = sessiond::domain::SystemClock.now();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut loaders = JoinSet::new();
    for _ in 0..LOADERS {
        let (store, next) = (store.clone(), next.clone());
        loaders.spawn(async move {
            let mut raw = 0u64;
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= sessions {
                    return Ok::<_, BoxError>((raw, samples));
                }
                let short = i % SHORT_ONE_IN == 0;
                let session = Session::new(
                    Uuid::now_v7(),
                    Uuid::new_v4(),
                    Uuid::new_v4(),
                    TimeoutConfig {
                        timeout_minutes: if short {
                            SHORT_TIMEOUT_MINUTES
                        } else {
                            LONG_TIMEOUT_MINUTES
                        },
                        auto_renew: true,
                        max_duration_minutes: 720,
                        warning_threshold_minutes: 1,
                    },
                    SESSION_METADATA.into(),
                    t0,
                );
                raw += raw_session_bytes();
                let history: Vec<NewMessage> = (0..MESSAGES_PER_SESSION)
                    .map(|m| {
                        let content = text((i * MESSAGES_PER_SESSION + m) as u64);
                        raw += raw_message_bytes(&content);
                        NewMessage {
                            content,
                            parent_id: None,
                            author_id: (m % 2 == 1).then_some(session.agent_id),
                            metadata_json: MESSAGE_METADATA.into(),
                            attachments: Vec::new(),
                        }
                    })
                    .collect();
                if !short && samples.len() < 8 {
                    samples.push(session.id);
                }
                store.import_session(session, history).await??;
                if i % 100_000 == 0 && i > 0 {
                    eprintln!(
                        "  {i} sessions loaded ({:.0}/s)",
                        i as f64 / started.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    let (mut raw, mut samples) = (0u64, Vec::new());
    while let Some(done) = loaders.join_next().await {
        let (loader_raw, loader_samples) = done??;
        raw += loader_raw;
        samples.extend(loader_samples);
    }
    let load_seconds = started.elapsed().as_secs_f64();
    store.flush()?;
    store.close()?;
    let opening = Instant::now();
    Store::open(dir, &StoreOptions::default())?.close()?;
    let first_open_ms = opening.elapsed().as_secs_f64() * 1e3;
    samples.truncate(64);
    let loaded = Loaded {
        sessions,
        messages: sessions * MESSAGES_PER_SESSION,
        short_sessions: sessions.div_ceil(SHORT_ONE_IN),
        t0_micros: t0.as_micros(),
        raw_payload_bytes: raw,
        load_seconds,
        first_open_ms,
        sample_sessions: samples,
    };
    std::fs::write(dir.join("loaded.json"), serde_json::to_vec(&loaded)?)?;
    Ok(loaded)
}

fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else if entry.file_name() == "loaded.json" {
            0
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.metadata()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
            // Written back now, so the copy's 17 GB of dirty pages do not compete with the
            // measured server's syncs.
            std::fs::File::open(&target)?.sync_all()?;
        }
    }
    Ok(())
}

/// Resident and peak resident memory of this process, in MB.
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn measure(dir: &Path, seconds: Duration) -> Result<Measured, BoxError> {
    let loaded: Loaded = serde_json::from_slice(&std::fs::read(dir.join("loaded.json"))?)?;
    let t0 = Timestamp::from_micros(loaded.t0_micros);
    let clock = Arc::new(ManualClock::new(t0 + MINUTE));
    let config = ServeConfig {
        addr: "127.0.0.1:0".parse()?,
        data_dir: dir.to_path_buf(),
        expired_retention_minutes: 0,
        ..ServeConfig::default()
    };
    let started = Instant::now();
    let server = sessiond::app::start_with_clock(config, clock.clone()).await?;
    let mut measured = Measured {
        open_ms: started.elapsed().as_secs_f64() * 1e3,
        rss_after_open_mb: rss_mb().0,
        ..Measured::default()
    };
    let addr = server.local_addr();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .timeout(Duration::from_secs(60))
        .build()?;
    let samples = Arc::new(loaded.sample_sessions.clone());
    let read = samples[0];
    let routes: [(&str, Request); 4] = [
        (
            "GET /sessions/health",
            Request::Get("/sessions/health".into()),
        ),
        (
            "GET /sessions?limit=20",
            Request::Get("/sessions?limit=20".into()),
        ),
        (
            "GET /sessions/{id}/messages?limit=50",
            Request::Get(format!("/sessions/{read}/messages?limit=50")),
        ),
        ("POST /sessions/{id}/messages (idle)", Request::Append),
    ];
    for (name, request) in routes {
        let run = drive(&client, addr, &request, &samples, Until::Elapsed(seconds)).await;
        measured.runs.push(run.named(name));
    }

    // Past the short sessions' expiry, a sweep removes them while appends go on. It is the
    // sweeper's own `sweep_once`, called here: the server's loop holds deletions after a
    // jump of the wall clock, and moving this clock ahead is one.
    let total_before = server.store().counts(clock.now()).await?.total;
    clock.set(t0 + (SHORT_TIMEOUT_MINUTES + 5) * MINUTE);
    let sweep_started = Instant::now();
    let store = server.store();
    let sweep = tokio::spawn({
        let (store, now) = (store.clone(), clock.now());
        async move { sessiond::sweeper::sweep_once(&store, now, Duration::ZERO).await }
    });
    let swept = || sweep.is_finished();
    let during = drive(
        &client,
        addr,
        &Request::Append,
        &samples,
        Until::Done(&swept),
    )
    .await;
    measured.sweep_seconds = sweep_started.elapsed().as_secs_f64();
    sweep.await??;
    measured.swept_sessions = total_before - store.counts(clock.now()).await?.total;
    measured
        .runs
        .push(during.named("POST /sessions/{id}/messages (sweeping)"));
    measured.rss_peak_mb = rss_mb().1;
    server.shutdown().await?;
    Ok(measured)
}

enum Request {
    Get(String),
    /// A durable append to one of the sample sessions.
    Append,
}

enum Until<'a> {
    Elapsed(Duration),
    /// Until the check holds (looked at every 100 ms), at most 10 minutes.
    Done(&'a (dyn Fn() -> bool + Sync)),
}

struct Measurement {
    latencies: Vec<Duration>,
    elapsed: Duration,
    failures: usize,
}

impl Measurement {
    fn named(mut self, name: &str) -> Run {
        self.latencies.sort_unstable();
        let at = |q: f64| {
            self.latencies
                .get(
                    ((self.latencies.len() as f64 * q) as usize)
                        .min(self.latencies.len().saturating_sub(1)),
                )
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
        };
        Run {
            name: name.into(),
            per_second: self.latencies.len() as f64 / self.elapsed.as_secs_f64(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            failures: self.failures,
        }
    }
}

/// `CONCURRENCY` closed-loop clients sending `request` until `until`.
async fn drive(
    client: &reqwest::Client,
    addr: SocketAddr,
    request: &Request,
    samples: &Arc<Vec<Uuid>>,
    until: Until<'_>,
) -> Measurement {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for k in 0..CONCURRENCY {
        let (client, stop, samples) = (client.clone(), stop.clone(), samples.clone());
        let path = match request {
            Request::Get(path) => Some(path.clone()),
            Request::Append => None,
        };
        clients.spawn(async move {
            let (mut latencies, mut failures, mut n) = (Vec::new(), 0usize, k);
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let response = match &path {
                    Some(path) => {
                        client
                            .get(format!("http://{addr}/api/messaging{path}"))
                            .send()
                            .await
                    }
                    None => {
                        n += 1;
                        let id = samples[n % samples.len()];
                        client
                            .post(format!(
                                "http://{addr}/api/messaging/sessions/{id}/messages"
                            ))
                            .json(&serde_json::json!({"content": "a message while measuring"}))
                            .send()
                            .await
                    }
                };
                match response {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        });
    }
    match until {
        Until::Elapsed(duration) => tokio::time::sleep(duration).await,
        Until::Done(done) => {
            let deadline = Instant::now() + 10 * MINUTE;
            while !done() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut measurement = Measurement {
        latencies: Vec::new(),
        elapsed,
        failures: 0,
    };
    while let Some(Ok((latencies, failures))) = clients.join_next().await {
        measurement.latencies.extend(latencies);
        measurement.failures += failures;
    }
    measurement
}

fn table(loaded: &Loaded, disk: u64, measured: &Measured) -> String {
    let date = time::OffsetDateTime::now_utc();
    let idle_p99 = measured
        .runs
        .iter()
        .find(|r| r.name.ends_with("(idle)"))
        .map_or(f64::NAN, |r| r.p99_ms);
    let mut out = format!(
        "\n## {:04}-{:02}-{:02} {:02}:{:02} UTC — scale: {} sessions, {} messages{} (cargo \
         bench --bench scale), {} cores\n\n",
        date.year(),
        u8::from(date.month()),
        date.day(),
        date.hour(),
        date.minute(),
        loaded.sessions,
        loaded.messages,
        if COMPRESSION.is_empty() {
            ""
        } else {
            ", sled compression on"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    out += "| figure | value |\n|---|---:|\n";
    out += &format!(
        "| load through the library | {:.0} s ({:.0} sessions/s, {:.0} messages/s) |\n",
        loaded.load_seconds,
        loaded.sessions as f64 / loaded.load_seconds,
        loaded.messages as f64 / loaded.load_seconds
    );
    out += &format!(
        "| disk / raw payload | {:.0} MB / {:.0} MB = {:.2}x |\n",
        disk as f64 / 1e6,
        loaded.raw_payload_bytes as f64 / 1e6,
        disk as f64 / loaded.raw_payload_bytes as f64
    );
    out += &format!(
        "| first open after the load (sled replays its log since its last snapshot: all of \
         it) | {:.0} ms |\n",
        loaded.first_open_ms
    );
    out += &format!(
        "| open after a restart (start until listening; sled snapshots at each open) | {:.0} \
         ms |\n",
        measured.open_ms
    );
    out += &format!(
        "| RSS after open / peak | {:.0} MB / {:.0} MB |\n",
        measured.rss_after_open_mb, measured.rss_peak_mb
    );
    out += &format!(
        "| sweep of {} expired sessions (with their {} messages) | {:.1} s |\n",
        measured.swept_sessions,
        measured.swept_sessions as usize * MESSAGES_PER_SESSION,
        measured.sweep_seconds
    );
    out += &format!(
        "\n| route ({CONCURRENCY} concurrent) | req/s | p50 ms | p99 ms | × idle append p99 | \
         failures |\n|---|---:|---:|---:|---:|---:|\n"
    );
    for run in &measured.runs {
        out += &format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |\n",
            run.name,
            run.per_second,
            run.p50_ms,
            run.p99_ms,
            run.p99_ms / idle_p99,
            run.failures
        );
    }
    out
}
