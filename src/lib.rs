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
//! - [`http`]: the connection loop: connection cap, header-read and idle timeouts.
//! - [`app`]: start-up and graceful shutdown.
//! - [`admin`]: the offline commands `check` and `stats`.
//!
//! Data flows one way: `api -> domain + store`, `sweeper`/`notifier -> domain + store`,
//! `store -> domain`.
//!
//! # Embedding
//! Start the whole server inside your own tokio runtime, and stop it:
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
//! Or mount the routes in your own warp app:
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> sessiond::Result<()> {
//! use std::sync::Arc;
//! use warp::Filter;
//!
//! let data = tempfile::tempdir()?;
//! let config = sessiond::config::ServeConfig { data_dir: data.path().to_path_buf(), ..Default::default() };
//! let store = sessiond::store::Store::open(data.path(), &Default::default())?;
//! let state = sessiond::api::AppState::new(store, &config, Arc::new(sessiond::domain::SystemClock));
//! let app = warp::path("version").map(|| "1.0").or(sessiond::api::routes(&state));
//!
//! let health = warp::test::request().path("/api/messaging/sessions/health").reply(&app).await;
//! assert_eq!(health.status(), 200);
//! // warp::serve(app).incoming(listener).run().await;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod admin;
pub mod api;
pub mod app;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod notifier;
pub mod store;
pub mod sweeper;

pub use error::{Error, Result};
