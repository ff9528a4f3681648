//! Building and running sessiond: embedded in another program ([`Sessiond`]: the store,
//! the background tasks, the routes), or as a server of its own ([`start`]: the same behind
//! an HTTP listener), and shutting down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use warp::filters::BoxedFilter;

use crate::api::{self, AppState};
use crate::config::ServeConfig;
use crate::domain::{Clock, EventFilter, SystemClock};
use crate::error::{Error, Result};
use crate::store::{EventStream, PgOptions, Store, StoreOptions, UnknownEventId};
use crate::{notifier, sweeper};

/// sessiond inside another program, on its tokio runtime: the store, the background tasks
/// that sweep expired sessions and send `session.expiring`/`session.expired`, the HTTP
/// routes to mount in a warp app, and the events in-process. [`Sessiond::shutdown`] stops
/// it all and closes the store.
#[derive(Debug)]
pub struct Sessiond {
    state: AppState,
    sweeper: JoinHandle<()>,
    notifier: JoinHandle<()>,
}

impl Sessiond {
    /// Checks the settings, opens (or creates) the store in `config.data_dir` and starts
    /// the background tasks, with the system clock. Reads no environment variable: every
    /// setting comes from `config` (start from [`ServeConfig::default`]).
    ///
    /// # Errors
    /// [`Error::Config`] for inconsistent settings or an unusable data directory,
    /// [`Error::InUse`] when another process (another instance of the app) has the store
    /// open, and store errors from opening.
    pub async fn open(config: &ServeConfig) -> Result<Sessiond> {
        Sessiond::open_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Sessiond::open`] with an injected clock.
    ///
    /// # Errors
    /// As [`Sessiond::open`].
    pub async fn open_with_clock(config: &ServeConfig, clock: Arc<dyn Clock>) -> Result<Sessiond> {
        config.validate().map_err(Error::Config)?;
        // Every deadline would be decades past, and the storage engine assumes a clock
        // after 1970.
        if clock.now() == crate::domain::Timestamp::EPOCH {
            return Err(Error::Config(
                "the system clock reads 1970-01-01 or earlier; set it before starting sessiond"
                    .into(),
            ));
        }
        let store = match &config.store {
            Some(url) => {
                let options = PgOptions {
                    pool_size: config.pg_pool_size,
                    statement_timeout: std::time::Duration::from_secs(
                        config.pg_statement_timeout_seconds,
                    ),
                };
                Store::open_postgres(url, &options, clock).await?
            }
            None => {
                check_data_dir(&config.data_dir)?;
                let (path, options) = (
                    config.data_dir.clone(),
                    StoreOptions {
                        cache_capacity_bytes: config.cache_mb * 1024 * 1024,
                        ..StoreOptions::default()
                    },
                );
                tokio::task::spawn_blocking(move || Store::open_with_clock(&path, &options, clock))
                    .await
                    .map_err(|e| Error::Io(std::io::Error::other(e)))??
            }
        };
        let state = AppState::new(store.clone(), config);
        let schedule = sweeper::SweepSchedule {
            interval: config.sweep_interval(),
            expired_retention: config.expired_retention(),
            event_retention: config.event_retention(),
        };
        let sweeper = tokio::spawn(sweeper::run_until_stopped(
            store.clone(),
            schedule,
            state.metrics.sweeper.clone(),
            state.shutdown.clone(),
        ));
        // Catch up on notices that fell due while the store was closed, back to the oldest
        // expired session still kept.
        let notifier = tokio::spawn(notifier::run_until_stopped(
            store,
            config.expired_retention(),
            state.metrics.notifier_progress(),
            state.shutdown.clone(),
        ));
        Ok(Sessiond {
            state,
            sweeper,
            notifier,
        })
    }

    /// The HTTP API, to mount in a warp app: it answers the paths under `/api/messaging`,
    /// `/api/openapi.json`, `/v1/ask-feather`, `/api/admin/export` (an online backup) and
    /// `/inspect` (the inspector's page), and rejects every other path, so it can be mounted
    /// before or after the app's own routes.
    pub fn routes(&self) -> BoxedFilter<(warp::reply::Response,)> {
        api::routes(&self.state)
    }

    /// `GET /metrics` in Prometheus's text format, to mount in a warp app behind whatever
    /// guard it uses: it rejects every other request as not found. It counts the store's
    /// work, sessions, streams, the background tasks and the process; no request metrics,
    /// which sessiond's own server records.
    pub fn metrics_route(&self) -> BoxedFilter<(warp::reply::Response,)> {
        api::metrics_route(&self.state)
    }

    /// The store, to use directly.
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Every event matching `filter` after the event id `after` (`None`: from now on;
    /// `Some(0)`: every event kept), in order, from the store and then live; see
    /// [`Store::events`]. The stream also ends at [`Sessiond::shutdown`].
    ///
    /// # Errors
    /// [`UnknownEventId`] when `after` is ahead of every event this store has published.
    pub fn events(
        &self,
        filter: EventFilter,
        after: Option<u64>,
    ) -> std::result::Result<EventStream, UnknownEventId> {
        let stream = self.state.store.events(filter, after)?;
        Ok(Box::pin(
            stream.take_until(self.state.shutdown.clone().cancelled_owned()),
        ))
    }

    /// Signals shutdown to everything that watches for it, and ends every live event
    /// subscription and held request at once. Repeating it changes nothing.
    fn end_streams(&self) {
        self.state.shutdown.cancel();
        self.state.store.close_subscriptions();
    }

    /// Stops the background tasks, ends event streams and held requests at once, and
    /// flushes and closes the store, so its directory can be reopened at once. Stop serving
    /// [`Sessiond::routes`] and drop them and every [`Sessiond::events`] stream first: they
    /// hold the store, which closes only once nothing else holds it.
    ///
    /// # Errors
    /// The final flush failed, or the store could not be closed.
    pub async fn shutdown(self) -> Result<()> {
        self.end_streams();
        for (task, name) in [(self.sweeper, "sweeper"), (self.notifier, "notifier")] {
            if let Err(error) = task.await {
                tracing::error!(%error, "{name} task failed");
            }
        }
        let store = self.state.store;
        tokio::task::spawn_blocking(move || store.flush().and_then(|()| store.close()))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        Ok(())
    }
}

/// A server running on the current tokio runtime: [`Sessiond`] behind its own HTTP
/// listener.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    sessiond: Sessiond,
    /// The API's listener, and the metrics listener's when there is one.
    http: Vec<JoinHandle<()>>,
}

/// Checks the settings and the data directory, binds, opens the store and starts serving
/// on the current runtime with the system clock.
///
/// # Errors
/// [`Error::Config`] for inconsistent settings, an unusable data directory or an address
/// that cannot be bound (nothing is opened then); [`Error::InUse`] and other store errors
/// from opening.
pub async fn start(config: ServeConfig) -> Result<RunningServer> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// [`start`] with an injected clock.
///
/// # Errors
/// As [`start`].
pub async fn start_with_clock(config: ServeConfig, clock: Arc<dyn Clock>) -> Result<RunningServer> {
    config.validate().map_err(Error::Config)?;
    // Bind ourselves: warp's `run(addr)` panics when the bind fails (and our own loop adds
    // the connection limits).
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))
    };
    let listener = bind(config.addr).await?;
    let metrics_listener = match config.metrics_addr {
        Some(metrics_addr) => Some(bind(metrics_addr).await?),
        None => None,
    };
    let addr = listener.local_addr()?;
    let metrics_addr = match &metrics_listener {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    let sessiond = Sessiond::open_with_clock(&config, clock).await?;
    let state = &sessiond.state;
    let log = crate::http::access::RequestLog::new(state.metrics.clone(), api::route_template);
    let mut http = vec![tokio::spawn(crate::http::serve(
        listener,
        api::server_routes(state),
        config.connection_limits(),
        log.clone(),
        state.shutdown.clone(),
    ))];
    if let Some(listener) = metrics_listener {
        http.push(tokio::spawn(crate::http::serve(
            listener,
            api::metrics_routes(state),
            config.connection_limits(),
            log,
            state.shutdown.clone(),
        )));
    }
    tracing::info!(settings = ?config.redacted(), "settings in effect");
    match &config.store {
        Some(url) => {
            let store = crate::store::url_without_password(url);
            tracing::info!(%addr, %store, "sessiond listening");
        }
        None => tracing::info!(%addr, data_dir = %config.data_dir.display(), "sessiond listening"),
    }
    if let Some(metrics_addr) = metrics_addr {
        tracing::info!(%metrics_addr, "serving /metrics without the API key");
    }
    Ok(RunningServer {
        addr,
        metrics_addr,
        sessiond,
        http,
    })
}

impl RunningServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the metrics listener, when `--metrics-addr` asked for one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The store the server writes to.
    pub fn store(&self) -> &Store {
        self.sessiond.store()
    }

    /// Stops the server and waits until it has stopped and the store is closed, so the data
    /// directory can be reopened at once.
    ///
    /// # Errors
    /// The final flush failed, or the store could not be closed.
    pub async fn shutdown(self) -> Result<()> {
        // Order: the token stops accepting, ends event streams and answers held requests
        // at once; the graceful shutdown then lets in-flight requests finish; then the
        // background tasks stop; then a flush puts everything on disk before exit.
        self.sessiond.end_streams();
        for listener in self.http {
            if let Err(error) = listener.await {
                tracing::error!(%error, "HTTP server task failed");
            }
        }
        self.sessiond.shutdown().await?;
        tracing::info!("sessiond stopped");
        Ok(())
    }
}

/// Runs until `shutdown` completes, then stops gracefully.
///
/// # Errors
/// As [`start`] and [`RunningServer::shutdown`].
pub async fn run(config: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    // One poll installs the signal handlers before the server says it listens, so a signal
    // sent from then on stops it gracefully rather than by the signal's default.
    if shutdown.as_mut().now_or_never().is_some() {
        return Ok(());
    }
    let server = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    server.shutdown().await
}

/// Completes on the first signal that asks the process to stop: Ctrl-C (SIGINT), SIGTERM,
/// SIGHUP (the terminal went away) or SIGQUIT. Each stops sessiond the same graceful way;
/// none is left to its default of ending the process without a drain.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let others = async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut streams = Vec::new();
        for (kind, name) in [
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::hangup(), "SIGHUP"),
            (SignalKind::quit(), "SIGQUIT"),
        ] {
            match signal(kind) {
                Ok(stream) => streams.push((stream, name)),
                Err(error) => tracing::error!(%error, "cannot listen for {name}"),
            }
        }
        if streams.is_empty() {
            std::future::pending::<()>().await;
        }
        let received = futures_util::future::select_all(
            streams
                .iter_mut()
                .map(|(stream, name)| Box::pin(async move { (stream.recv().await, *name) })),
        )
        .await;
        tracing::info!(signal = received.0 .1, "stopping on a signal");
    };
    #[cfg(not(unix))]
    let others = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = others => {}
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
    // Empty: on a full disk the store still opens, refusing writes until space is freed.
    std::fs::File::create(&probe).map_err(unusable)?;
    std::fs::remove_file(&probe).map_err(unusable)?;
    Ok(())
}
