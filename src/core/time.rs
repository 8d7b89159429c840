//! Injected time for the pure core: wall-clock milliseconds since the Unix epoch.
//!
//! The core never reads a clock. Drivers pass `Millis` into every call, which is what makes the
//! lifecycle scenarios deterministic unit tests and lets tests compress hours into milliseconds.

use nostr::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in wall-clock time, in milliseconds since the Unix epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Millis(pub u64);

impl Millis {
    /// The Unix epoch.
    pub const ZERO: Millis = Millis(0);

    /// Builds a time from whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Millis(secs.saturating_mul(1000))
    }

    /// Whole seconds, rounded down: the resolution of Nostr `created_at`.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// The Nostr timestamp for this instant (seconds, rounded down).
    pub fn to_timestamp(self) -> Timestamp {
        Timestamp::from_secs(self.as_secs())
    }

    /// The instant a Nostr timestamp names.
    pub fn from_timestamp(ts: Timestamp) -> Self {
        Millis::from_secs(ts.as_secs())
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Millis {
    type Output = Millis;
    fn add(self, rhs: Duration) -> Millis {
        Millis(self.0.saturating_add(duration_ms(rhs)))
    }
}

impl Sub<Duration> for Millis {
    type Output = Millis;
    fn sub(self, rhs: Duration) -> Millis {
        Millis(self.0.saturating_sub(duration_ms(rhs)))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trip_keeps_seconds() {
        let t = Millis(1_700_000_123_456);
        assert_eq!(t.to_timestamp().as_secs(), 1_700_000_123);
        assert_eq!(
            Millis::from_timestamp(t.to_timestamp()),
            Millis(1_700_000_123_000)
        );
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Millis(5) - Duration::from_secs(1), Millis::ZERO);
        assert_eq!(Millis(u64::MAX) + Duration::from_secs(1), Millis(u64::MAX));
        assert_eq!(Millis(10).since(Millis(20)), Duration::ZERO);
    }
}
