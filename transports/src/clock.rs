//! The session's clock: proto's virtual [`Instant`] read from the monotonic
//! clock, counted from a process-wide origin.

use std::sync::OnceLock;
use std::time::Duration;

use ringwire_proto::Instant;

fn origin() -> std::time::Instant {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(std::time::Instant::now)
}

/// Now, for the session.
pub(crate) fn now() -> Instant {
    let nanos = origin().elapsed().as_nanos();
    Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// How long from now until `at` (zero if passed).
pub(crate) fn until(at: Instant) -> Duration {
    at.saturating_duration_since(now())
}
