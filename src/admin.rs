//! The offline commands: `sessiond check`, `stats`, `export` and `import`, and the progress
//! bar that they and `sessiond backup` draw on a terminal.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use crate::domain::Timestamp;
use crate::error::{Error, Result};
use std::sync::Arc;

use crate::config::StoreArgs;
use crate::domain::SystemClock;
use crate::store::{CheckReport, PgOptions, Progress, Store, StoreOptions};
use crate::transfer::{ImportError, Moved};

/// How often a drawn bar is redrawn while nothing advances, so that a spinner shows the
/// work is alive.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// The progress of a long command, as a bar on stderr when stderr is a terminal; nothing is
/// drawn when it is piped or redirected, so that scripts read only the summary lines. Each
/// stage is a bar when its length is known, else a spinner with a count. The bar is
/// cleared when dropped, so the summary printed next starts on a clean line.
#[derive(Debug)]
pub struct TerminalProgress {
    /// Whether stderr is a terminal, to draw on.
    drawn: bool,
    /// The current stage's bar. Each stage gets a new one, set up before it is shown, so
    /// that no frame mixes one stage's name with another's count.
    bar: std::sync::Mutex<indicatif::ProgressBar>,
}

impl TerminalProgress {
    /// A bar on stderr if it is a terminal, else one that draws nothing.
    pub fn on_stderr() -> Self {
        TerminalProgress {
            drawn: std::io::stderr().is_terminal(),
            bar: std::sync::Mutex::new(indicatif::ProgressBar::hidden()),
        }
    }

    /// Shows `text` after the count: what else the work has counted.
    pub fn note(&self, text: &str) {
        self.current().set_message(format!("; {text}"));
    }

    /// The current stage's bar.
    fn current(&self) -> std::sync::MutexGuard<'_, indicatif::ProgressBar> {
        // Only replaced whole: a panic elsewhere cannot leave it half-changed.
        self.bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn style(units: Option<u64>) -> indicatif::ProgressStyle {
        let template = match units {
            Some(_) => "{prefix} [{bar:30}] {human_pos}/{human_len}{msg} ({elapsed}, {eta} left)",
            None => "{spinner} {prefix}: {human_pos}{msg} ({elapsed})",
        };
        // The templates are constants that parse; the default style would do too.
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    }
}

impl Progress for TerminalProgress {
    fn stage(&self, what: &str, units: Option<u64>) {
        let next = indicatif::ProgressBar::with_draw_target(
            units,
            indicatif::ProgressDrawTarget::hidden(),
        )
        .with_style(Self::style(units))
        .with_prefix(what.to_owned());
        let mut current = self.current();
        current.finish_and_clear();
        if self.drawn {
            next.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            // Drawn now, so that even a stage shorter than a redraw shows.
            next.tick();
            next.enable_steady_tick(REDRAW_EVERY);
        }
        *current = next;
    }

    fn advance(&self, units: u64) {
        self.current().inc(units);
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        self.current().finish_and_clear();
    }
}

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
    let progress = TerminalProgress::on_stderr();
    let report = reading_damage(&args.data_dir, || store.check_with_progress(&progress))?;
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
    let progress = TerminalProgress::on_stderr();
    let (counts, trees) = reading_damage(&args.data_dir, || {
        let counts = runtime.block_on(store.counts(Timestamp::now()))?;
        Ok((counts, store.tree_stats_with_progress(&progress)?))
    })?;
    drop(progress);
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
    let progress = TerminalProgress::on_stderr();
    let moved = reading_damage(&args.data_dir, || {
        runtime.block_on(crate::transfer::export(&store, out, &progress))
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
    let progress = TerminalProgress::on_stderr();
    let imported = runtime.block_on(crate::transfer::import(&store, input, &progress));
    store.close()?;
    imported
}
