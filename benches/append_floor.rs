//! Where the durable append's floor is, below HTTP: the same appends through the store
//! (its rules and sled), then sled alone writing the same keys and values in the same
//! batches, with the same flush and `fdatasync`. What the store adds to sled is the
//! difference; what sled costs is the second figure.
//!
//! 1. **store**: `Store::append_message` from 64 tasks over 256 live sessions, as the HTTP
//!    route calls it (no HTTP, no JSON).
//! 2. **sled alone**: one thread commits transactions of 64 appends, each writing what an
//!    append writes (the keys of every tree it touches, with values of the sizes the
//!    store's own run measured per tree), then flushes and syncs, as the writer does.
//! 3. **sled behind**: the same writes as plain inserts, with no transaction, flush or sync:
//!    sled's own cost were a log of our own to make each batch atomic and durable.
//!
//! Each reports appends per second, CPU per append (the process's, and for the store the
//! writer thread's) and bytes written to disk per append, from /proc.
//!
//! `cargo bench --bench append_floor` (about 20 s). Under `cargo test --all-targets` it
//! runs a short smoke version.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiond::domain::{NewMessage, Session, SystemClock, TimeoutConfig, Timestamp};
use sessiond::store::{Store, StoreOptions};
use uuid::Uuid;

#[path = "support/proc.rs"]
mod proc;
use proc::{cpu_us, write_bytes, writer_stat};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// As the sessiond binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SESSIONS: usize = 256;
const WRITERS: usize = 64;
/// Appends per transaction for sled alone: as many as the store's writer gets at once from
/// `WRITERS` concurrent writers.
const BATCH: usize = WRITERS;

/// What one run measured.
struct Measured {
    appends: u64,
    seconds: f64,
    cpu_us: f64,
    writer_cpu_us: Option<f64>,
    bytes: f64,
}

impl Measured {
    fn print(&self, label: &str) {
        let per = |total: f64| total / self.appends.max(1) as f64;
        println!(
            "{label:<12} {:>10.0} {:>14.1} {:>14} {:>12.0}",
            self.appends as f64 / self.seconds,
            per(self.cpu_us),
            self.writer_cpu_us
                .map_or("-".to_owned(), |cpu| format!("{:.1}", per(cpu))),
            per(self.bytes),
        );
    }
}

fn session(now: Timestamp) -> Session {
    let timeout = TimeoutConfig {
        timeout_minutes: 30,
        auto_renew: true,
        max_duration_minutes: 720,
        warning_threshold_minutes: 5,
    };
    Session::new(
        Uuid::now_v7(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        timeout,
        "{}".into(),
        now,
    )
}

fn message() -> NewMessage {
    NewMessage {
        content: "a benchmark message of ordinary length".into(),
        parent_id: None,
        author_id: None,
        metadata_json: "{}".into(),
        attachments: Vec::new(),
    }
}

/// Appends through the store; returns the figures and the average value size per tree.
async fn through_the_store(
    duration: Duration,
) -> Result<(Measured, Vec<(String, usize)>), BoxError> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), &StoreOptions::default())?;
    let mut ids = Vec::new();
    for _ in 0..SESSIONS {
        let session = session(sessiond::domain::Clock::now(&SystemClock));
        store.create_session(session.clone()).await?;
        ids.push(session.id);
    }
    let ids = Arc::new(ids);
    let (appends, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let writer = writer_stat().ok_or("no writer thread")?;
    let (cpu0, writer0, bytes0) = (cpu_us("/proc/self/stat"), cpu_us(&writer), write_bytes());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..WRITERS {
        let (store, ids, appends, stop) =
            (store.clone(), ids.clone(), appends.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = task;
            while !stop.load(Ordering::Relaxed) {
                let id = ids[n % ids.len()];
                store.append_message(id, message()).await??;
                appends.fetch_add(1, Ordering::Relaxed);
                n += WRITERS;
            }
            Ok::<_, BoxError>(())
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let measured = Measured {
        appends: appends.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        cpu_us: cpu_us("/proc/self/stat") - cpu0,
        writer_cpu_us: Some(cpu_us(&writer) - writer0),
        bytes: write_bytes() - bytes0,
    };
    let sizes = store
        .tree_stats()?
        .into_iter()
        .map(|tree| {
            let average = tree.bytes.checked_div(tree.entries).unwrap_or(0);
            (tree.name.to_owned(), usize::try_from(average).unwrap_or(0))
        })
        .collect();
    drop(ids);
    store.close()?;
    Ok((measured, sizes))
}

/// How sled alone commits each batch.
#[derive(Clone, Copy)]
enum SledCommit {
    /// One transaction over the trees, then flush and `fdatasync`, as the store's writer does.
    Durable,
    /// Plain inserts, no transaction and no flush: what sled would still cost per append if a
    /// log of our own made each batch atomic and durable and sled were written behind it.
    Behind,
}

/// The key-value operations one append makes, over plain trees or a transaction's.
trait Trees {
    type Error;
    fn get(&self, tree: usize, key: &[u8]) -> Result<(), Self::Error>;
    fn insert(&self, tree: usize, key: &[u8], value: &[u8]) -> Result<(), Self::Error>;
}

impl Trees for [sled::Tree] {
    type Error = sled::Error;
    fn get(&self, tree: usize, key: &[u8]) -> Result<(), sled::Error> {
        self[tree].get(key).map(drop)
    }
    fn insert(&self, tree: usize, key: &[u8], value: &[u8]) -> Result<(), sled::Error> {
        self[tree].insert(key, value).map(drop)
    }
}

impl Trees for Vec<sled::transaction::TransactionalTree> {
    type Error = sled::transaction::UnabortableTransactionError;
    fn get(&self, tree: usize, key: &[u8]) -> Result<(), Self::Error> {
        self[tree].get(key).map(drop)
    }
    fn insert(&self, tree: usize, key: &[u8], value: &[u8]) -> Result<(), Self::Error> {
        self[tree].insert(key, value).map(drop)
    }
}

/// What sled alone writes per append, and the agent's and user's entries per batch.
struct AppendShape {
    sessions: Vec<[u8; 16]>,
    session_value: Vec<u8>,
    message_value: Vec<u8>,
    event_value: Vec<u8>,
}

const SESSIONS_TREE: usize = 0;
const MESSAGES_TREE: usize = 1;
const LOCATIONS_TREE: usize = 2;
const EVENTS_TREE: usize = 3;
const INDEX_TREE: usize = 4;

impl AppendShape {
    /// Writes appends `appends..appends + BATCH`, whose events start at `batch_first`.
    fn write_batch<T: Trees + ?Sized>(
        &self,
        trees: &T,
        appends: u64,
        batch_first: u64,
    ) -> Result<(), T::Error> {
        for i in 0..BATCH as u64 {
            let session = self.sessions[((appends + i) as usize) % SESSIONS];
            trees.get(SESSIONS_TREE, &session)?;
            trees.insert(SESSIONS_TREE, &session, &self.session_value)?;
            // Each round over the sessions gives each a new seq.
            let seq = 1 + (appends + i) / SESSIONS as u64;
            let mut message_key = session.to_vec();
            message_key.extend_from_slice(&seq.to_be_bytes());
            trees.insert(MESSAGES_TREE, &message_key, &self.message_value)?;
            trees.insert(LOCATIONS_TREE, Uuid::now_v7().as_bytes(), &message_key)?;
            let event = batch_first + i;
            trees.insert(EVENTS_TREE, &event.to_be_bytes(), &self.event_value)?;
            let mut index_key = vec![b's'];
            index_key.extend_from_slice(&session);
            index_key.extend_from_slice(&event.to_be_bytes());
            trees.insert(INDEX_TREE, &index_key, &event.to_be_bytes())?;
        }
        for owner in [b'a', b'u'] {
            let mut key = vec![owner];
            key.extend_from_slice(&[owner; 16]);
            key.extend_from_slice(&batch_first.to_be_bytes());
            trees.insert(
                INDEX_TREE,
                &key,
                &(batch_first + BATCH as u64).to_be_bytes(),
            )?;
        }
        Ok(())
    }
}

/// The same writes with sled alone: per append, the session read and rewritten, the
/// message, its id's location, the event record and its session index entry; per batch,
/// an agent's and a user's index entry. Keys and values of the sizes the store wrote.
fn sled_alone(
    duration: Duration,
    sizes: &[(String, usize)],
    commit: SledCommit,
) -> Result<Measured, BoxError> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(StoreOptions::default().cache_capacity_bytes)
        .open()?;
    let size_of = |name: &str| {
        sizes
            .iter()
            .find(|(tree, _)| tree == name)
            .map_or(64, |(_, size)| *size)
    };
    let trees = [
        "sessionid_session",
        "sessionidseq_message",
        "messageid_sessionidseq",
        "eventid_events",
        "ownerideventid",
    ]
    .map(|name| db.open_tree(name));
    let trees = trees.into_iter().collect::<Result<Vec<_>, _>>()?;
    let value =
        |tree: &str, key_len: usize| vec![7u8; size_of(tree).saturating_sub(key_len).max(1)];
    let shape = AppendShape {
        sessions: (0..SESSIONS).map(|_| *Uuid::now_v7().as_bytes()).collect(),
        session_value: value("sessionid_session", 16),
        message_value: value("sessionidseq_message", 24),
        event_value: value("eventid_events", 8),
    };
    for id in &shape.sessions {
        trees[SESSIONS_TREE].insert(id, shape.session_value.as_slice())?;
    }
    db.flush()?;
    let log = std::fs::File::open(dir.path().join("db"))?;
    let (mut appends, mut next_event) = (0u64, 1u64);
    let (cpu0, bytes0) = (cpu_us("/proc/self/stat"), write_bytes());
    let started = Instant::now();
    while started.elapsed() < duration {
        match commit {
            SledCommit::Durable => {
                use sled::Transactional;
                trees
                    .as_slice()
                    .transaction(|tx| {
                        shape.write_batch(tx, appends, next_event)?;
                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .map_err(|error| format!("{error:?}"))?;
                db.flush()?;
                log.sync_data()?;
            }
            SledCommit::Behind => shape.write_batch(trees.as_slice(), appends, next_event)?,
        }
        appends += BATCH as u64;
        next_event += BATCH as u64;
    }
    Ok(Measured {
        appends,
        seconds: started.elapsed().as_secs_f64(),
        cpu_us: cpu_us("/proc/self/stat") - cpu0,
        writer_cpu_us: None,
        bytes: write_bytes() - bytes0,
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it.
    let full = std::env::args().any(|arg| arg == "--bench");
    let duration = if full {
        Duration::from_secs(8)
    } else {
        Duration::from_millis(300)
    };
    println!(
        "append_floor: {WRITERS} writers over {SESSIONS} sessions, {duration:?} each, {} CPUs{}",
        std::thread::available_parallelism().map_or(0, usize::from),
        if full { "" } else { " (smoke run)" }
    );
    let (store, sizes) = through_the_store(duration).await?;
    let sizes = Arc::new(sizes);
    let mut sled = Vec::new();
    for commit in [SledCommit::Durable, SledCommit::Behind] {
        let sizes = sizes.clone();
        sled.push(
            tokio::task::spawn_blocking(move || sled_alone(duration, &sizes, commit)).await??,
        );
    }
    println!();
    println!(
        "{:<12} {:>10} {:>14} {:>14} {:>12}",
        "", "appends/s", "CPU µs/append", "writer µs", "disk B/append"
    );
    store.print("store");
    sled[0].print("sled alone");
    // Sled's background flush persists these writes; its bytes count, a log's would add.
    sled[1].print("sled behind");
    Ok(())
}
