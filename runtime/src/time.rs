//! Timers on the ring: [`sleep`], [`sleep_until`], [`timeout`], [`interval`].
//!
//! Every timer is an `IORING_OP_TIMEOUT` with an absolute CLOCK_MONOTONIC
//! deadline, so a timer submitted late (at the end of the loop turn) does not
//! drift, and a parked core wakes exactly when its earliest timer is due.
//! Deadlines are expressed as [`Deadline`], a point on that clock.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::driver::op::timeout::Timeout as TimeoutOp;
use crate::driver::op::Op;

/// A point in time on CLOCK_MONOTONIC (the clock io_uring timeouts use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Duration);

impl Deadline {
    /// The current time.
    pub fn now() -> Deadline {
        let ts = crate::sys::monotonic_now();
        Deadline(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    /// `d` from now.
    pub fn after(d: Duration) -> Deadline {
        Deadline::now() + d
    }

    /// Time left until this deadline (zero if passed).
    pub fn remaining(&self) -> Duration {
        self.remaining_from(Deadline::now())
    }

    /// Time from `now` until this deadline (zero if passed).
    fn remaining_from(&self, now: Deadline) -> Duration {
        self.0.saturating_sub(now.0)
    }

    fn timer(&self) -> TimeoutOp {
        TimeoutOp::at(self.0.as_secs(), self.0.subsec_nanos())
    }
}

impl std::ops::Add<Duration> for Deadline {
    type Output = Deadline;
    fn add(self, d: Duration) -> Deadline {
        Deadline(self.0.saturating_add(d))
    }
}

/// Future returned by [`sleep`] and [`sleep_until`].
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    deadline: Deadline,
    op: Option<Op<TimeoutOp>>,
    done: bool,
}

/// Completes after `d`.
pub fn sleep(d: Duration) -> Sleep {
    sleep_until(Deadline::after(d))
}

/// Completes at `deadline`.
pub fn sleep_until(deadline: Deadline) -> Sleep {
    Sleep {
        deadline,
        op: None,
        done: false,
    }
}

impl Sleep {
    /// When this sleep ends.
    pub fn deadline(&self) -> Deadline {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(());
        }
        let deadline = this.deadline;
        let op = this.op.get_or_insert_with(|| Op::new(deadline.timer()));
        match Pin::new(op).poll(cx) {
            Poll::Ready(()) => {
                this.op = None;
                this.done = true;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Error of a [`timeout`] whose deadline passed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// Future returned by [`timeout`].
#[must_use = "futures do nothing unless awaited"]
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: Sleep,
}

/// Runs `future` for at most `d`; when time runs out first it is dropped and
/// [`Elapsed`] returned.
pub fn timeout<F: Future>(d: Duration, future: F) -> Timeout<F> {
    Timeout {
        future: Box::pin(future),
        sleep: sleep(d),
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A periodic timer; see [`interval`].
pub struct Interval {
    next: Deadline,
    period: Duration,
}

/// Ticks every `period`, the first tick immediately. Ticks missed because the
/// task was busy are skipped, not bunched up.
///
/// # Panics
///
/// When `period` is zero.
pub fn interval(period: Duration) -> Interval {
    assert!(!period.is_zero(), "interval period must be non-zero");
    Interval {
        next: Deadline::now(),
        period,
    }
}

impl Interval {
    /// Waits for the next tick and returns its scheduled time.
    pub async fn tick(&mut self) -> Deadline {
        let due = self.next;
        if due > Deadline::now() {
            sleep_until(due).await;
        }
        let now = Deadline::now();
        self.next = due + self.period;
        if self.next <= now {
            // Fell behind by more than a period: restart the schedule from now.
            self.next = now + self.period;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_counts_down_to_zero_and_stays_there() {
        let start = Deadline(Duration::from_secs(100));
        let deadline = start + Duration::from_millis(1500);
        assert_eq!(deadline.remaining_from(start), Duration::from_millis(1500));
        assert_eq!(
            deadline.remaining_from(start + Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(deadline.remaining_from(deadline), Duration::ZERO);
        assert_eq!(
            deadline.remaining_from(deadline + Duration::from_secs(7)),
            Duration::ZERO
        );
        // Adding saturates instead of wrapping.
        assert_eq!(
            Deadline(Duration::MAX) + Duration::from_secs(1),
            Deadline(Duration::MAX)
        );
    }
}
