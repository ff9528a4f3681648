//! Pushes `session.expiring` and `session.expired` on the server's own clock, so they reach
//! the event streams even when no request touches the session.
//!
//! Writes record notices already due in their own transaction (a session created inside its
//! warning window, a PATCH that leaves it expired); this task handles deadlines that pass
//! later, found through the warning and expiry indexes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::domain::Timestamp;
use crate::error::Result;
use crate::store::{Store, BACKGROUND_WRITES};

/// How often due deadlines are looked for: the most a notice can be late.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How far back each look reaches past the previous one, to cover a deadline written by a
/// transaction that read the clock just before the previous look but committed after it.
const OVERLAP: Duration = Duration::from_secs(2);

/// Records every notice due for sessions whose warning or expiry deadline lies in
/// `[from, to]`. Returns how many sessions got a notice, once those are on disk.
///
/// # Errors
/// Storage failures.
pub async fn notify_due_once(store: &Store, from: Timestamp, to: Timestamp) -> Result<usize> {
    let due = store.sessions_with_deadlines_between(from, to).await?;
    // Concurrent, so that many notices share each write batch.
    let mut recorded = futures_util::stream::iter(due)
        .map(|session_id| store.record_due_notices(session_id))
        .buffer_unordered(BACKGROUND_WRITES);
    let mut noticed = 0;
    while let Some(outcome) = recorded.next().await {
        if outcome? {
            noticed += 1;
        }
    }
    Ok(noticed)
}

/// Looks for due deadlines every [`POLL_INTERVAL`] until `shutdown`, recording in
/// `progress` up to when it has looked (Unix milliseconds), for the notifier's lag. The
/// first look reaches back `catch_up`, for notices that fell due while the server was down.
/// Time is the store's clock.
pub async fn run_until_stopped(
    store: Store,
    catch_up: Duration,
    progress: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let clock = store.clock().clone();
    let mut looked_through = clock.now() - catch_up;
    // Lag counts from the start until the first look succeeds.
    progress.store(clock.now().as_millis(), Ordering::Relaxed);
    loop {
        let (from, to) = (looked_through - OVERLAP, clock.now());
        match notify_due_once(&store, from, to).await {
            Ok(_) => {
                looked_through = to;
                progress.store(to.as_millis(), Ordering::Relaxed);
            }
            Err(error) => tracing::error!(%error, "looking for due notices failed; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}
