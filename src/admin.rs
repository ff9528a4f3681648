//! The offline commands: `sessiond check`, `stats`, `export` and `import`.

use std::fmt::Write as _;
use std::path::Path;

use crate::domain::Timestamp;
use crate::error::{Error, Result};
use std::sync::Arc;

use crate::config::StoreArgs;
use crate::domain::SystemClock;
use crate::store::{CheckReport, PgOptions, Store, StoreOptions};
use crate::transfer::{ImportError, Moved};

/// Opens an existing store; refuses to create one.
fn open_existing(data_dir: &Path) -> Result<Store> {
    if !data_dir.join("db").is_file() {
        return Err(Error::Config(format!("no store in {}", data_dir.display())));
    }
    Store::open(data_dir, &StoreOptions::default())
}

/// Verifies the store `args` names.
///
/// # Errors
/// The store cannot be opened or read.
pub fn check(args: &StoreArgs) -> Result<CheckReport> {
    let runtime = offline_runtime()?;
    let store = open_store(args, &runtime, true)?;
    let report = reading_damage(&args.data_dir, || store.check())?;
    store.close()?;
    Ok(report)
}

/// Runs a read of the whole store, turning a panic of the storage engine on damaged files
/// into [`Error::Damaged`].
fn reading_damage<T>(data_dir: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::error::catch_quietly(read)
        .unwrap_or_else(|panic| Err(Error::engine_panicked(data_dir, &panic)))
}

/// How reports name the store `args` names: its directory, or its URL without a password.
pub fn store_name(args: &StoreArgs) -> String {
    match &args.store {
        Some(url) => crate::store::url_without_password(url),
        None => args.data_dir.display().to_string(),
    }
}

/// The report of `check` on a store that could not be read at all.
pub fn render_damaged(args: &StoreArgs, error: &Error) -> String {
    format!("{}: 1 problem:\n  - {error}\n", store_name(args))
}

/// A readable rendering of a check report.
pub fn render_check(args: &StoreArgs, report: &CheckReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} sessions, {} messages, {} events, {} deletions pending",
        store_name(args),
        report.sessions,
        report.messages,
        report.events,
        report.pending_purges
    );
    if report.is_clean() {
        let _ = writeln!(out, "clean");
    } else {
        let _ = writeln!(out, "{} problems:", report.problem_count);
        for problem in &report.problems {
            let _ = writeln!(out, "  - {problem}");
        }
        let unlisted = report.problem_count - report.problems.len() as u64;
        if unlisted > 0 {
            let _ = writeln!(out, "  … and {unlisted} more");
        }
    }
    out
}

/// Counts and sizes of the store `args` names, readable.
///
/// # Errors
/// The store cannot be opened or read.
pub fn stats(args: &StoreArgs) -> Result<String> {
    let runtime = offline_runtime()?;
    let store = open_store(args, &runtime, true)?;
    let (counts, trees) = reading_damage(&args.data_dir, || {
        let counts = runtime.block_on(store.counts(Timestamp::now()))?;
        Ok((counts, store.tree_stats()?))
    })?;
    let on_disk = store.size_on_disk()?;
    store.close()?;
    let mut out = String::new();
    let _ = writeln!(out, "store: {}", store_name(args));
    let _ = writeln!(
        out,
        "sessions: {} ({} active, {} expired, {} expiring soon)",
        counts.total, counts.active, counts.expired, counts.expiring_soon
    );
    let _ = writeln!(out, "{:<24} {:>12} {:>14}", "tree", "entries", "bytes");
    for tree in &trees {
        let _ = writeln!(
            out,
            "{:<24} {:>12} {:>14}",
            tree.name, tree.entries, tree.bytes
        );
    }
    let logical: u64 = trees.iter().map(|t| t.bytes).sum();
    let _ = writeln!(
        out,
        "keys and values: {logical} bytes; on disk: {on_disk} bytes"
    );
    Ok(out)
}

/// The runtime an offline command runs the store's async calls on.
fn offline_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Opens the store `args` names: PostgreSQL (its tables made if missing), or sled in a
/// directory, which must hold a store already when `must_exist`.
fn open_store(
    args: &StoreArgs,
    runtime: &tokio::runtime::Runtime,
    must_exist: bool,
) -> Result<Store> {
    match &args.store {
        Some(url) => runtime.block_on(Store::open_postgres(
            url,
            &PgOptions::default(),
            Arc::new(SystemClock),
        )),
        None if must_exist => open_existing(&args.data_dir),
        None => Store::open(&args.data_dir, &StoreOptions::default()),
    }
}

/// Writes the store `args` names to `out` as an export (see [`crate::transfer`]).
///
/// # Errors
/// The store cannot be opened or read, or `out` cannot be written.
pub fn export(args: &StoreArgs, out: &mut impl std::io::Write) -> Result<Moved> {
    let runtime = offline_runtime()?;
    let store = open_store(args, &runtime, true)?;
    let moved = reading_damage(&args.data_dir, || {
        runtime.block_on(crate::transfer::export(&store, out))
    })?;
    store.close()?;
    Ok(moved)
}

/// Loads an export from `input` into the store `args` names, made if missing (see
/// [`crate::transfer`]).
///
/// # Errors
/// A refused line, or the store cannot be opened or written.
pub fn import(
    args: &StoreArgs,
    input: impl std::io::BufRead,
) -> std::result::Result<Moved, ImportError> {
    let runtime = offline_runtime()?;
    let store = open_store(args, &runtime, false)?;
    let imported = runtime.block_on(crate::transfer::import(&store, input));
    store.close()?;
    imported
}
