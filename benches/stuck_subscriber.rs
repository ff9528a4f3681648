//! Does a subscriber that never reads slow down the writers?
//!
//! Measures durable message appends (`POST /sessions/{id}/messages`, 201 = on disk) from 32
//! concurrent writers over real HTTP, in three cases, each on a fresh server and data
//! directory:
//!
//! 1. no subscriber;
//! 2. one stuck subscriber: a raw TCP connection with a small receive buffer that sends the
//!    SSE GET for the session, reads the response head (so it is surely subscribed) and then
//!    never reads again;
//! 3. ten healthy subscribers reading the session's stream;
//! 4. a thousand healthy subscribers reading the session's stream: the fan-out, where every
//!    append reaches every stream.
//!
//! It prints appends per second, p50 and p99 latency per case, the events the healthy
//! subscribers received, and the ratios stuck / none and thousand / none. Last, it moves the
//! fan-out case's stream bytes through as many bare loopback streams, with no server, one
//! event per write and 64: what the streams alone would carry on this machine.
//! There are no pass/fail thresholds: the numbers depend on the machine and its disk.
//!
//! Run with `cargo bench --bench stuck_subscriber` (a release build, about 15 s). Under
//! `cargo test --all-targets` (no `--bench` argument) it runs a short smoke version instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sessiond::app::RunningServer;
use sessiond::config::ServeConfig;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

#[path = "support/proc.rs"]
mod proc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Concurrent writers per case.
const WRITERS: usize = 32;
/// Healthy subscribers in the third case.
const HEALTHY_SUBSCRIBERS: usize = 10;
/// Healthy subscribers in the fan-out case (a smoke run opens fewer).
const FAN_OUT_SUBSCRIBERS: usize = 1000;
/// The stuck subscriber's socket receive buffer: small, so it fills almost at once.
const STUCK_RECV_BUFFER: u32 = 4096;

/// How long each case runs: warm-up (not recorded), then measurement.
#[derive(Clone, Copy)]
struct Timing {
    warm_up: Duration,
    measure: Duration,
    /// How long shutdown may take with the stuck subscriber connected before it is reported
    /// as blocked (and the socket is read so that it can finish).
    shutdown_patience: Duration,
}

/// What a case measured.
struct Measured {
    appends: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    /// Share of the cores this process kept busy while measured.
    busy: f64,
    note: String,
    /// Stream bytes per append per healthy subscriber; zero with none.
    stream_bytes_per_append: f64,
}

/// The subscribers a case runs with.
#[derive(Clone, Copy, PartialEq)]
enum Case {
    NoSubscriber,
    OneStuck,
    TenHealthy,
    FanOut,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::NoSubscriber => "no subscriber",
            Case::OneStuck => "1 stuck subscriber",
            Case::TenHealthy => "10 healthy subscribers",
            Case::FanOut => "1000 healthy subscribers",
        }
    }
}

/// A server on a fresh temporary data directory, and a session to write to.
struct Fixture {
    server: RunningServer,
    _dir: TempDir,
    client: reqwest::Client,
    session_id: String,
}

impl Fixture {
    async fn start(streams: usize) -> Result<Fixture, BoxError> {
        let dir = tempfile::tempdir()?;
        let defaults = ServeConfig::default();
        let config = ServeConfig {
            addr: "127.0.0.1:0".parse()?,
            data_dir: dir.path().to_path_buf(),
            max_streams: defaults.max_streams.max(streams + 1),
            max_connections: defaults.max_connections.max(streams + 2 * WRITERS + 16),
            ..defaults
        };
        let server = sessiond::app::start(config).await?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(WRITERS * 2)
            .timeout(Duration::from_secs(30))
            .build()?;
        let created: Value = client
            .post(url(server.local_addr(), "/sessions"))
            .json(&json!({"agentId": uuid::Uuid::new_v4(), "userId": uuid::Uuid::new_v4()}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let session_id = created["sessionId"]
            .as_str()
            .ok_or("the created session has no sessionId")?
            .to_owned();
        Ok(Fixture {
            server,
            _dir: dir,
            client,
            session_id,
        })
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn events_path(&self) -> String {
        format!("/api/messaging/sessions/{}/events", self.session_id)
    }
}

fn url(addr: SocketAddr, path: &str) -> String {
    if path.starts_with("/api/") {
        format!("http://{addr}{path}")
    } else {
        format!("http://{addr}/api/messaging{path}")
    }
}

/// Opens the session's event stream on a raw socket, reads the response head, and returns
/// the socket, which nobody reads from then on.
async fn stuck_subscriber(fixture: &Fixture) -> Result<TcpStream, BoxError> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(STUCK_RECV_BUFFER)?;
    let mut stream = socket.connect(fixture.addr()).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        fixture.events_path(),
        fixture.addr()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err("the server closed the stuck subscriber's connection".into());
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(format!("unexpected answer: {}", String::from_utf8_lossy(&head)).into());
    }
    Ok(stream)
}

/// Reads whatever the server still sends to the stuck subscriber, until EOF; returns the
/// byte count.
async fn drain(mut stream: TcpStream) -> usize {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut received = 0usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received += n,
        }
    }
    received
}

/// Shuts the server down while the stuck subscriber is still connected: reports whether
/// shutdown finished within `blocked`, then reads the socket so that it can finish.
async fn shut_down_with_stuck_subscriber(
    server: RunningServer,
    stream: TcpStream,
    blocked: Duration,
) -> Result<String, BoxError> {
    let started = Instant::now();
    let mut shutdown = tokio::spawn(server.shutdown());
    let note = match tokio::time::timeout(blocked, &mut shutdown).await {
        Ok(done) => {
            done??;
            let took = started.elapsed();
            let pending = drain(stream).await;
            format!("shutdown with it connected took {took:?} ({pending} bytes were pending)")
        }
        Err(_) => {
            let pending = drain(stream).await;
            shutdown.await??;
            format!(
                "shutdown with it connected did not finish within {blocked:?}; it finished \
                 {:?} after start once the socket was read ({pending} bytes were pending)",
                started.elapsed()
            )
        }
    };
    Ok(note)
}

/// What the healthy subscribers of a case received, together.
#[derive(Default)]
struct Received {
    message_events: AtomicU64,
    bytes: AtomicU64,
}

/// Opens a healthy subscriber on a raw socket, as lean a reader as a client can be (the
/// machine is shared with the server), that counts the `message` events and the bytes it
/// reads.
async fn healthy_subscriber(
    fixture: &Fixture,
    received: Arc<Received>,
) -> Result<tokio::task::JoinHandle<()>, BoxError> {
    let mut stream = TcpStream::connect(fixture.addr()).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        fixture.events_path(),
        fixture.addr()
    );
    stream.write_all(request.as_bytes()).await?;
    Ok(tokio::spawn(count_message_events(stream, received)))
}

/// Reads a stream to its end, counting its `message` events and its bytes.
async fn count_message_events(mut stream: TcpStream, received: Arc<Received>) {
    let needle = memchr::memmem::Finder::new(b"event: message\n");
    let keep = needle.needle().len() - 1;
    // The tail of the previous read goes first: a name may straddle two reads.
    let mut buffer = vec![0u8; keep + 256 * 1024];
    let mut carried = 0;
    loop {
        let read = match stream.read(&mut buffer[carried..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => carried + n,
        };
        let found = needle.find_iter(&buffer[..read]).count();
        received
            .message_events
            .fetch_add(found as u64, Ordering::Relaxed);
        received
            .bytes
            .fetch_add((read - carried) as u64, Ordering::Relaxed);
        carried = read.min(keep);
        buffer.copy_within(read - carried..read, 0);
    }
}

/// The stream bytes per second `streams` bare loopback connections carry on this machine, with
/// no server, and the share of the cores that kept busy: a sender per connection writes
/// `frame_bytes`-long message events, `frames_per_write` at a time, to the same lean readers
/// as the fan-out case's.
async fn loopback_streams(
    streams: usize,
    frame_bytes: usize,
    frames_per_write: usize,
    duration: Duration,
) -> Result<(f64, f64), BoxError> {
    let head = "event: message\ndata: ";
    let body = "x".repeat(frame_bytes.saturating_sub(head.len() + 2).max(1));
    let chunk: Arc<[u8]> = format!("{head}{body}\n\n")
        .repeat(frames_per_write)
        .into_bytes()
        .into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(Received::default());
    let mut tasks = JoinSet::new();
    for _ in 0..streams {
        tasks.spawn(count_message_events(
            TcpStream::connect(addr).await?,
            Arc::clone(&received),
        ));
        let (mut sender, _) = listener.accept().await?;
        let chunk = Arc::clone(&chunk);
        tasks.spawn(async move { while sender.write_all(&chunk).await.is_ok() {} });
    }
    let bytes = || received.bytes.load(Ordering::Relaxed) as f64;
    tokio::time::sleep(duration / 5).await;
    let (started, before) = (Instant::now(), bytes());
    let busy = cores_busy(started, started + duration).await;
    let carried = (bytes() - before) / started.elapsed().as_secs_f64();
    tasks.abort_all();
    Ok((carried, busy))
}

/// The share of the machine's cores this process keeps busy from `from` to `to`, 0 to 1.
async fn cores_busy(from: Instant, to: Instant) -> f64 {
    tokio::time::sleep_until(from.into()).await;
    let cpu = || proc::cpu_us("/proc/self/stat");
    let before = cpu();
    tokio::time::sleep_until(to.into()).await;
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    (cpu() - before) / 1e6 / from.elapsed().as_secs_f64() / cores
}

/// Runs `WRITERS` writers appending to the fixture's session; returns the latencies
/// recorded after the warm-up, and how busy the machine's cores were with this process
/// (server, writers and readers) meanwhile, from 0 to 1.
async fn write_load(fixture: &Fixture, timing: Timing) -> Result<(Vec<Duration>, f64), BoxError> {
    let start = Instant::now();
    let record_from = start + timing.warm_up;
    let stop_at = record_from + timing.measure;
    let busy = tokio::spawn(cores_busy(record_from, stop_at));
    let mut writers = JoinSet::new();
    for writer in 0..WRITERS {
        let client = fixture.client.clone();
        let target = url(
            fixture.addr(),
            &format!("/sessions/{}/messages", fixture.session_id),
        );
        writers.spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < stop_at {
                let sent = Instant::now();
                let response = client
                    .post(&target)
                    .json(&json!({"content": format!("writer {writer} message {n}")}))
                    .send()
                    .await?;
                if response.status().as_u16() != 201 {
                    return Err(format!("append answered {}", response.status()).into());
                }
                response.bytes().await?;
                if sent >= record_from {
                    latencies.push(sent.elapsed());
                }
                n += 1;
            }
            Ok::<_, BoxError>(latencies)
        });
    }
    let mut all = Vec::new();
    for latencies in writers.join_all().await {
        all.extend(latencies?);
    }
    Ok((all, busy.await?))
}

async fn run_case(case: Case, timing: Timing, fan_out: usize) -> Result<Measured, BoxError> {
    let subscribers = match case {
        Case::NoSubscriber | Case::OneStuck => 0,
        Case::TenHealthy => HEALTHY_SUBSCRIBERS,
        Case::FanOut => fan_out,
    };
    let fixture = Fixture::start(subscribers).await?;
    let mut stuck = None;
    let mut healthy = Vec::new();
    let received = Arc::new(Received::default());
    match case {
        Case::NoSubscriber => {}
        Case::OneStuck => stuck = Some(stuck_subscriber(&fixture).await?),
        Case::TenHealthy | Case::FanOut => {
            for _ in 0..subscribers {
                healthy.push(healthy_subscriber(&fixture, Arc::clone(&received)).await?);
            }
        }
    }

    let started = Instant::now();
    let (mut latencies, busy) = write_load(&fixture, timing).await?;
    latencies.sort();
    let appends = latencies.len();
    let percentile = |p: f64| {
        let index = ((appends as f64 * p).ceil() as usize).clamp(1, appends.max(1)) - 1;
        latencies.get(index).copied().unwrap_or_default()
    };
    let (p50, p99) = (percentile(0.50), percentile(0.99));

    let mut stream_bytes_per_append = 0.0;
    let note = match case {
        Case::NoSubscriber | Case::OneStuck => String::new(),
        Case::TenHealthy | Case::FanOut => {
            // Total appends include the warm-up; give the readers a moment to catch up.
            let total = message_count(&fixture).await?;
            let wanted = total * subscribers as u64;
            let deadline = Instant::now() + Duration::from_secs(5);
            while received.message_events.load(Ordering::Relaxed) < wanted
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let got = received.message_events.load(Ordering::Relaxed);
            let bytes = received.bytes.load(Ordering::Relaxed) as f64;
            stream_bytes_per_append = bytes / (total * subscribers as u64).max(1) as f64;
            format!(
                "healthy subscribers received {got} of {wanted} message events; \
                 {stream_bytes_per_append:.0} bytes of stream per append per subscriber, \
                 {:.0} MB/s in all",
                bytes / started.elapsed().as_secs_f64() / 1e6
            )
        }
    };
    let note = match stuck {
        Some(stream) => {
            shut_down_with_stuck_subscriber(fixture.server, stream, timing.shutdown_patience)
                .await?
        }
        None => {
            fixture.server.shutdown().await?;
            note
        }
    };
    for reader in healthy {
        reader.abort();
    }
    Ok(Measured {
        appends,
        per_second: appends as f64 / timing.measure.as_secs_f64(),
        p50,
        p99,
        busy,
        note,
        stream_bytes_per_append,
    })
}

/// The session's messageCount.
async fn message_count(fixture: &Fixture) -> Result<u64, BoxError> {
    let info: Value = fixture
        .client
        .get(url(
            fixture.addr(),
            &format!("/sessions/{}", fixture.session_id),
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    info["messageCount"]
        .as_u64()
        .ok_or_else(|| "SessionInfo without messageCount".into())
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it.
    let full = std::env::args().any(|arg| arg == "--bench");
    let timing = if full {
        Timing {
            warm_up: Duration::from_millis(500),
            measure: Duration::from_secs(3),
            shutdown_patience: Duration::from_secs(5),
        }
    } else {
        Timing {
            warm_up: Duration::from_millis(50),
            measure: Duration::from_millis(200),
            shutdown_patience: Duration::from_millis(500),
        }
    };
    println!(
        "stuck_subscriber: {WRITERS} writers, {:?} warm-up + {:?} measured per case, {} CPUs{}",
        timing.warm_up,
        timing.measure,
        std::thread::available_parallelism().map_or(0, usize::from),
        if full { "" } else { " (smoke run)" }
    );
    let mut results = Vec::new();
    // A smoke run opens a few: enough to run the code, not to load the machine.
    let fan_out = if full { FAN_OUT_SUBSCRIBERS } else { 20 };
    for case in [
        Case::NoSubscriber,
        Case::OneStuck,
        Case::TenHealthy,
        Case::FanOut,
    ] {
        results.push((case, run_case(case, timing, fan_out).await?));
    }

    println!();
    println!(
        "{:<24} {:>9} {:>10} {:>9} {:>9} {:>9}",
        "case", "appends", "req/s", "p50 ms", "p99 ms", "CPU busy"
    );
    for (case, m) in &results {
        println!(
            "{:<24} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>8.0}%",
            case.label(),
            m.appends,
            m.per_second,
            millis(m.p50),
            millis(m.p99),
            m.busy * 100.0
        );
    }
    println!();
    for (case, m) in &results {
        if !m.note.is_empty() {
            println!("{}: {}", case.label(), m.note);
        }
    }
    let rate = |wanted: Case| {
        results
            .iter()
            .find(|(case, _)| *case == wanted)
            .map_or(0.0, |(_, m)| m.per_second)
    };
    let (none, stuck) = (rate(Case::NoSubscriber), rate(Case::OneStuck));
    if none > 0.0 {
        println!("throughput ratio stuck / none: {:.3}", stuck / none);
        println!(
            "throughput ratio {fan_out} healthy / none: {:.3}",
            rate(Case::FanOut) / none
        );
    }
    // What the streams alone allow: the fan-out case's bytes per append, through as many
    // bare loopback streams and readers, with no server and no appends.
    let case = |wanted: Case| results.iter().find(|(case, _)| *case == wanted);
    let frame_bytes = case(Case::FanOut).map_or(0.0, |(_, m)| m.stream_bytes_per_append);
    let busy_none = case(Case::NoSubscriber).map_or(0.0, |(_, m)| m.busy);
    if none > 0.0 && frame_bytes > 0.0 {
        let stream_bytes_per_append = frame_bytes * fan_out as f64;
        for frames_per_write in [1, 64] {
            let (carried, busy) = loopback_streams(
                fan_out,
                frame_bytes as usize,
                frames_per_write,
                timing.measure,
            )
            .await?;
            let allowed = carried / stream_bytes_per_append;
            // The machine's share an append takes with no streams, plus its stream bytes'
            // share as bare sockets move them: the most appends per second the fan-out could
            // reach were the server's own stream work free.
            let ceiling = 1.0 / (busy_none / none + stream_bytes_per_append * busy / carried);
            println!(
                "bare loopback, {fan_out} streams, {frames_per_write} event(s) per write, no \
                 server: {:.0} MB/s at {:.0}% busy, which carries {allowed:.0} appends/s at \
                 {frame_bytes:.0} bytes per append per stream ({:.3} of none); with the \
                 appends' own work, at most {ceiling:.0} appends/s ({:.3} of none)",
                carried / 1e6,
                busy * 100.0,
                allowed / none,
                ceiling / none
            );
        }
    }
    Ok(())
}
