//! Wall-clock instants as persisted integers, and the one place the clock is read.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// An instant as microseconds since the Unix epoch.
///
/// Finer than clients see it (milliseconds), so that instants within one millisecond keep
/// their order. Rules that clients must be able to observe, such as "a renewal moves
/// `expiresAt` later", compare whole milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch itself.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// Reads the system clock. A clock before 1970 reads as the epoch.
    pub fn now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX))
    }

    /// An instant `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Timestamp(micros)
    }

    /// An instant `millis` milliseconds after the epoch (saturating).
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis.saturating_mul(1_000))
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Whole milliseconds since the epoch (truncated), as clients see the instant.
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000
    }

    /// A new UUID v7 for something made at this instant. Ids follow the clock that made
    /// them (an injected one too), sort in the order this process made them (within a
    /// millisecond as well), and an instant read from a clock set before 1970 still makes an
    /// id.
    pub fn new_v7(self) -> uuid::Uuid {
        static CONTEXT: std::sync::Mutex<uuid::timestamp::context::ContextV7> =
            std::sync::Mutex::new(uuid::timestamp::context::ContextV7::new());
        // The context is a counter: whatever a panic left in it still counts.
        let context = CONTEXT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (seconds, micros) = (self.0 / 1_000_000, self.0 % 1_000_000);
        // Below 10^9 nanoseconds: the cast cannot truncate.
        let nanos = (micros * 1_000) as u32;
        uuid::Uuid::new_v7(uuid::Timestamp::from_unix(&*context, seconds, nanos))
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-21T10:00:00.000Z`.
    pub fn to_rfc3339(self) -> String {
        const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let nanos = i128::from(self.0) * 1_000;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|instant| instant.format(FORMAT).ok())
            // Only instants past the year 9999 fail, which no clock here produces.
            .unwrap_or_else(|| "9999-12-31T23:59:59.999Z".to_owned())
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        let micros = u64::try_from(rhs.as_micros()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(micros))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Duration) -> Timestamp {
        let micros = u64::try_from(rhs.as_micros()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_sub(micros))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Minutes as a `Duration`.
pub const fn minutes(n: u32) -> Duration {
    Duration::from_secs(n as u64 * 60)
}

/// Where handlers and the sweeper read the time, so tests can set it.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to: for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock(std::sync::atomic::AtomicU64::new(start.as_micros()))
    }

    /// Sets the reading.
    pub fn set(&self, now: Timestamp) {
        self.0
            .store(now.as_micros(), std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the reading forward.
    pub fn advance(&self, by: Duration) {
        self.set(self.now() + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Watches the wall clock against a monotonic one, so that destructive work (deleting
/// expired sessions) is not done on a wall clock that jumped: a clock set days ahead for a
/// moment would otherwise make every session expired, and delete them all.
///
/// The wall clock is trusted while `wall - monotonic` stays within [`ClockWatch::TOLERANCE`]
/// of its last trusted value (slow corrections, as NTP makes, are followed). After a jump,
/// it is trusted again once it comes back, or once the new offset has held for
/// [`ClockWatch::SETTLE`]: a clock that was wrong before and has been corrected.
#[derive(Clone, Copy, Debug)]
pub struct ClockWatch {
    /// The trusted `wall - monotonic`, in microseconds.
    offset: i128,
    /// An offset seen after a jump, and the monotonic time it was first seen.
    candidate: Option<(i128, Duration)>,
}

/// What [`ClockWatch::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockVerdict {
    /// The wall clock moved with the monotonic one.
    Steady,
    /// The wall clock moved this many microseconds (signed) away from the monotonic one.
    Jumped {
        /// Positive: the wall clock is ahead of where it should be.
        by_micros: i128,
    },
}

impl ClockWatch {
    /// The largest disagreement followed as a slow correction rather than a jump.
    pub const TOLERANCE: Duration = Duration::from_secs(60);
    /// How long a new offset must hold before it is trusted.
    pub const SETTLE: Duration = Duration::from_secs(10 * 60);

    /// Starts watching: the wall clock reads `wall` when the monotonic one reads `mono`.
    pub fn new(wall: Timestamp, mono: Duration) -> Self {
        ClockWatch {
            offset: offset(wall, mono),
            candidate: None,
        }
    }

    /// Whether the wall clock reading `wall` can be trusted at monotonic time `mono`.
    pub fn check(&mut self, wall: Timestamp, mono: Duration) -> ClockVerdict {
        let now = offset(wall, mono);
        let tolerance = i128::try_from(Self::TOLERANCE.as_micros()).unwrap_or(i128::MAX);
        let drift = now - self.offset;
        if drift.abs() <= tolerance {
            self.offset = now;
            self.candidate = None;
            return ClockVerdict::Steady;
        }
        match self.candidate {
            Some((candidate, since))
                if (now - candidate).abs() <= tolerance
                    && mono.saturating_sub(since) >= Self::SETTLE =>
            {
                self.offset = now;
                self.candidate = None;
                ClockVerdict::Steady
            }
            Some((candidate, _)) if (now - candidate).abs() <= tolerance => {
                ClockVerdict::Jumped { by_micros: drift }
            }
            _ => {
                self.candidate = Some((now, mono));
                ClockVerdict::Jumped { by_micros: drift }
            }
        }
    }
}

fn offset(wall: Timestamp, mono: Duration) -> i128 {
    i128::from(wall.as_micros()) - i128::try_from(mono.as_micros()).unwrap_or(i128::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_milliseconds() {
        assert_eq!(Timestamp::EPOCH.to_rfc3339(), "1970-01-01T00:00:00.000Z");
        // 2026-11-21T10:00:00.123Z
        let t = Timestamp::from_millis(1_795_255_200_123);
        assert_eq!(t.to_rfc3339(), "2026-11-21T10:00:00.123Z");
        // leap day
        let t = Timestamp::from_millis(951_782_400_000);
        assert_eq!(t.to_rfc3339(), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn sub_millisecond_parts_are_truncated_for_clients() {
        let t = Timestamp::from_micros(1_999);
        assert_eq!(t.as_millis(), 1);
        assert_eq!(t.to_rfc3339(), "1970-01-01T00:00:00.001Z");
    }

    #[test]
    fn v7_ids_follow_the_instant_and_sort_in_the_order_made() {
        let t = Timestamp::from_millis(1_795_255_200_123);
        let ids: Vec<uuid::Uuid> = (0..100).map(|_| t.new_v7()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
        let (seconds, nanos) = ids[0].get_timestamp().expect("a v7 id").to_unix();
        assert_eq!((seconds, nanos / 1_000_000), (1_795_255_200, 123));
        // A clock before 1970 reads as the epoch, and that still makes an id.
        assert_eq!(Timestamp::EPOCH.new_v7().get_version_num(), 7);
    }

    #[test]
    fn the_wall_clock_is_trusted_while_it_keeps_pace_within_the_tolerance() {
        let start = Timestamp::from_millis(1_795_255_200_000);
        let mut watch = ClockWatch::new(start, Duration::ZERO);
        let minute = Duration::from_secs(60);
        assert_eq!(watch.check(start + minute, minute), ClockVerdict::Steady);
        // A slow correction, exactly at the tolerance, is followed.
        let corrected = start + 2 * minute + ClockWatch::TOLERANCE;
        assert_eq!(watch.check(corrected, 2 * minute), ClockVerdict::Steady);
        // One microsecond past the tolerance (from the followed offset) is a jump.
        let jumped = corrected + minute + ClockWatch::TOLERANCE + Duration::from_micros(1);
        assert_eq!(
            watch.check(jumped, 3 * minute),
            ClockVerdict::Jumped {
                by_micros: 60_000_001
            }
        );
    }

    #[test]
    fn a_jump_is_distrusted_until_it_returns_or_holds_for_the_settle_time() {
        let start = Timestamp::from_millis(1_795_255_200_000);
        let two_days = Duration::from_secs(2 * 24 * 3600);
        let mut watch = ClockWatch::new(start, Duration::ZERO);
        let at = |mono: Duration| start + mono;
        // Two days ahead for a moment, then back.
        let t = Duration::from_secs(60);
        assert!(matches!(
            watch.check(at(t) + two_days, t),
            ClockVerdict::Jumped { .. }
        ));
        let t = Duration::from_secs(120);
        assert_eq!(watch.check(at(t), t), ClockVerdict::Steady);

        // Two days ahead and staying: distrusted until it has held for the settle time.
        let jump_at = Duration::from_secs(180);
        assert!(matches!(
            watch.check(at(jump_at) + two_days, jump_at),
            ClockVerdict::Jumped { .. }
        ));
        let almost = jump_at + ClockWatch::SETTLE - Duration::from_micros(1);
        assert!(matches!(
            watch.check(at(almost) + two_days, almost),
            ClockVerdict::Jumped { .. }
        ));
        let settled = jump_at + ClockWatch::SETTLE;
        assert_eq!(
            watch.check(at(settled) + two_days, settled),
            ClockVerdict::Steady
        );
        let later = settled + Duration::from_secs(60);
        assert_eq!(
            watch.check(at(later) + two_days, later),
            ClockVerdict::Steady
        );
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Timestamp::EPOCH - Duration::from_secs(1), Timestamp::EPOCH);
        assert_eq!(
            Timestamp::from_micros(u64::MAX) + Duration::from_secs(1),
            Timestamp::from_micros(u64::MAX)
        );
        assert_eq!(
            Timestamp::from_millis(5).saturating_since(Timestamp::from_millis(7)),
            Duration::ZERO
        );
    }
}
