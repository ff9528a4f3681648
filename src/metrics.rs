//! The server's metrics, served in Prometheus's text format: requests by route, the store's
//! writer and writes ([`StoreMetrics`]), sessions, streams, the background tasks, the store's
//! state and size, the build, and the process. Each server has a registry of its own, so
//! servers embedded side by side in one process count apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::domain::Timestamp;
use crate::store::metrics::{counter, gauge, histogram};
use crate::store::StoreMetrics;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Request latencies, from a cached read to a held reply.
const REQUEST_SECONDS: [f64; 14] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A sweep's duration: milliseconds when little expired, minutes for a backlog.
const SWEEP_SECONDS: [f64; 10] = [0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0];

/// Every instrument of one server.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    /// The sweeper's instruments.
    pub sweeper: SweeperMetrics,
    /// Up to when the notifier has looked for due notices, in Unix milliseconds.
    notifier_looked_through: std::sync::Arc<AtomicU64>,
    notifier_lag_seconds: prometheus::Gauge,
    sessions_active: IntGauge,
    sessions_expiring_soon: IntGauge,
    open_streams: IntGauge,
    store_bytes: IntGauge,
    storage_unavailable: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The sweeper's instruments.
#[derive(Clone)]
pub struct SweeperMetrics {
    /// Expired sessions removed.
    pub sessions_removed: IntCounter,
    /// Messages removed with them.
    pub messages_removed: IntCounter,
    /// How long each sweep took.
    pub sweep_seconds: Histogram,
}

impl std::fmt::Debug for SweeperMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SweeperMetrics").finish_non_exhaustive()
    }
}

impl SweeperMetrics {
    /// Unregistered instruments, for a sweeper run on its own (tests, tools).
    pub fn unregistered() -> Self {
        SweeperMetrics {
            sessions_removed: counter(
                "sessiond_sweeper_sessions_removed_total",
                "Expired sessions the sweeper removed.",
            ),
            messages_removed: counter(
                "sessiond_sweeper_messages_removed_total",
                "Messages removed with the sessions the sweeper removed.",
            ),
            sweep_seconds: histogram(
                "sessiond_sweeper_sweep_seconds",
                "Seconds each sweep took.",
                &SWEEP_SECONDS,
            ),
        }
    }
}

/// What a scrape reads from the server at that moment.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    /// The time now, on the server's clock.
    pub now: Timestamp,
    /// Active sessions and those inside their warning window; `None` when the store could
    /// not say in time (the gauges keep their last values).
    pub sessions: Option<(u64, u64)>,
    /// Bytes the store occupies; `None` as above.
    pub store_bytes: Option<u64>,
    /// Whether the store refuses writes.
    pub storage_unavailable: bool,
    /// Event and reply streams open.
    pub open_streams: usize,
}

impl Metrics {
    /// A registry with every instrument of a server on `engine` (`sled` or `postgres`),
    /// the store's among them, and the process's.
    pub fn new(store: &StoreMetrics, engine: &str) -> Self {
        let labels = ["route", "method", "status"];
        let requests = IntCounterVec::new(
            Opts::new(
                "sessiond_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
            ),
            &labels,
        )
        .expect("a valid counter");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sessiond_http_request_duration_seconds",
                "Seconds from a request's arrival to its response head, by route template, method and status (an event stream: until it opened).",
            )
            .buckets(REQUEST_SECONDS.to_vec()),
            &labels,
        )
        .expect("a valid histogram");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sessiond_build_info",
                "Always 1; the labels name the build and the storage engine.",
            ),
            &["version", "engine"],
        )
        .expect("a valid gauge");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), engine])
            .set(1);
        let metrics = Metrics {
            registry: Registry::new(),
            requests,
            request_seconds,
            sweeper: SweeperMetrics::unregistered(),
            notifier_looked_through: std::sync::Arc::new(AtomicU64::new(0)),
            notifier_lag_seconds: prometheus::Gauge::with_opts(Opts::new(
                "sessiond_notifier_lag_seconds",
                "How far behind now the notifier's last completed look for due notices is.",
            ))
            .expect("a valid gauge"),
            sessions_active: gauge(
                "sessiond_sessions_active",
                "Sessions that have not expired.",
            ),
            sessions_expiring_soon: gauge(
                "sessiond_sessions_expiring_soon",
                "Active sessions inside their warning window.",
            ),
            open_streams: gauge(
                "sessiond_streams_open",
                "Event streams and reply streams open.",
            ),
            store_bytes: gauge("sessiond_store_bytes", "Bytes the store occupies on disk."),
            storage_unavailable: gauge(
                "sessiond_storage_unavailable",
                "1 while the store refuses writes (a full disk, an unreachable database), else 0.",
            ),
        };
        let registry = &metrics.registry;
        let registered = store.register(registry).and_then(|()| {
            let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
                Box::new(metrics.requests.clone()),
                Box::new(metrics.request_seconds.clone()),
                Box::new(metrics.sweeper.sessions_removed.clone()),
                Box::new(metrics.sweeper.messages_removed.clone()),
                Box::new(metrics.sweeper.sweep_seconds.clone()),
                Box::new(metrics.notifier_lag_seconds.clone()),
                Box::new(metrics.sessions_active.clone()),
                Box::new(metrics.sessions_expiring_soon.clone()),
                Box::new(metrics.open_streams.clone()),
                Box::new(metrics.store_bytes.clone()),
                Box::new(metrics.storage_unavailable.clone()),
                Box::new(build_info),
                Box::new(prometheus::process_collector::ProcessCollector::for_self()),
            ];
            collectors
                .into_iter()
                .try_for_each(|collector| registry.register(collector))
        });
        // Names are fixed above and each is registered once in a fresh registry.
        registered.expect("every instrument has a name of its own");
        metrics
    }

    /// Counts an answered request; `elapsed` is the time to its response head.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.request_seconds
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Where the notifier records up to when it has looked.
    pub fn notifier_progress(&self) -> std::sync::Arc<AtomicU64> {
        self.notifier_looked_through.clone()
    }

    /// Every metric in the text format, with the gauges read from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        if let Some((active, expiring_soon)) = snapshot.sessions {
            self.sessions_active.set(saturating_i64(active));
            self.sessions_expiring_soon
                .set(saturating_i64(expiring_soon));
        }
        if let Some(bytes) = snapshot.store_bytes {
            self.store_bytes.set(saturating_i64(bytes));
        }
        self.storage_unavailable
            .set(i64::from(snapshot.storage_unavailable));
        self.open_streams
            .set(i64::try_from(snapshot.open_streams).unwrap_or(i64::MAX));
        let looked_through = self.notifier_looked_through.load(Ordering::Relaxed);
        // Zero until the notifier starts (it records its start).
        if looked_through > 0 {
            let lag = snapshot.now.as_millis().saturating_sub(looked_through);
            self.notifier_lag_seconds.set(lag as f64 / 1000.0);
        }
        let mut text = Vec::new();
        // Writing to a Vec fails only on a metric the encoder cannot spell, which the fixed
        // names and labels above never are.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::error!(%error, "encoding the metrics failed");
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
