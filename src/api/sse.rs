//! Server-Sent Events as every stream writes them: the event streams and the reply streams of
//! `transport: "sse"`.

use std::time::Duration;

use futures_util::TryStream;
use warp::reply::Response;
use warp::Reply;

/// A comment line at least this often keeps idle streams (and proxies) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The response streaming `events`, with a keep-alive comment whenever it is idle.
pub(super) fn reply<S>(events: S) -> Response
where
    S: TryStream<Ok = warp::sse::Event> + Send + Sync + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    warp::sse::reply(warp::sse::keep_alive().interval(KEEP_ALIVE).stream(events)).into_response()
}

/// One Server-Sent Event, written `id: `, `event: `, `data: ` with a space after each colon,
/// as the SSE specification's examples do: hand-written readers test for `data: `. warp
/// writes `field:value`, and every SSE reader drops one space at the start of a value, so
/// the space goes into the value. `data` is one line of JSON.
pub(super) fn event(id: Option<u64>, name: &str, data: &str) -> warp::sse::Event {
    let event = warp::sse::Event::default()
        .event(format!(" {name}"))
        .data(format!(" {data}"));
    match id {
        Some(id) => event.id(format!(" {id}")),
        None => event,
    }
}
