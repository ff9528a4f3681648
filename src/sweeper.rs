//! The background sweeper: removes sessions that expired more than the retention ago.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::{ClockVerdict, ClockWatch, Timestamp};
use crate::error::Result;
use crate::metrics::SweeperMetrics;
use crate::store::{Store, BACKGROUND_WRITES};

/// Sessions looked at per batch; bounds how long one batch holds the store.
const BATCH: usize = 256;

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Sessions removed with their messages and index entries.
    pub removed_sessions: usize,
    /// Messages removed with those sessions.
    pub removed_messages: u64,
    /// Deletions left unfinished by a crash and completed by this sweep.
    pub resumed_purges: usize,
}

/// Removes every session that expired more than `retention` before `now` (strictly), in batches.
/// Work is found through the expiry index, so the cost follows the number of expired
/// sessions, not the size of the store.
///
/// # Errors
/// Storage failures; sessions removed before the failure stay removed.
pub async fn sweep_once(
    store: &Store,
    now: Timestamp,
    retention: Duration,
) -> Result<SweepOutcome> {
    let mut outcome = SweepOutcome {
        resumed_purges: store.finish_deletions().await?,
        ..SweepOutcome::default()
    };
    // Expired "more than `retention` ago": expiresAt < now - retention.
    let cutoff = now - retention;
    let last_due = cutoff - Duration::from_micros(1);
    loop {
        let due = store.sessions_expired_by(last_due, BATCH).await?;
        // Re-checked inside the delete, in case the entry moved meanwhile.
        let ids: Vec<Uuid> = due.iter().map(|&(_, id)| id).collect();
        let mut deletes = futures_util::stream::iter(ids)
            .map(|session_id| store.delete_session_expired_before(session_id, cutoff))
            .buffer_unordered(BACKGROUND_WRITES);
        let mut removed = 0;
        while let Some(deleted) = deletes.next().await {
            if let Some(session) = deleted? {
                removed += 1;
                outcome.removed_messages += session.message_count;
            }
        }
        outcome.removed_sessions += removed;
        // A full batch that removed nothing holds only stale entries: stop rather than spin.
        if due.len() < BATCH || removed == 0 {
            break;
        }
    }
    if outcome.removed_sessions > 0 || outcome.resumed_purges > 0 {
        tracing::info!(
            removed_sessions = outcome.removed_sessions,
            removed_messages = outcome.removed_messages,
            resumed_purges = outcome.resumed_purges,
            "swept expired sessions"
        );
    }
    Ok(outcome)
}

/// Removes events older than `retention` (the newest event always stays).
///
/// # Errors
/// Storage failures.
pub async fn trim_events_once(store: &Store, now: Timestamp, retention: Duration) -> Result<usize> {
    let trimmed = store.trim_events(now - retention).await?;
    if trimmed > 0 {
        tracing::info!(trimmed_events = trimmed, "trimmed old events");
    }
    Ok(trimmed)
}

/// What the sweeper keeps and how often it runs.
#[derive(Clone, Copy, Debug)]
pub struct SweepSchedule {
    /// Time between sweeps.
    pub interval: Duration,
    /// How long expired sessions are kept.
    pub expired_retention: Duration,
    /// How long events are kept.
    pub event_retention: Duration,
}

/// Sweeps every `schedule.interval` until `shutdown` is cancelled, counting what it removes
/// and timing each sweep in `metrics`. A failed sweep is logged and the loop goes on. While
/// the wall clock disagrees with the monotonic clock (it jumped; see [`ClockWatch`])
/// nothing is deleted. Time is the store's clock.
pub async fn run_until_stopped(
    store: Store,
    schedule: SweepSchedule,
    metrics: SweeperMetrics,
    shutdown: CancellationToken,
) {
    let clock = store.clock().clone();
    let mut ticks = tokio::time::interval(schedule.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = tokio::time::Instant::now();
    let mut watch = ClockWatch::new(clock.now(), Duration::ZERO);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let now = clock.now();
        if let ClockVerdict::Jumped { by_micros } = watch.check(now, started.elapsed()) {
            tracing::warn!(
                jumped_seconds = by_micros / 1_000_000,
                "the wall clock moved against the monotonic clock; holding deletions until they agree again"
            );
            continue;
        }
        let timer = metrics.sweep_seconds.start_timer();
        match sweep_once(&store, now, schedule.expired_retention).await {
            Ok(outcome) => {
                metrics
                    .sessions_removed
                    .inc_by(outcome.removed_sessions as u64);
                metrics.messages_removed.inc_by(outcome.removed_messages);
            }
            Err(error) => tracing::error!(%error, "sweep failed; retrying at the next tick"),
        }
        timer.observe_duration();
        if let Err(error) = trim_events_once(&store, now, schedule.event_retention).await {
            tracing::error!(%error, "trimming events failed; retrying at the next tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventFilter, NewMessage, Session};
    use crate::store::test_support::{
        appended, clocked_store, session_at, stored_events, temp_store, text_message, T0,
    };

    const MINUTE: Duration = Duration::from_secs(60);

    fn session(timeout_minutes: u32, now: Timestamp) -> Session {
        session_at(now, timeout_minutes, 0)
    }

    fn message(content: &str) -> NewMessage {
        text_message(content, None)
    }

    #[tokio::test]
    async fn sweep_removes_only_sessions_expired_longer_than_the_retention() {
        let (store, _clock, _dir) = clocked_store(T0);
        let short = session(10, T0);
        let long = session(100, T0);
        store.create_session(short.clone()).await.unwrap();
        store.create_session(long.clone()).await.unwrap();
        appended(&store, short.id, message("hi")).await;
        let short_message = appended(&store, short.id, message("there")).await;
        // `short` expires at T0 + 10 min; with 60 min retention it goes at T0 + 70 min.
        let retention = 60 * MINUTE;

        // Exactly `retention` after expiry is not yet "more than" it.
        let exactly = sweep_once(&store, T0 + 70 * MINUTE, retention)
            .await
            .unwrap();
        assert_eq!(exactly.removed_sessions, 0);
        assert!(store.session(short.id).await.unwrap().is_some());

        let due = sweep_once(
            &store,
            T0 + 70 * MINUTE + Duration::from_micros(1),
            retention,
        )
        .await
        .unwrap();
        assert_eq!(due.removed_sessions, 1);
        assert!(store.session(short.id).await.unwrap().is_none());
        assert!(store
            .message(short.id, short_message.id)
            .await
            .unwrap()
            .is_none());
        assert!(store.session(long.id).await.unwrap().is_some());
        let counts = store.counts(T0 + 70 * MINUTE).await.unwrap();
        assert_eq!((counts.total, counts.active), (1, 1));
    }

    #[tokio::test]
    async fn sweep_works_through_more_than_one_batch() {
        let (store, _dir) = temp_store();
        for _ in 0..BATCH + 10 {
            store.create_session(session(5, T0)).await.unwrap();
        }
        let outcome = sweep_once(&store, T0 + 10 * MINUTE, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(outcome.removed_sessions, BATCH + 10);
        assert_eq!(store.counts(T0 + 10 * MINUTE).await.unwrap().total, 0);
    }

    /// The expiry index keeps whole seconds; a sweep still takes a session that expired a
    /// moment before the cutoff, inside the cutoff's own second, and leaves one expiring
    /// at the cutoff.
    #[tokio::test]
    async fn sweep_is_exact_inside_a_second() {
        let (store, _dir) = temp_store();
        let ms = Duration::from_millis(1);
        let early = session(5, T0 + 300 * ms);
        let at_cutoff = session(5, T0 + 800 * ms);
        for s in [&early, &at_cutoff] {
            store.create_session(s.clone()).await.unwrap();
        }
        let outcome = sweep_once(&store, at_cutoff.expires_at(), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(outcome.removed_sessions, 1);
        assert!(store.session(early.id).await.unwrap().is_none());
        assert!(store.session(at_cutoff.id).await.unwrap().is_some());
    }

    /// Whether `id` is still stored after the loop has had `patience` of real time to act:
    /// deletes run on the writer thread, which paused time does not wait for. The test's
    /// task keeps the runtime busy meanwhile, so paused time does not jump ahead either.
    async fn still_stored_after(store: &Store, id: Uuid, patience: Duration) -> bool {
        let deadline = std::time::Instant::now() + patience;
        while std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
            if store.session(id).await.unwrap().is_none() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// The sweeper loop on a 60 s interval with no retention, on the test's paused time.
    struct RunningLoop {
        task: tokio::task::JoinHandle<()>,
        shutdown: CancellationToken,
    }

    impl RunningLoop {
        fn start(store: &Store) -> Self {
            let shutdown = CancellationToken::new();
            let schedule = SweepSchedule {
                interval: MINUTE,
                expired_retention: Duration::ZERO,
                event_retention: Duration::from_secs(3600),
            };
            let task = tokio::spawn(run_until_stopped(
                store.clone(),
                schedule,
                SweeperMetrics::unregistered(),
                shutdown.clone(),
            ));
            RunningLoop { task, shutdown }
        }

        /// Stops the loop, waiting in real time: its last write may be on the writer thread.
        async fn stop(self) {
            self.shutdown.cancel();
            let deadline = std::time::Instant::now() + PATIENCE;
            while !self.task.is_finished() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the loop did not stop"
                );
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_millis(5));
            }
            self.task.await.unwrap();
        }
    }

    /// Long enough for anything the loop does at once to land; a sweep that lands later
    /// than this would have been too early to show.
    const MOMENT: Duration = Duration::from_millis(200);
    /// Long enough for a due sweep to land even on a slow disk.
    const PATIENCE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn the_loop_sweeps_on_its_interval_and_stops_when_told() {
        let (store, clock, _dir) = clocked_store(T0);
        // Expires 10 s after the loop starts; the wall clock keeps pace with the monotonic.
        let doomed = session(5, T0 - 5 * MINUTE + Duration::from_secs(10));
        store.create_session(doomed.clone()).await.unwrap();
        let sweeper = RunningLoop::start(&store);
        // The first sweep runs at once and finds nothing expired.
        assert!(still_stored_after(&store, doomed.id, MOMENT).await);

        // Expired now, but the next sweep is due only a whole interval after the first.
        clock.set(T0 + Duration::from_secs(59));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(
            still_stored_after(&store, doomed.id, MOMENT).await,
            "swept before the interval passed"
        );
        clock.set(T0 + MINUTE);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            !still_stored_after(&store, doomed.id, PATIENCE).await,
            "not swept once the interval passed"
        );

        sweeper.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_deletes_nothing_while_the_wall_clock_has_jumped() {
        let (store, clock, _dir) = clocked_store(T0);
        let doomed = session(5, T0);
        store.create_session(doomed.clone()).await.unwrap();
        let sweeper = RunningLoop::start(&store);
        assert!(still_stored_after(&store, doomed.id, MOMENT).await);

        // Two days ahead for a moment: the session looks long expired, and is kept.
        clock.set(T0 + MINUTE + Duration::from_secs(2 * 24 * 3600));
        tokio::time::advance(MINUTE).await;
        assert!(
            still_stored_after(&store, doomed.id, MOMENT).await,
            "deleted on a jumped clock"
        );

        // The clock is right again, and the session really expires: it goes.
        clock.set(T0 + 6 * MINUTE);
        tokio::time::advance(5 * MINUTE).await;
        assert!(
            !still_stored_after(&store, doomed.id, PATIENCE).await,
            "not swept once the clock agreed again"
        );
        sweeper.stop().await;
    }

    #[tokio::test]
    async fn trimming_keeps_only_the_newest_old_record_and_recent_events() {
        let (store, clock, _dir) = clocked_store(T0);
        let old = session(60, T0);
        store.create_session(old.clone()).await.unwrap();
        for i in 0..70 {
            appended(&store, old.id, message(&format!("m{i}"))).await;
        }
        clock.set(T0 + 120 * MINUTE);
        let recent = session(60, T0 + 120 * MINUTE);
        store.create_session(recent.clone()).await.unwrap();
        let replay = |filter| stored_events(&store, filter);
        let before = replay(EventFilter::Session(old.id)).await.len();

        // More than one write's worth of records (64) is old.
        let trimmed = trim_events_once(&store, T0 + 120 * MINUTE, 60 * MINUTE)
            .await
            .unwrap();
        assert_eq!(trimmed, before);
        assert!(replay(EventFilter::Session(old.id)).await.is_empty());
        let kept = replay(EventFilter::Session(recent.id)).await;
        assert_eq!(kept.len(), 1);
        assert!(store.check().unwrap().is_clean());
        // At its creation instant the message renews nothing: one new event, after the kept one.
        appended(&store, recent.id, message("after")).await;
        let events = replay(EventFilter::Session(recent.id)).await;
        assert_eq!(events.len(), 2);
        assert!(events[1].id > kept[0].id);
    }
}
