//! Virtual time.
//!
//! The proto layer never reads a clock. Callers pass the current time in as
//! an [`Instant`]: nanoseconds since an origin of the caller's choosing (the
//! runtime uses its monotonic clock; tests start at zero and advance by
//! hand). Deadlines come back out as `Instant`s.

use core::ops::{Add, AddAssign};
use core::time::Duration;

/// A point in time, in nanoseconds since an arbitrary origin fixed by the
/// caller. Only differences between instants from the same origin mean
/// anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);

    /// An instant `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Saturates at the end of representable time (about 584 years).
    fn add(self, rhs: Duration) -> Instant {
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(nanos))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_nanos(10);
        assert_eq!((t + Duration::from_nanos(5)).as_nanos(), 15);
        assert_eq!(
            t.saturating_duration_since(Instant::from_nanos(20)),
            Duration::ZERO
        );
        assert_eq!((t + Duration::MAX).as_nanos(), u64::MAX);
    }
}
