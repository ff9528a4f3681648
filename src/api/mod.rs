//! The HTTP API: warp filters per route, thin handlers over the domain and the store.
//!
//! Handlers return `Result<Response, ApiError>`; only warp's own rejections (unknown route,
//! wrong method) and the API-key check travel as rejections, and all of them meet the one
//! `handle_rejection` at the top.

mod admin;
mod body;
mod error;
mod events;
mod feather;
mod fields;
mod health;
mod inspect;
mod messages;
mod metrics;
pub mod openapi;
mod query;
mod sessions;
mod sse;
#[cfg(test)]
mod test_values;
mod views;

use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::{Filter, Reply};

pub(crate) use error::{handle_rejection, ApiError};

use crate::domain::{Clock, Session, SessionError, TimeoutPolicy, Timestamp};
use crate::store::Store;

/// Everything a handler needs.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    /// The store.
    pub store: Store,
    /// Where handlers read the time.
    pub clock: Arc<dyn Clock>,
    /// Timeout defaults and bounds.
    pub policy: TimeoutPolicy,
    /// Largest accepted request body.
    pub max_body_bytes: u64,
    /// Required `X-API-Key`, if any.
    pub api_key: Option<Arc<str>>,
    /// When the server started (for `uptime`).
    pub started: Instant,
    /// How long a request waits for the agent's reply.
    pub reply_timeout: std::time::Duration,
    /// Cancelled at shutdown: ends event streams and answers held requests at once.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Browser origins allowed by CORS; empty: no CORS headers at all.
    pub cors_origins: Arc<[String]>,
    /// One permit per stream open (event streams, reply streams).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// One permit per request-body byte being read.
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// Most streams open at once (the permits of `streams`).
    pub max_streams: usize,
    /// The server's metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// One permit per export being sent (`GET /api/admin/export`).
    pub exports: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// A reservation of the in-flight body budget for the body `headers` announce (one of
    /// unknown length may be as long as the limit), to hold while it is read and parsed.
    ///
    /// # Errors
    /// 503 SERVER_BUSY when the budget is spent; the connection is closed after it, as the
    /// body is left unread.
    pub(crate) fn reserve_body(
        &self,
        headers: &warp::http::HeaderMap,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let size = body::declared_length(headers)
            .unwrap_or(self.max_body_bytes)
            .min(self.max_body_bytes);
        self.body_budget
            .clone()
            .try_acquire_many_owned(u32::try_from(size).unwrap_or(u32::MAX))
            .map_err(|_| ApiError::server_busy().closing())
    }

    /// A permit for one more stream, held for as long as the stream is open.
    ///
    /// # Errors
    /// 503 STREAMS_EXHAUSTED when --max-streams are open; the connection is closed after it.
    pub(crate) fn stream_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::streams_exhausted().closing())
    }
}

impl AppState {
    /// The state for a store and a configuration; the routes read the store's clock.
    pub fn new(store: Store, config: &crate::config::ServeConfig) -> Self {
        AppState {
            metrics: Arc::new(crate::metrics::Metrics::new(
                store.metrics(),
                store.engine(),
            )),
            max_streams: config.max_streams,
            clock: store.clock().clone(),
            store,
            policy: config.timeout_policy(),
            max_body_bytes: config.max_body_bytes,
            api_key: config.api_key.as_deref().map(Arc::from),
            started: Instant::now(),
            reply_timeout: config.reply_timeout(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            cors_origins: config.cors_origins.clone().into(),
            streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams)),
            body_budget: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(config.inflight_body_budget())
                    .unwrap_or(usize::MAX)
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            exports: Arc::new(tokio::sync::Semaphore::new(admin::MAX_EXPORTS)),
        }
    }
}

/// The one copy of the state every route shares. Behind an `Arc`: warp clones a filter's
/// closure for every request that reaches it, and a clone of the state itself costs a score
/// of reference counts and a lock (the cancellation token).
type SharedState = Arc<AppState>;

/// Hands the shared state to a handler.
fn with_state(
    state: &SharedState,
) -> impl Filter<Extract = (SharedState,), Error = std::convert::Infallible> + Clone {
    let state = state.clone();
    warp::any().map(move || state.clone())
}

/// `/api/messaging/sessions`, the prefix of most routes.
fn sessions_prefix() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::path("api")
        .and(warp::path("messaging"))
        .and(warp::path("sessions"))
}

/// `/api/messaging/sessions/{sessionId}` and what follows.
fn session_path() -> impl Filter<Extract = (String,), Error = warp::Rejection> + Clone {
    sessions_prefix().and(warp::path::param::<String>())
}

/// The session if it exists and has not expired, with the instant that was checked.
async fn load_active(state: &AppState, id: Uuid) -> Result<(Session, Timestamp), ApiError> {
    let now = state.clock.now();
    let session = state
        .store
        .session(id)
        .await?
        .ok_or(SessionError::NotFound(id))?;
    session.check_active(now)?;
    Ok((session, now))
}

/// The paths sessiond answers: a path ending in `/` claims everything under it, another
/// only itself (an embedding app may have admin routes of its own beside the export).
const OWN_PATHS: [&str; 5] = [
    "/api/messaging/",
    openapi::PATH,
    "/v1/ask-feather/",
    "/inspect/",
    crate::backup::EXPORT_PATH,
];

/// Passes the requests whose path belongs to sessiond and rejects the others as not found,
/// so that an app embedding the routes keeps its own.
fn own_paths() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::path::full()
        .and_then(|path: warp::path::FullPath| async move {
            let path = path.as_str();
            if OWN_PATHS.iter().any(|own| {
                path == own.trim_end_matches('/') || own.ends_with('/') && path.starts_with(own)
            }) {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
}

/// Every route, behind the API-key check, with every rejection rendered as the envelope.
/// Claims only sessiond's own paths (`/api/messaging/…`, `/api/openapi.json`,
/// `/v1/ask-feather/…`, `/api/admin/export`, the inspector's `/inspect/…`) and rejects the
/// others, so it can be mounted in another warp app before or after that app's routes.
pub(crate) fn routes(state: &AppState) -> BoxedFilter<(warp::reply::Response,)> {
    let shared = Arc::new(state.clone());
    // The claim comes first: CORS's own recover would answer every path.
    own_paths()
        .and(with_cors(state, guarded(state, api(&shared))))
        .boxed()
}

/// The routes of sessiond's own server: [`routes`], `/metrics`, and the envelope for every
/// other path (401 without the key, as the key is checked before routing; else 404 with a
/// hint).
pub(crate) fn server_routes(state: &AppState) -> BoxedFilter<(warp::reply::Response,)> {
    let shared = Arc::new(state.clone());
    let others = metrics::routes(&shared).or(unknown_path()).unify().boxed();
    routes(state)
        .or(with_cors(state, guarded(state, others)))
        .unify()
        .boxed()
}

/// The routes of the metrics listener (`--metrics-addr`): `/metrics` without the API key,
/// the envelope for every other path.
pub(crate) fn metrics_routes(state: &AppState) -> BoxedFilter<(warp::reply::Response,)> {
    let shared = Arc::new(state.clone());
    metrics::routes(&shared)
        .or(unknown_path())
        .unify()
        .recover(handle_rejection)
        .unify()
        .map(Reply::into_response)
        .boxed()
}

/// `/metrics` alone, for an app that embeds the routes.
pub(crate) fn metrics_route(state: &AppState) -> BoxedFilter<(warp::reply::Response,)> {
    metrics::routes(&Arc::new(state.clone())).boxed()
}

/// 404 with a hint, for a path no route claims.
fn unknown_path() -> BoxedFilter<(warp::reply::Response,)> {
    warp::path::full()
        .and_then(|path: warp::path::FullPath| async move {
            Err::<warp::reply::Response, _>(warp::reject::custom(ApiError::path_not_found(
                path.as_str(),
            )))
        })
        .boxed()
}

/// The routes themselves.
fn api(shared: &SharedState) -> BoxedFilter<(warp::reply::Response,)> {
    health::routes(shared)
        .or(sessions::routes(shared))
        .unify()
        .or(messages::routes(shared))
        .unify()
        .or(events::routes(shared))
        .unify()
        .or(feather::routes(shared))
        .unify()
        .or(openapi::routes())
        .unify()
        .or(inspect::routes())
        .unify()
        .or(admin::routes(shared))
        .unify()
        .boxed()
}

/// `routes` behind the API-key check, every rejection rendered as the envelope.
fn guarded(
    state: &AppState,
    routes: BoxedFilter<(warp::reply::Response,)>,
) -> BoxedFilter<(warp::reply::Response,)> {
    authorize(state.api_key.clone())
        .and(routes)
        .recover(handle_rejection)
        .unify()
        .map(Reply::into_response)
        .boxed()
}

/// CORS for the configured origins, if any: outside the envelope, so error responses carry
/// CORS headers too; the second recover renders CORS's own refusals (a preflight from
/// another origin).
fn with_cors(
    state: &AppState,
    app: BoxedFilter<(warp::reply::Response,)>,
) -> BoxedFilter<(warp::reply::Response,)> {
    if state.cors_origins.is_empty() {
        return app;
    }
    let cors = warp::cors()
        .allow_origins(state.cors_origins.iter().map(String::as_str))
        .allow_methods(["GET", "POST", "PATCH", "DELETE"])
        .allow_headers(["content-type", "x-api-key", "last-event-id"])
        .max_age(std::time::Duration::from_secs(600));
    app.with(cors)
        .map(Reply::into_response)
        .recover(handle_rejection)
        .unify()
        .boxed()
}

/// The route template a request path falls under (`/api/messaging/sessions/{sessionId}`),
/// for metrics and logs, which never carry a raw path (its ids would make a series each);
/// `/inspect` for every path of the inspector; `unmatched` for a path no route serves.
pub(crate) fn route_template(path: &str) -> &'static str {
    if inspect::is_inspector_path(path) {
        return inspect::PATH;
    }
    let fits = |template: &str| {
        let mut given = path.split('/');
        let mut literal = 0;
        for part in template.split('/') {
            match given.next() {
                Some(segment) if part == segment => literal += 1,
                Some(segment) if part.starts_with('{') && !segment.is_empty() => {}
                _ => return None,
            }
        }
        given.next().is_none().then_some(literal)
    };
    openapi::ROUTES
        .iter()
        .filter_map(|&(_, template)| fits(template).map(|literal| (literal, template)))
        // `/sessions/health` over `/sessions/{sessionId}`.
        .max_by_key(|&(literal, _)| literal)
        .map_or("unmatched", |(_, template)| template)
}

/// Rejects with 401 unless the request carries the key (health and the inspector's page,
/// which asks for the key itself, are always open). Runs before routing, so unknown routes
/// answer 401 too.
fn authorize(key: Option<Arc<str>>) -> BoxedFilter<()> {
    let Some(key) = key else {
        return warp::any().boxed();
    };
    warp::path::full()
        .and(warp::header::headers_cloned())
        .and_then(
            move |path: warp::path::FullPath, headers: warp::http::HeaderMap| {
                let key = key.clone();
                async move {
                    if path.as_str() == health::PATH || inspect::is_inspector_path(path.as_str()) {
                        return Ok(());
                    }
                    let given = headers
                        .get("x-api-key")
                        .map(|v| v.as_bytes())
                        .unwrap_or_default();
                    if constant_time_eq(given, key.as_bytes()) {
                        Ok(())
                    } else if body::declares_body(&headers) {
                        Err(warp::reject::custom(ApiError::unauthorized().closing()))
                    } else {
                        Err(warp::reject::custom(ApiError::unauthorized()))
                    }
                }
            },
        )
        .untuple_one()
        .boxed()
}

/// Compares without an early exit, so timing does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, &byte) in b.iter().enumerate() {
        diff |= byte ^ a.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_named_by_its_route_template_and_an_unknown_one_as_unmatched() {
        let id = Uuid::now_v7();
        for (path, template) in [
            (
                "/api/messaging/sessions".to_owned(),
                "/api/messaging/sessions",
            ),
            (
                "/api/messaging/sessions/health".to_owned(),
                "/api/messaging/sessions/health",
            ),
            (
                format!("/api/messaging/sessions/{id}"),
                "/api/messaging/sessions/{sessionId}",
            ),
            (
                format!("/api/messaging/sessions/{id}/messages/{id}/thread"),
                "/api/messaging/sessions/{sessionId}/messages/{messageId}/thread",
            ),
            ("/metrics".to_owned(), "/metrics"),
            ("/inspect/assets/app.js".to_owned(), "/inspect"),
            (format!("/inspect/sessions/{id}"), "/inspect"),
            ("/inspector".to_owned(), "unmatched"),
            ("/api/messaging/sessions//messages".to_owned(), "unmatched"),
            (format!("/api/messaging/sessions/{id}/x"), "unmatched"),
            ("/".to_owned(), "unmatched"),
            ("/etc/passwd".to_owned(), "unmatched"),
        ] {
            assert_eq!(route_template(&path), template, "{path}");
        }
    }

    #[tokio::test]
    async fn embedded_routes_claim_the_export_route_alone_not_the_paths_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(dir.path(), &crate::store::StoreOptions::default()).unwrap();
        let state = AppState::new(store, &crate::config::ServeConfig::default());
        let app = routes(&state)
            .or(warp::path!("api" / "admin" / String).map(|rest: String| rest))
            .boxed();

        let theirs = warp::test::request()
            .path("/api/admin/exports")
            .reply(&app)
            .await;
        let ours = warp::test::request()
            .method("POST")
            .path("/api/admin/export")
            .reply(&app)
            .await;

        assert_eq!(theirs.body().as_ref(), b"exports");
        assert_eq!(ours.status(), 405);
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret!", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"sec", b"secret"));
    }
}
