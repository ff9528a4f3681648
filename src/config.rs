//! Command-line flags and environment variables: the only place they are read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::domain::TimeoutPolicy;

/// Default listen address: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:3000";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default request body limit (64 KiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024;
/// Default request head limit (64 KiB, as the body's).
pub const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long shutdown waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default sweep interval.
pub const DEFAULT_SWEEP_INTERVAL_SECONDS: u64 = 60;

/// sessiond: durable conversation sessions between users and AI agents.
#[derive(Debug, Parser)]
#[command(name = "sessiond", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// How log lines are written to stderr: `text` for people, `json` for collectors (one
    /// object per line: timestamp, level, target, message, fields, and `span.request_id`
    /// on the lines of a request).
    #[arg(
        long,
        global = true,
        env = "SESSIOND_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(Box<ServeConfig>),
    /// Verify a store offline: indexes, counters, message sequences, encodings. Exit 0 when
    /// clean, 1 with a report otherwise. A sled store must have no server running on it.
    Check(StoreArgs),
    /// Print a store's counts and sizes. A sled store must have no server running on it.
    Stats(StoreArgs),
    /// Write the whole store to stdout as NDJSON: a header line, one line per session with
    /// its messages, an end line (docs/EXPORT.md). A sled store must have no server running
    /// on it; for a running server, use `backup`.
    Export(StoreArgs),
    /// Load an export from stdin into a store (made if missing), keeping every id, seq,
    /// parent and time; refuses sessions and messages whose ids are taken. A sled store must
    /// have no server running on it.
    Import(StoreArgs),
    /// Fetch the export of a running server (GET /api/admin/export) to stdout while it goes
    /// on serving, with progress on stderr; exit 1 if it did not come whole. Restore it with
    /// `import`.
    Backup(BackupArgs),
}

/// Where `sessiond backup` fetches the export from.
#[derive(Clone, Debug, Args)]
pub struct BackupArgs {
    /// The server's base URL, plain HTTP: http://HOST:PORT (e.g. http://127.0.0.1:3000). For
    /// a server behind a TLS proxy, fetch /api/admin/export with an HTTPS client (curl).
    #[arg(long, env = "SESSIOND_URL")]
    pub url: String,
    /// The server's API key, sent as X-API-Key.
    #[arg(long, env = "SESSIOND_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// Which store an offline command works on: sled under --data-dir, or PostgreSQL.
#[derive(Clone, Debug, Args)]
pub struct StoreArgs {
    /// Directory of a sled store.
    #[arg(long, env = "SESSIOND_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// A PostgreSQL store instead (`postgres://USER[:PASS]@HOST:PORT/DB`).
    #[arg(long, env = "SESSIOND_STORE", hide_env_values = true)]
    pub store: Option<String>,
}

/// Everything `sessiond serve` can be told. Every flag also reads an environment variable.
#[derive(Clone, Debug, Args)]
pub struct ServeConfig {
    /// Address to listen on, an IP and a port (a host name such as localhost is resolved
    /// once, at start). Without an API key, keep it on loopback.
    #[arg(long, env = "SESSIOND_ADDR", default_value = DEFAULT_ADDR, value_parser = parse_addr)]
    pub addr: SocketAddr,

    /// Directory of the store (created if missing).
    #[arg(long, env = "SESSIOND_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Also serve `/metrics` on this address, without the API key, for scrapers: a port
    /// alone listens on 127.0.0.1. `/metrics` on --addr needs the key when one is set.
    #[arg(long, env = "SESSIOND_METRICS_ADDR", value_parser = parse_metrics_addr)]
    pub metrics_addr: Option<SocketAddr>,

    /// Keep the store in this PostgreSQL database (`postgres://USER[:PASS]@HOST:PORT/DB`,
    /// or `postgresql://`) instead of sled under --data-dir. Several servers may share one.
    #[arg(long, env = "SESSIOND_STORE", hide_env_values = true)]
    pub store: Option<String>,

    /// With --store: connections each server keeps for reads (its writer has one more).
    #[arg(long, env = "SESSIOND_PG_POOL_SIZE", default_value_t = 16)]
    pub pg_pool_size: usize,

    /// With --store: the longest PostgreSQL may run one statement before cancelling it.
    #[arg(
        long,
        env = "SESSIOND_PG_STATEMENT_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub pg_statement_timeout_seconds: u64,

    /// When set, every route except health and the inspector's page requires this value in
    /// `X-API-Key` (`/metrics` on --metrics-addr does not).
    #[arg(long, env = "SESSIOND_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Inactivity timeout of a session whose client gives none.
    #[arg(long, env = "SESSION_DEFAULT_TIMEOUT_MINUTES", default_value_t = 30)]
    pub default_timeout_minutes: u32,

    /// Smallest timeout a client may ask for (0 allows sessions that expire at once).
    #[arg(long, env = "SESSION_MIN_TIMEOUT_MINUTES", default_value_t = 5)]
    pub min_timeout_minutes: u32,

    /// Largest timeout a client may ask for.
    #[arg(long, env = "SESSION_MAX_TIMEOUT_MINUTES", default_value_t = 1440)]
    pub max_timeout_minutes: u32,

    /// Maximum duration of a session whose client gives none.
    #[arg(long, env = "SESSION_MAX_DURATION_MINUTES", default_value_t = 720)]
    pub max_duration_minutes: u32,

    /// Largest maximum duration a client may ask for.
    #[arg(
        long,
        env = "SESSIOND_MAX_DURATION_LIMIT_MINUTES",
        default_value_t = 2880
    )]
    pub max_duration_limit_minutes: u32,

    /// Warning threshold of a session whose client gives none.
    #[arg(long, env = "SESSION_WARNING_THRESHOLD_MINUTES", default_value_t = 5)]
    pub warning_threshold_minutes: u32,

    /// Seconds between sweeps of expired sessions [default: 60, or
    /// SESSION_CLEANUP_INTERVAL_MINUTES × 60 when only that is set].
    #[arg(long, env = "SESSIOND_SWEEP_INTERVAL_SECONDS")]
    pub sweep_interval_seconds: Option<u64>,

    /// The sweep interval in minutes (the elizaOS setting); --sweep-interval-seconds wins.
    #[arg(long, env = "SESSION_CLEANUP_INTERVAL_MINUTES")]
    pub cleanup_interval_minutes: Option<u64>,

    /// How long an expired session is kept (answering 410) before the sweeper removes it.
    #[arg(long, env = "SESSIOND_EXPIRED_RETENTION_MINUTES", default_value_t = 60)]
    pub expired_retention_minutes: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SESSIOND_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: u64,

    /// Most request-body bytes being read at once, across all requests, in MiB: past it a
    /// request with a body is refused with 503 rather than grow memory.
    #[arg(long, env = "SESSIOND_MAX_INFLIGHT_BODY_MB", default_value_t = 64)]
    pub max_inflight_body_mb: u64,

    /// How long events are kept for replay with Last-Event-ID.
    #[arg(long, env = "SESSIOND_EVENT_RETENTION_MINUTES", default_value_t = 1440)]
    pub event_retention_minutes: u64,

    /// How long a request with `transport: "http"` or `"sse"` waits for the agent's reply.
    /// Below the 30 s after which elizaOS's client gives up on a request, so that client sees
    /// `agentResponse: null` rather than its own timeout.
    #[arg(long, env = "SESSIOND_REPLY_TIMEOUT_SECONDS", default_value_t = 25)]
    pub reply_timeout_seconds: u64,

    /// sled's page cache budget in MiB; bounds resident memory.
    #[arg(long, env = "SESSIOND_CACHE_MB", default_value_t = 64)]
    pub cache_mb: u64,

    /// Listen on a non-loopback address without an API key (anyone who can reach the port
    /// can then read and write every conversation). The variable takes true/false, 1/0,
    /// yes/no or on/off.
    #[arg(
        long,
        env = "SESSIOND_ALLOW_UNAUTHENTICATED",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_unauthenticated: bool,

    /// A browser origin allowed to call the API (CORS); repeat for more. None by default.
    #[arg(
        long = "cors-origin",
        env = "SESSIOND_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Most connections served at once; more wait in the listen backlog.
    #[arg(long, env = "SESSIOND_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Largest request head (request line and headers), in bytes; a larger one is answered
    /// 431 HEADERS_TOO_LARGE.
    #[arg(long, env = "SESSIOND_MAX_HEAD_BYTES", default_value_t = DEFAULT_MAX_HEAD_BYTES)]
    pub max_head_bytes: usize,

    /// Most streams open at once (event streams, `transport: "sse"` answers, exports), below
    /// --max-connections so that ordinary requests always have connections left; past it a
    /// stream is refused with 503.
    #[arg(long, env = "SESSIOND_MAX_STREAMS", default_value_t = 512)]
    pub max_streams: usize,

    /// Seconds a client has to send a request's headers, after connecting or after its
    /// previous response (so also the keep-alive idle limit).
    #[arg(
        long,
        env = "SESSIOND_HEADER_READ_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub header_read_timeout_seconds: u64,

    /// Seconds a client has to send a whole request, headers and body, after connecting or
    /// after its previous response: a body trickled in a byte at a time is cut off.
    #[arg(
        long,
        env = "SESSIOND_REQUEST_READ_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    pub request_read_timeout_seconds: u64,

    /// Seconds a connection may pass with no byte read or written before it is closed. A
    /// connection whose request the server is still answering (a held reply, an event
    /// stream) is not idle while the client reads what it is sent.
    #[arg(long, env = "SESSIOND_IDLE_TIMEOUT_SECONDS", default_value_t = 60)]
    pub idle_timeout_seconds: u64,
}

/// `--addr`: an IP and a port, or a host name and a port resolved now (IPv4 preferred, as
/// `localhost` then means what most clients try first).
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let hint = "give an IP address and a port, e.g. 127.0.0.1:3000";
    let resolved: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {text:?} ({e}); {hint}"))?
        .collect();
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address; {hint}"))
}

/// `--metrics-addr`: as `--addr`, or a port alone, on loopback.
fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    match text.parse::<u16>() {
        Ok(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => parse_addr(text),
    }
}

impl Default for ServeConfig {
    /// The same values as `sessiond serve` with no flags and no environment. Reads nothing:
    /// an application that embeds sessiond, or a test, is not changed by the variables of
    /// the process it runs in.
    fn default() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            config: ServeConfig,
        }
        let command = Defaults::command().mut_args(|arg| arg.env(None));
        // An empty argument list cannot fail to parse: every field has a default or is
        // optional, and no environment variable is consulted.
        let matches = command
            .try_get_matches_from(["sessiond"])
            .expect("every serve flag has a default");
        Defaults::from_arg_matches(&matches)
            .expect("every serve flag has a default")
            .config
    }
}

impl ServeConfig {
    /// Checks that the settings agree with each other.
    ///
    /// # Errors
    /// One line naming the first setting at fault.
    pub fn validate(&self) -> Result<(), String> {
        let (min, max, default) = (
            self.min_timeout_minutes,
            self.max_timeout_minutes,
            self.default_timeout_minutes,
        );
        if min > max {
            return Err(format!(
                "--min-timeout-minutes ({min}) is larger than --max-timeout-minutes ({max})"
            ));
        }
        if !(min..=max).contains(&default) {
            return Err(format!(
                "--default-timeout-minutes ({default}) must be between --min-timeout-minutes ({min}) and --max-timeout-minutes ({max})"
            ));
        }
        let (duration, limit) = (self.max_duration_minutes, self.max_duration_limit_minutes);
        if !(default..=limit).contains(&duration) {
            return Err(format!(
                "--max-duration-minutes ({duration}) must be between --default-timeout-minutes ({default}) and --max-duration-limit-minutes ({limit})"
            ));
        }
        if self.warning_threshold_minutes > default {
            return Err(format!(
                "--warning-threshold-minutes ({}) must not exceed --default-timeout-minutes ({default})",
                self.warning_threshold_minutes
            ));
        }
        if self.sweep_interval().is_zero() {
            return Err("the sweep interval must be at least one second".into());
        }
        if self.max_head_bytes < 1024 {
            return Err("--max-head-bytes must be at least 1024".into());
        }
        if self.max_body_bytes == 0 {
            return Err("--max-body-bytes must be at least 1".into());
        }
        if self.inflight_body_budget() < self.max_body_bytes {
            return Err(format!(
                "--max-inflight-body-mb ({}) must hold at least one body of --max-body-bytes ({})",
                self.max_inflight_body_mb, self.max_body_bytes
            ));
        }
        if self.cache_mb == 0 {
            return Err("--cache-mb must be at least 1".into());
        }
        if let Some(url) = &self.store {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(format!(
                    "--store ({}) must be a PostgreSQL URL: postgres://USER[:PASS]@HOST:PORT/DB",
                    crate::store::url_without_password(url)
                ));
            }
            if self.pg_pool_size == 0 || self.pg_statement_timeout_seconds == 0 {
                return Err(
                    "--pg-pool-size and --pg-statement-timeout-seconds must be at least 1".into(),
                );
            }
        }
        match &self.api_key {
            Some(key) if key.trim().is_empty() => {
                return Err(
                    "--api-key (SESSIOND_API_KEY) is set but empty; give a key or unset it".into(),
                );
            }
            None if !self.addr.ip().is_loopback() && !self.allow_unauthenticated => {
                return Err(format!(
                    "refusing to listen on {} without an API key: anyone who can reach it could read and write every conversation; set --api-key (SESSIOND_API_KEY), or pass --allow-unauthenticated",
                    self.addr
                ));
            }
            _ => {}
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self
            .metrics_addr
            .is_some_and(|metrics| metrics == self.addr && metrics.port() != 0)
        {
            return Err(format!(
                "--metrics-addr ({}) must differ from --addr: /metrics is served on --addr already",
                self.addr
            ));
        }
        if self.max_streams == 0 || self.max_streams >= self.max_connections {
            return Err(format!(
                "--max-streams ({}) must be at least 1 and below --max-connections ({}), so that ordinary requests always have connections left",
                self.max_streams, self.max_connections
            ));
        }
        if self.header_read_timeout_seconds == 0 || self.idle_timeout_seconds == 0 {
            return Err(
                "--header-read-timeout-seconds and --idle-timeout-seconds must be at least 1"
                    .into(),
            );
        }
        if self.request_read_timeout_seconds < self.header_read_timeout_seconds {
            return Err(format!(
                "--request-read-timeout-seconds ({}) must be at least --header-read-timeout-seconds ({}): a request's headers are part of it",
                self.request_read_timeout_seconds, self.header_read_timeout_seconds
            ));
        }
        if self.header_read_timeout_seconds > self.idle_timeout_seconds {
            return Err(format!(
                "--header-read-timeout-seconds ({}) must not exceed --idle-timeout-seconds ({}): a client still sending its headers would be cut off as idle first",
                self.header_read_timeout_seconds, self.idle_timeout_seconds
            ));
        }
        for origin in &self.cors_origins {
            if origin.parse::<warp::http::HeaderValue>().is_err() || !origin.contains("://") {
                return Err(format!(
                    "--cors-origin {origin:?} is not an origin like https://app.example.com"
                ));
            }
        }
        Ok(())
    }

    /// The settings as they may be logged: every field, the API key only as `<set>`.
    pub fn redacted(&self) -> ServeConfig {
        ServeConfig {
            api_key: self.api_key.as_ref().map(|_| "<set>".to_owned()),
            store: self
                .store
                .as_deref()
                .map(crate::store::url_without_password),
            ..self.clone()
        }
    }

    /// The timeout defaults and bounds sessions are checked against.
    pub fn timeout_policy(&self) -> TimeoutPolicy {
        TimeoutPolicy {
            default_timeout_minutes: self.default_timeout_minutes,
            min_timeout_minutes: self.min_timeout_minutes,
            max_timeout_minutes: self.max_timeout_minutes,
            default_max_duration_minutes: self.max_duration_minutes,
            max_duration_limit_minutes: self.max_duration_limit_minutes,
            default_warning_threshold_minutes: self.warning_threshold_minutes,
        }
    }

    /// Time between sweeps: the seconds flag, else the elizaOS minutes variable, else 60 s.
    pub fn sweep_interval(&self) -> Duration {
        match (self.sweep_interval_seconds, self.cleanup_interval_minutes) {
            (Some(seconds), _) => Duration::from_secs(seconds),
            (None, Some(minutes)) => Duration::from_secs(minutes.saturating_mul(60)),
            (None, None) => Duration::from_secs(DEFAULT_SWEEP_INTERVAL_SECONDS),
        }
    }

    /// Request-body bytes that may be in flight at once.
    pub fn inflight_body_budget(&self) -> u64 {
        self.max_inflight_body_mb.saturating_mul(1024 * 1024)
    }

    /// How long events are kept for replay.
    pub fn event_retention(&self) -> Duration {
        Duration::from_secs(self.event_retention_minutes.saturating_mul(60))
    }

    /// How long a held request waits for the agent's reply.
    pub fn reply_timeout(&self) -> Duration {
        Duration::from_secs(self.reply_timeout_seconds)
    }

    /// The connection limits of the HTTP server.
    pub fn connection_limits(&self) -> crate::http::ConnectionLimits {
        crate::http::ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_secs(self.header_read_timeout_seconds),
            request_read_timeout: Duration::from_secs(self.request_read_timeout_seconds),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            drain_timeout: DRAIN_TIMEOUT,
            max_head_bytes: self.max_head_bytes,
        }
    }

    /// How long expired sessions are kept before sweeping.
    pub fn expired_retention(&self) -> Duration {
        Duration::from_secs(self.expired_retention_minutes.saturating_mul(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract_and_validate() {
        let config = ServeConfig::default();
        assert_eq!(config.addr, DEFAULT_ADDR.parse().unwrap());
        assert_eq!(config.default_timeout_minutes, 30);
        assert_eq!(config.max_body_bytes, 65536);
        assert_eq!(config.sweep_interval(), Duration::from_secs(60));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn defaults_read_no_environment_while_the_command_line_does() {
        // A variable no other test reads.
        std::env::set_var("SESSIOND_REPLY_TIMEOUT_SECONDS", "7");
        let from_default = ServeConfig::default();
        let cli = Cli::try_parse_from(["sessiond", "serve"]);
        std::env::remove_var("SESSIOND_REPLY_TIMEOUT_SECONDS");
        assert_eq!(from_default.reply_timeout_seconds, 25);
        let Command::Serve(from_cli) = cli.unwrap().command else {
            panic!("serve parses as Serve")
        };
        assert_eq!(from_cli.reply_timeout_seconds, 7);
    }

    #[test]
    fn seconds_flag_wins_over_the_minutes_variable() {
        let config = ServeConfig {
            cleanup_interval_minutes: Some(2),
            ..ServeConfig::default()
        };
        assert_eq!(config.sweep_interval(), Duration::from_secs(120));
        let config = ServeConfig {
            sweep_interval_seconds: Some(5),
            ..config
        };
        assert_eq!(config.sweep_interval(), Duration::from_secs(5));
    }

    #[test]
    fn inconsistent_timeouts_are_named() {
        let config = ServeConfig {
            default_timeout_minutes: 2,
            ..ServeConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert!(error.contains("--default-timeout-minutes (2)"), "{error}");

        let config = ServeConfig {
            min_timeout_minutes: 50,
            max_timeout_minutes: 10,
            ..ServeConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .contains("--min-timeout-minutes"));

        let config = ServeConfig {
            warning_threshold_minutes: 31,
            ..ServeConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .contains("--warning-threshold-minutes"));
    }

    #[test]
    fn the_stream_cap_must_leave_connections_for_ordinary_requests() {
        let config = ServeConfig {
            max_streams: 8,
            max_connections: 8,
            ..ServeConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("--max-streams (8)"));
        let below = ServeConfig {
            max_streams: 7,
            ..config
        };
        assert_eq!(below.validate(), Ok(()));
    }

    #[test]
    fn a_header_timeout_beyond_the_idle_timeout_is_refused() {
        let config = ServeConfig {
            header_read_timeout_seconds: 20,
            idle_timeout_seconds: 10,
            ..ServeConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert!(
            error.contains("--header-read-timeout-seconds (20)"),
            "{error}"
        );
        let equal = ServeConfig {
            header_read_timeout_seconds: 10,
            ..config
        };
        assert_eq!(equal.validate(), Ok(()));
    }

    #[test]
    fn non_loopback_needs_a_key_or_an_explicit_opt_out() {
        let open = ServeConfig {
            addr: "0.0.0.0:3000".parse().unwrap(),
            ..ServeConfig::default()
        };
        assert!(open
            .validate()
            .unwrap_err()
            .contains("--allow-unauthenticated"));
        let keyed = ServeConfig {
            api_key: Some("k".into()),
            ..open.clone()
        };
        assert_eq!(keyed.validate(), Ok(()));
        let opted_out = ServeConfig {
            allow_unauthenticated: true,
            ..open
        };
        assert_eq!(opted_out.validate(), Ok(()));
    }

    #[test]
    fn an_empty_key_is_refused_rather_than_matching_a_missing_header() {
        let config = ServeConfig {
            api_key: Some(" ".into()),
            ..ServeConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("empty"));
    }

    #[test]
    fn the_unauthenticated_opt_out_takes_the_usual_spellings_of_yes_and_no() {
        // A variable no other test reads.
        let parse = |value: &str| {
            std::env::set_var("SESSIOND_ALLOW_UNAUTHENTICATED", value);
            let cli = Cli::try_parse_from(["sessiond", "serve"]);
            std::env::remove_var("SESSIOND_ALLOW_UNAUTHENTICATED");
            cli.map(|cli| match cli.command {
                Command::Serve(config) => config.allow_unauthenticated,
                _ => unreachable!("serve parses as Serve"),
            })
        };
        for yes in ["1", "yes", "true", "on", "YES"] {
            assert_eq!(parse(yes).ok(), Some(true), "{yes}");
        }
        for no in ["0", "no", "false", "off"] {
            assert_eq!(parse(no).ok(), Some(false), "{no}");
        }
        assert!(parse("maybe").is_err());
    }

    #[test]
    fn addr_takes_an_ip_or_a_host_name_resolved_at_start() {
        assert_eq!(
            parse_addr("127.0.0.1:3000"),
            Ok("127.0.0.1:3000".parse().unwrap())
        );
        assert_eq!(parse_addr("[::1]:3000"), Ok("[::1]:3000".parse().unwrap()));
        let local = parse_addr("localhost:3000").expect("localhost resolves");
        assert!(local.ip().is_loopback() && local.port() == 3000, "{local}");
        let error = parse_addr("3000").unwrap_err();
        assert!(error.contains("127.0.0.1:3000"), "{error}");
    }

    #[test]
    fn cli_reads_flags() {
        let cli = Cli::parse_from([
            "sessiond",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--min-timeout-minutes",
            "0",
        ]);
        let Command::Serve(config) = cli.command else {
            panic!("serve parses as Serve")
        };
        assert_eq!(config.min_timeout_minutes, 0);
        assert_eq!(config.addr.port(), 0);
    }
}
