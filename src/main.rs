//! The `sessiond` binary: parse flags, start logging, run.

use std::process::ExitCode;

use clap::Parser;
use sessiond::config::{Cli, Command, LogFormat};

// sled allocates and copies tree nodes on every write; mimalloc does that work faster than
// the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // sled's own lines repeat what sessiond reports about the store, in its terms. The
    // offline commands print their own report: the store's notes (a slow write batch) would
    // only interleave with it.
    let default_level = match cli.command {
        Command::Serve(_) => "info,sled=off",
        _ => "warn,sled=off",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_level.into());
    // Lines are written by a thread of their own, in batches: a request's access line costs
    // it the formatting, not a write to stderr. The queue blocks when full, rather than
    // drop lines; the guard writes what is left when `main` returns.
    let (stderr, _unwritten) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("sessiond-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    let config = match cli.command {
        Command::Serve(config) => *config,
        Command::Check(args) => {
            return match sessiond::admin::check(&args) {
                Ok(report) => {
                    print!("{}", sessiond::admin::render_check(&args, &report));
                    if report.is_clean() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error @ sessiond::Error::Damaged { .. }) => {
                    print!("{}", sessiond::admin::render_damaged(&args, &error));
                    ExitCode::FAILURE
                }
                Err(error) => exit_with(&error),
            };
        }
        Command::Export(args) => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            return match sessiond::admin::export(&args, &mut out) {
                Ok(moved) => {
                    eprintln!(
                        "exported {} sessions, {} messages",
                        moved.sessions, moved.messages
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => exit_with(&error),
            };
        }
        Command::Import(args) => {
            return match sessiond::admin::import(&args, std::io::stdin().lock()) {
                Ok(moved) => {
                    eprintln!(
                        "imported {} sessions, {} messages",
                        moved.sessions, moved.messages
                    );
                    ExitCode::SUCCESS
                }
                Err(sessiond::transfer::ImportError::Store(error)) => exit_with(&error),
                Err(refused @ sessiond::transfer::ImportError::Line { moved, .. }) => {
                    eprintln!(
                        "sessiond: import stopped at {refused}; {} sessions ({} messages) were imported",
                        moved.sessions, moved.messages
                    );
                    ExitCode::FAILURE
                }
            };
        }
        Command::Backup(args) => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let fetched = sessiond::backup::backup(&args, &mut out);
            drop(out);
            return match fetched {
                Ok(fetched) => {
                    if let Err(error) = sessiond::backup::sync_stdout() {
                        eprintln!("sessiond: the backup could not be synced to disk: {error}");
                        return ExitCode::FAILURE;
                    }
                    eprintln!(
                        "backed up {} sessions, {} messages ({} bytes) from {}",
                        fetched.moved.sessions, fetched.moved.messages, fetched.bytes, args.url
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("sessiond: {error}");
                    ExitCode::from(error.exit_code())
                }
            };
        }
        Command::Stats(args) => {
            return match sessiond::admin::stats(&args) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => exit_with(&error),
            };
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sessiond: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sessiond::app::run(config, sessiond::app::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => exit_with(&error),
    }
}

/// One line on stderr; exit 2 for a usage or configuration problem, 1 otherwise.
fn exit_with(error: &sessiond::Error) -> ExitCode {
    eprintln!("sessiond: {error}");
    match error {
        sessiond::Error::Config(_)
        | sessiond::Error::InUse(_)
        | sessiond::Error::Damaged { .. } => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}
