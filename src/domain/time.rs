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
