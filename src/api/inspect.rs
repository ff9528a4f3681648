//! GET /inspect: the inspector, a page that shows the sessions, their message trees and
//! their events live, for people debugging their agents.
//!
//! The page is a handful of hand-written files under `src/api/inspect/`, built into the
//! binary, so it needs nothing at run time but this server. It talks to the API from the
//! browser like any client; it is served without the API key (it asks for it instead) and
//! holds no data of its own, so serving it openly shows nobody anything.
//!
//! Its paths: `/inspect` and the page's own routes under it (`/inspect/sessions/{id}`,
//! `/inspect/agents/{id}`, `/inspect/users/{id}`) answer the page; `/inspect/assets/{name}`
//! its files; anything else under `/inspect` is the 404 envelope.

use warp::http::header::{self, HeaderValue};
use warp::http::{HeaderMap, StatusCode};
use warp::path::Tail;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::error::ApiError;

/// The page's path; every path of the inspector starts with it.
pub(super) const PATH: &str = "/inspect";

/// Whether `path` is one of the inspector's, which are served without the API key.
pub(super) fn is_inspector_path(path: &str) -> bool {
    path.strip_prefix(PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One file of the page.
struct Asset {
    /// Its name under `/inspect/assets/`.
    name: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes, built into the binary.
    body: &'static [u8],
}

/// Declares an asset from a file under `src/api/inspect/`.
macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("inspect/", $name)),
        }
    };
}

/// The page's scripts are ES modules, which browsers run only with a JavaScript type.
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// The page itself, answered for every route of the page.
const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

/// Every file the page loads.
const ASSETS: &[Asset] = &[
    asset!("app.js", JAVASCRIPT),
    asset!("api.js", JAVASCRIPT),
    asset!("dom.js", JAVASCRIPT),
    asset!("format.js", JAVASCRIPT),
    asset!("dialogs.js", JAVASCRIPT),
    asset!("events.js", JAVASCRIPT),
    asset!("list.js", JAVASCRIPT),
    asset!("session.js", JAVASCRIPT),
    asset!("tree.js", JAVASCRIPT),
    asset!("feed.js", JAVASCRIPT),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// The page may load only its own files and talk only to this server: no inline script or
/// style (so text that slips into the DOM as HTML still cannot run), no framing, no forms
/// posting elsewhere, no `<base>` to redirect relative URLs.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The inspector's routes.
pub(super) fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    inspect_get()
}

/// GET /inspect, GET /inspect/{page route}, GET /inspect/assets/{name}
fn inspect_get() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("inspect")
        .and(warp::path::tail())
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and_then(|tail: Tail, headers: HeaderMap| async move {
            serve_inspector(tail.as_str(), &headers).map_err(warp::reject::custom)
        })
}

/// The page for its own routes, a file for `assets/{name}`.
///
/// # Errors
/// 404 NOT_FOUND for any other path, and for an asset that does not exist.
fn serve_inspector(tail: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let segments: Vec<&str> = tail.split('/').collect();
    let asset = match segments.as_slice() {
        [""] => &INDEX,
        // The page's own routes: it reads the id from the address itself.
        ["sessions" | "agents" | "users", id] if !id.is_empty() => &INDEX,
        ["assets", name] => ASSETS
            .iter()
            .find(|asset| asset.name == *name)
            .ok_or_else(|| not_found(tail))?,
        _ => return Err(not_found(tail)),
    };
    Ok(respond_with(asset, headers))
}

/// 404 NOT_FOUND for `/inspect/{tail}`.
fn not_found(tail: &str) -> ApiError {
    let mut error = ApiError::route_not_found();
    error.details = format!("no inspector page or file at {PATH}/{tail}");
    error
}

/// The asset, or 304 when the browser's copy (`If-None-Match`) is current.
fn respond_with(asset: &Asset, headers: &HeaderMap) -> Response {
    let etag = etag(asset.body);
    let current = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
    let mut response = if current {
        let mut response = Response::new(Vec::new().into());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(asset.body.into());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        response
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    // The names carry no version, so a browser checks each time (a 304 when unchanged):
    // after an upgrade the page and its modules are never a mix of two versions.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A strong validator of `body`: FNV-1a of its bytes. The assets are fixed for the life of
/// the binary, so a content hash changes exactly when a file does.
fn etag(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::handle_rejection;

    async fn get(path: &str) -> warp::http::Response<bytes::Bytes> {
        warp::test::request()
            .path(path)
            .reply(&routes().recover(handle_rejection))
            .await
    }

    fn header<'a>(response: &'a warp::http::Response<bytes::Bytes>, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn the_page_answers_its_own_routes_with_a_strict_policy() {
        for path in [
            "/inspect",
            "/inspect/",
            "/inspect/sessions/0190c3cc-0d44-7b50-8888-8dd25736052a",
            "/inspect/agents/anything",
            "/inspect/users/anything",
        ] {
            let response = get(path).await;

            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(
                header(&response, "content-type"),
                "text/html; charset=utf-8"
            );
            assert_eq!(
                header(&response, "content-security-policy"),
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(header(&response, "x-content-type-options"), "nosniff");
            assert_eq!(header(&response, "cache-control"), "no-cache");
            assert!(String::from_utf8_lossy(response.body()).contains("/inspect/assets/app.js"));
        }
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_content_type() {
        for asset in ASSETS {
            let response = get(&format!("/inspect/assets/{}", asset.name)).await;

            assert_eq!(response.status(), 200, "{}", asset.name);
            assert_eq!(header(&response, "content-type"), asset.content_type);
            assert_eq!(header(&response, "x-content-type-options"), "nosniff");
            assert_eq!(response.body().as_ref(), asset.body);
        }
    }

    #[tokio::test]
    async fn a_current_copy_is_answered_with_304() {
        let first = get("/inspect/assets/app.js").await;
        let etag = header(&first, "etag").to_owned();

        let second = warp::test::request()
            .path("/inspect/assets/app.js")
            .header("if-none-match", format!("\"other\", {etag}"))
            .reply(&routes())
            .await;

        assert!(etag.starts_with('"') && etag.len() == 18, "{etag}");
        assert_eq!(second.status(), 304);
        assert!(second.body().is_empty());
        assert_eq!(header(&second, "etag"), etag);
    }

    #[tokio::test]
    async fn unknown_inspector_paths_answer_the_404_envelope() {
        for path in [
            "/inspect/assets/missing.js",
            "/inspect/assets/",
            "/inspect/assets/app.js/more",
            "/inspect/elsewhere",
            "/inspect/sessions/",
            "/inspect/sessions/a/b",
        ] {
            let response = get(path).await;

            assert_eq!(response.status(), 404, "{path}");
            let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
            assert_eq!(body["error"]["code"], "NOT_FOUND", "{path}");
        }
    }

    #[tokio::test]
    async fn other_methods_are_not_allowed() {
        let response = warp::test::request()
            .method("POST")
            .path("/inspect")
            .reply(&routes().recover(handle_rejection))
            .await;

        assert_eq!(response.status(), 405);
    }

    #[tokio::test]
    async fn with_a_key_the_page_is_open_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(dir.path(), &crate::store::StoreOptions::default()).unwrap();
        let config = crate::config::ServeConfig {
            api_key: Some("secret".into()),
            ..crate::config::ServeConfig::default()
        };
        let server = super::super::server_routes(&super::super::AppState::new(store, &config));
        let status = |path: &'static str| {
            let server = server.clone();
            async move {
                warp::test::request()
                    .path(path)
                    .reply(&server)
                    .await
                    .status()
            }
        };

        assert_eq!(status("/inspect").await, 200);
        assert_eq!(status("/inspect/sessions/x").await, 200);
        assert_eq!(status("/inspect/assets/app.js").await, 200);
        assert_eq!(status("/inspect/assets/missing.js").await, 404);
        // The exemption is by path: a path under /inspect reaches only the inspector.
        assert_eq!(status("/inspect/../api/messaging/sessions").await, 404);
        assert_eq!(status("/api/messaging/sessions").await, 401);
        assert_eq!(status("/inspector").await, 401);
    }

    #[tokio::test]
    async fn embedded_routes_claim_the_inspector_and_leave_the_rest_to_the_app() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(dir.path(), &crate::store::StoreOptions::default()).unwrap();
        let state = super::super::AppState::new(store, &crate::config::ServeConfig::default());
        let app = super::super::routes(&state)
            .or(warp::path("inspector").map(|| "the app's"))
            .boxed();

        let page = warp::test::request().path("/inspect").reply(&app).await;
        let theirs = warp::test::request().path("/inspector").reply(&app).await;

        assert_eq!(page.status(), 200);
        assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
        assert_eq!(theirs.body().as_ref(), b"the app's");
    }

    #[test]
    fn inspector_paths_are_the_page_and_what_lies_under_it() {
        assert!(is_inspector_path("/inspect"));
        assert!(is_inspector_path("/inspect/"));
        assert!(is_inspector_path("/inspect/assets/app.js"));
        assert!(!is_inspector_path("/inspector"));
        assert!(!is_inspector_path("/inspectx/assets/app.js"));
        assert!(!is_inspector_path("/api/messaging/inspect"));
    }
}
