//! `IORING_OP_MSG_RING` doorbells: a CQE posted straight into another core's
//! ring, carrying a waiter token.
//!
//! The SQE goes on this core's ring with `SKIP_SUCCESS`: a successful post
//! produces no CQE here, a failure (target CQ full, say) a CQE tagged with
//! the target core, which the loop answers by ringing that core's eventfd.
//! The target receives a CQE tagged `DOORBELL_IN | token` (see
//! [`tags`](crate::driver::tags)).

use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::{opcode, squeue, types};

use crate::driver::{tags, Driver};

/// Pushes a doorbell for waiter `token` into the ring whose descriptor is
/// `target` (core `target_core`).
///
/// # Safety
///
/// `target` must stay open until this core's ring has consumed the SQE:
/// the caller passes a descriptor that outlives every io_uring_enter of this
/// core (the runtime holds each core's duplicated ring descriptor until all
/// core threads have ended, and a core's loop consumes its whole submission
/// queue before it ends).
pub(crate) unsafe fn push_doorbell(
    driver: &mut Driver,
    target: BorrowedFd<'_>,
    token: u64,
    target_core: usize,
) {
    let entry = opcode::MsgRingData::new(
        types::Fd(target.as_raw_fd()),
        0,
        tags::doorbell_in(token),
        None,
    )
    .build()
    .flags(squeue::Flags::SKIP_SUCCESS)
    .user_data(tags::doorbell_out(target_core));
    // SAFETY: MSG_RING names no memory, only the target descriptor, which
    // the caller keeps open until the SQE is consumed (this function's
    // contract).
    unsafe { driver.push_raw(&entry) };
}
