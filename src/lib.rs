//! sessiond keeps conversation sessions between users and AI agents: sessions with an
//! inactivity timeout, renewal on activity, a maximum duration and a warning window, each
//! holding an append-only tree of messages, in a durable store.
//!
//! # Layout
//! - [`config`]: the command-line flags and environment variables.
//! - [`domain`]: sessions, messages and the lifecycle rules, as pure functions of `now`.
//! - [`store`]: the sled store: typed trees, key layouts, the codec, the batching writer.
//! - [`api`]: the warp routes of the HTTP contract and its JSON error envelope.
//! - [`sweeper`]: the background task that removes expired sessions and old events.
//! - [`notifier`]: the background task that pushes `session.expiring`/`session.expired`.
//! - [`http`]: the connection loop: connection cap, header-read and idle timeouts, request
//!   ids, the access log.
//! - [`metrics`]: the Prometheus metrics a server serves at `/metrics`.
//! - [`app`]: [`app::Sessiond`] embedded in another program, or [`app::start`] as a server
//!   of its own; graceful shutdown.
//! - [`admin`]: the offline commands `check` and `stats`, and their progress bar.
//! - [`backup`]: `sessiond backup`, the client of a live server's export.
//! - [`transfer`]: `export` and `import`, a whole store as NDJSON.
//!
//! Data flows one way: `api -> domain + store`, `sweeper`/`notifier -> domain + store`,
//! `store -> domain`.
//!
//! # Embedding
//! Open sessiond inside your own tokio runtime with [`app::Sessiond`]: it owns the store
//! and the background tasks, hands you the routes to mount in your warp app and the events
//! in-process, and stops it all on `shutdown`. [`config::ServeConfig::default`] reads no
//! environment variable.
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> sessiond::Result<()> {
//! use futures_util::StreamExt;
//! use warp::Filter;
//!
//! let data = tempfile::tempdir()?;
//! let config = sessiond::config::ServeConfig {
//!     data_dir: data.path().to_path_buf(),
//!     ..Default::default()
//! };
//! let sessiond = sessiond::app::Sessiond::open(&config).await?;
//! // Its routes claim only their own paths, so the order of mounting does not matter.
//! let app = sessiond.routes().or(warp::path("version").map(|| "1.0"));
//! let health = warp::test::request().path("/api/messaging/sessions/health").reply(&app).await;
//! assert_eq!(health.status(), 200);
//! let version = warp::test::request().path("/version").reply(&app).await;
//! assert_eq!(version.body(), "1.0");
//!
//! // Every event of one agent's sessions, in-process.
//! let agent_id = uuid::Uuid::now_v7();
//! let mut events = sessiond.events(sessiond::domain::EventFilter::Agent(agent_id), None)
//!     .expect("None is always a place to start");
//! let created = warp::test::request()
//!     .method("POST")
//!     .path("/api/messaging/sessions")
//!     .json(&serde_json::json!({ "agentId": agent_id, "userId": uuid::Uuid::now_v7() }))
//!     .reply(&app)
//!     .await;
//! assert_eq!(created.status(), 201);
//! let event = events.next().await.expect("session.created");
//! assert_eq!(event.kind.name(), "session.created");
//!
//! // warp::serve(app).incoming(listener).graceful(signal).run().await;
//! // The routes and event streams hold the store: drop them before shutting down.
//! drop((app, events));
//! sessiond.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//! Or run the whole server, with its own listener:
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> sessiond::Result<()> {
//! let data = tempfile::tempdir()?;
//! let config = sessiond::config::ServeConfig {
//!     addr: "127.0.0.1:0".parse().expect("a valid address"),
//!     data_dir: data.path().to_path_buf(),
//!     ..Default::default()
//! };
//! let server = sessiond::app::start(config).await?;
//! println!("sessiond on http://{}", server.local_addr());
//! server.shutdown().await?;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod admin;
pub mod api;
pub mod app;
pub mod backup;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod metrics;
pub mod notifier;
pub mod store;
pub mod sweeper;
pub mod transfer;

pub use error::{Error, Result};
