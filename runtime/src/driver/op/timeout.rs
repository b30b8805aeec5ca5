//! `IORING_OP_TIMEOUT` with an absolute CLOCK_MONOTONIC deadline.

use io_uring::{opcode, squeue, types};

use super::Operation;
use crate::driver::lifecycle::Cqe;

/// A timer that completes at an absolute CLOCK_MONOTONIC time.
pub(crate) struct Timeout {
    /// Boxed: the SQE points at it, and the operation moves.
    ts: Box<types::Timespec>,
}

impl Timeout {
    /// Completes at `secs` + `nanos` on CLOCK_MONOTONIC.
    pub(crate) fn at(secs: u64, nanos: u32) -> Timeout {
        Timeout {
            ts: Box::new(types::Timespec::new().sec(secs).nsec(nanos)),
        }
    }
}

// SAFETY: the entry points only at the boxed timespec, a heap allocation
// owned by `self` that does not move with it and is never modified.
unsafe impl Operation for Timeout {
    type Output = ();

    fn entry(&mut self) -> squeue::Entry {
        opcode::Timeout::new(&*self.ts as *const types::Timespec)
            .flags(types::TimeoutFlags::ABS)
            .build()
    }

    /// `-ETIME` is the normal expiry; any other result (a cancellation,
    /// which needs the op to be dropped) also ends it.
    fn complete(self, _cqe: Cqe) {}
}
