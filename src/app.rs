//! Building and running the server: bind, open the store, spawn the sweeper, serve, and
//! shut down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::ServeConfig;
use crate::domain::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::store::{Store, StoreOptions};
use crate::{notifier, sweeper};

/// A server running on the current tokio runtime.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    store: Store,
    /// Cancelled to begin shutdown; the HTTP server, event streams, held requests and the
    /// background tasks all watch it.
    shutdown: CancellationToken,
    http: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    notifier: JoinHandle<()>,
}

/// Checks the settings and the data directory, binds, opens the store and starts serving
/// on the current runtime with the system clock.
///
/// # Errors
/// [`Error::Config`] for inconsistent settings, an unusable data directory or an address
/// that cannot be bound (nothing is opened then); store errors from opening.
pub async fn start(config: ServeConfig) -> Result<RunningServer> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// [`start`] with an injected clock.
///
/// # Errors
/// As [`start`].
pub async fn start_with_clock(config: ServeConfig, clock: Arc<dyn Clock>) -> Result<RunningServer> {
    config.validate().map_err(Error::Config)?;
    check_data_dir(&config.data_dir)?;
    // Bind ourselves: warp's `run(addr)` panics when the bind fails (and our own loop adds
    // the connection limits).
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", config.addr)))?;
    let addr = listener.local_addr()?;

    let (path, options) = (
        config.data_dir.clone(),
        StoreOptions {
            cache_capacity_bytes: config.cache_mb * 1024 * 1024,
        },
    );
    let store = tokio::task::spawn_blocking(move || Store::open(&path, &options))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;

    let state = AppState::new(store.clone(), &config, clock.clone());
    let shutdown = state.shutdown.clone();
    let http = tokio::spawn(crate::http::serve(
        listener,
        api::routes(&state),
        config.connection_limits(),
        shutdown.clone(),
    ));
    let schedule = sweeper::SweepSchedule {
        interval: config.sweep_interval(),
        expired_retention: config.expired_retention(),
        event_retention: config.event_retention(),
    };
    let sweeper = tokio::spawn(sweeper::run_until_stopped(
        store.clone(),
        clock.clone(),
        schedule,
        shutdown.clone(),
    ));
    // Catch up on notices that fell due while the server was down, back to the oldest
    // expired session still kept.
    let notifier = tokio::spawn(notifier::run_until_stopped(
        store.clone(),
        clock,
        config.expired_retention(),
        shutdown.clone(),
    ));
    tracing::info!(settings = ?config.redacted(), "settings in effect");
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "sessiond listening");
    Ok(RunningServer {
        addr,
        store,
        shutdown,
        http,
        sweeper,
        notifier,
    })
}

impl RunningServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The store the server writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops the server and waits until it has stopped and the store is closed, so the data
    /// directory can be reopened at once.
    ///
    /// # Errors
    /// The final flush failed, or the store could not be closed.
    pub async fn shutdown(self) -> Result<()> {
        // Order: the token stops accepting, ends event streams and answers held requests
        // at once; warp's graceful shutdown then lets in-flight requests finish; then the
        // background tasks stop; then a flush puts everything on disk before exit.
        self.shutdown.cancel();
        self.store.close_subscriptions();
        if let Err(error) = self.http.await {
            tracing::error!(%error, "HTTP server task failed");
        }
        for (task, name) in [(self.sweeper, "sweeper"), (self.notifier, "notifier")] {
            if let Err(error) = task.await {
                tracing::error!(%error, "{name} task failed");
            }
        }
        let store = self.store;
        tokio::task::spawn_blocking(move || store.flush().and_then(|()| store.close()))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        tracing::info!("sessiond stopped");
        Ok(())
    }
}

/// Runs until `shutdown` completes, then stops gracefully.
///
/// # Errors
/// As [`start`] and [`RunningServer::shutdown`].
pub async fn run(config: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let server = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    server.shutdown().await
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// Creates the data directory if needed and proves it is writable.
fn check_data_dir(path: &Path) -> Result<()> {
    let unusable = |e: std::io::Error| {
        Error::Config(format!(
            "data directory {} is not writable: {e}",
            path.display()
        ))
    };
    std::fs::create_dir_all(path).map_err(unusable)?;
    let probe = path.join(".sessiond-write-check");
    std::fs::write(&probe, b"ok").map_err(unusable)?;
    std::fs::remove_file(&probe).map_err(unusable)?;
    Ok(())
}
