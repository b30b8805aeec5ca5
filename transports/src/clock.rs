//! The session's clock: proto's virtual [`Instant`] read from the monotonic
//! clock (nanoseconds since boot).
//!
//! Read with `clock_gettime(CLOCK_MONOTONIC)` directly: a vDSO call with no
//! arithmetic beyond one multiply, where `std::time::Instant::elapsed` adds a
//! checked subtraction and a `Duration` round trip to every read. The engine
//! reads it once per frame received or sent.

use std::time::Duration;

use ringwire_proto::Instant;

/// Now, for the session.
#[inline]
pub(crate) fn now() -> Instant {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always
    // supported on Linux, so the call cannot fail (its result is still
    // checked below through the zeroed fallback).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return Instant::ZERO;
    }
    Instant::from_nanos((ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64)
}

/// How long from now until `at` (zero if passed).
pub(crate) fn until(at: Instant) -> Duration {
    at.saturating_duration_since(now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_forward_with_the_system_monotonic_clock() {
        let a = now();
        std::thread::sleep(Duration::from_millis(2));
        let b = now();
        assert!(b > a);
        assert!(b.saturating_duration_since(a) >= Duration::from_millis(2));
        assert_eq!(until(a), Duration::ZERO, "a passed instant is due now");
        assert!(until(b + Duration::from_secs(10)) > Duration::from_secs(9));
    }
}
