//! The background sweeper: removes sessions that expired more than the retention ago.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::{Clock, Timestamp};
use crate::error::Result;
use crate::store::Store;

/// Sessions looked at per batch; bounds how long one batch holds the store.
const BATCH: usize = 256;

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Sessions removed with their messages and index entries.
    pub removed_sessions: usize,
    /// Deletions left unfinished by a crash and completed by this sweep.
    pub resumed_purges: usize,
}

/// Removes every session whose `expiresAt` is at or before `now - retention`, in batches.
/// Work is found through the expiry index, so the cost follows the number of expired
/// sessions, not the size of the store. Blocking: call it off the async runtime.
///
/// # Errors
/// Storage failures; sessions removed before the failure stay removed.
pub fn sweep_once(store: &Store, now: Timestamp, retention: Duration) -> Result<SweepOutcome> {
    let mut outcome = SweepOutcome::default();
    for session_id in store.pending_purges()? {
        store.purge_messages(session_id)?;
        outcome.resumed_purges += 1;
    }
    let cutoff = now - retention;
    loop {
        let due = store.sessions_expired_by(cutoff, BATCH)?;
        let mut removed = 0;
        for &(_, session_id) in &due {
            // Re-checked inside the delete transaction, in case the entry moved meanwhile.
            if store
                .delete_session_if(session_id, |s| s.expires_at() <= cutoff)?
                .is_some()
            {
                removed += 1;
            }
        }
        outcome.removed_sessions += removed;
        // A full batch that removed nothing holds only stale entries: stop rather than spin.
        if due.len() < BATCH || removed == 0 {
            break;
        }
    }
    if outcome.removed_sessions > 0 || outcome.resumed_purges > 0 {
        store.flush()?;
        tracing::info!(
            removed_sessions = outcome.removed_sessions,
            resumed_purges = outcome.resumed_purges,
            "swept expired sessions"
        );
    }
    Ok(outcome)
}

/// Sweeps every `interval` until `shutdown` is cancelled. A failed sweep is logged and the
/// loop goes on.
pub async fn run_until_stopped(
    store: Store,
    clock: std::sync::Arc<dyn Clock>,
    interval: Duration,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let (store, now) = (store.clone(), clock.now());
        match tokio::task::spawn_blocking(move || sweep_once(&store, now, retention)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "sweep failed; retrying at the next tick"),
            Err(error) => tracing::error!(%error, "sweep task failed; retrying at the next tick"),
        }
    }
}
