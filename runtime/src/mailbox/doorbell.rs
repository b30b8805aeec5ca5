//! Doorbells: how one core wakes another that may be parked.
//!
//! Two mechanisms, chosen per runtime ([`Doorbell`]):
//!
//! - `MsgRing`: the sending core pushes an `IORING_OP_MSG_RING` SQE on its own
//!   ring (submitted with the rest of its loop turn); the kernel posts a CQE
//!   straight into the target ring, whose `user_data` names the waiter. The
//!   source CQE is skipped on success; a failure (target ring gone, CQ full)
//!   comes back as a CQE that makes the sender fall back to the eventfd.
//! - `EventFd`: the sender writes the target core's eventfd (one syscall) after
//!   flagging that mailbox work is pending; the target wakes every task
//!   waiting on a mailbox and re-checks.
//!
//! A thread that is not a ringwire core always uses the eventfd.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use io_uring::{opcode, squeue, types};

use crate::core::{try_with_core, Shared};
use crate::stats::Stats;

/// `user_data` bit of a doorbell CQE in the target ring; the low bits are the
/// waiter token (0: the core itself, for its inbound mesh rings).
pub(crate) const DOORBELL_TARGET_BIT: u64 = 1 << 62;
/// `user_data` bit of a doorbell's source CQE (only posted on failure); the
/// low bits are the target core index.
pub(crate) const DOORBELL_SOURCE_BIT: u64 = 1 << 61;
/// Mask of the low bits of doorbell `user_data`.
pub(crate) const DOORBELL_LOW_MASK: u64 = (1 << 40) - 1;

/// How a core wakes a parked peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doorbell {
    /// `IORING_OP_MSG_RING`: a CQE posted into the target's ring. Default
    /// (measured faster, see docs/BENCHMARKS.md).
    MsgRing,
    /// An eventfd write per wake-up.
    EventFd,
}

/// What other cores need to ring a core's doorbell.
pub(crate) struct Peer {
    pub(crate) index: usize,
    pub(crate) shared: Arc<Shared>,
    /// The core's ring fd, -1 while the ring does not exist.
    pub(crate) ring_fd: AtomicI32,
    /// Set by eventfd doorbells: mailbox waiters must re-check.
    pub(crate) mailbox_pending: AtomicBool,
}

impl Peer {
    pub(crate) fn new(index: usize, shared: Arc<Shared>) -> Peer {
        Peer {
            index,
            shared,
            ring_fd: AtomicI32::new(-1),
            mailbox_pending: AtomicBool::new(false),
        }
    }

    /// Rings this core's doorbell for waiter `token` (0: the core's mesh).
    pub(crate) fn ring(&self, token: u64) {
        let sent = try_with_core(|core| {
            if core.mesh.doorbell != Doorbell::MsgRing {
                return false;
            }
            let fd = self.ring_fd.load(Ordering::Acquire);
            if fd < 0 {
                return false;
            }
            let Ok(mut driver) = core.driver.try_borrow_mut() else {
                return false;
            };
            let entry =
                opcode::MsgRingData::new(types::Fd(fd), 0, DOORBELL_TARGET_BIT | token, None)
                    .build()
                    .flags(squeue::Flags::SKIP_SUCCESS)
                    .user_data(DOORBELL_SOURCE_BIT | self.index as u64);
            // SAFETY: MSG_RING names no memory, only the target ring's fd,
            // whose closing at worst fails the request (reported by a CQE).
            unsafe { driver.push_raw(&entry) };
            Stats::add(&core.stats.doorbells_sent, 1);
            true
        })
        .unwrap_or(false);
        if !sent {
            self.ring_eventfd();
        }
    }

    /// Rings through the eventfd.
    pub(crate) fn ring_eventfd(&self) {
        self.mailbox_pending.store(true, Ordering::Release);
        crate::sys::eventfd_signal(self.shared.eventfd.as_raw_fd());
        try_with_core(|core| Stats::add(&core.stats.doorbells_sent, 1));
    }
}
