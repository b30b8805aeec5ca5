//! Doorbells: how one core wakes another that may be parked.
//!
//! Two mechanisms, chosen per runtime ([`Doorbell`]):
//!
//! - `MsgRing`: the sending core pushes an `IORING_OP_MSG_RING` SQE on its own
//!   ring (submitted with the rest of its loop turn); the kernel posts a CQE
//!   straight into the target ring, whose `user_data` names the waiter. The
//!   SQE names the target ring through a duplicate of its descriptor that the
//!   target's [`Peer`] holds for the runtime's lifetime, so the number cannot
//!   be closed and reused while an SQE names it. The source CQE is skipped on
//!   success; a failure (target CQ full, say) comes back as a CQE that makes
//!   the sender fall back to the eventfd.
//! - `EventFd`: the sender raises the target's [`PendingFlag`] and writes the
//!   target core's eventfd (one syscall); the target takes the flag and wakes
//!   every task waiting on a mailbox, which re-check.
//!
//! A thread that is not a core of the target's runtime always uses the
//! eventfd, and so does every sender once the target core has stopped (a
//! MSG_RING into a ring whose core has exited would still succeed, posting a
//! completion nobody reads: the duplicate keeps the ring alive).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use crate::driver::op::msg_ring::push_doorbell;
use crate::loom::sync::atomic::{AtomicBool, Ordering};
use crate::remote::Shared;
use crate::stats::{self, Stats};

/// How a core wakes a parked peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doorbell {
    /// `IORING_OP_MSG_RING`: a CQE posted into the target's ring. Default
    /// (measured faster, see docs/BENCHMARKS.md).
    MsgRing,
    /// An eventfd write per wake-up.
    EventFd,
}

/// "Mailbox work may be waiting": raised by eventfd doorbells, taken by the
/// target core, which then has its channel receivers re-check their rings.
///
/// Raised after the message is published and before the eventfd write; taken
/// with a swap after the eventfd read completed, so a raise that races with
/// the take is either seen by it or left up for the next turn (its eventfd
/// write wakes the core again). Model-checked by loom with the channel's
/// waiter handshake (`mailbox::channel`).
pub(crate) struct PendingFlag(AtomicBool);

impl PendingFlag {
    pub(crate) fn new() -> PendingFlag {
        PendingFlag(AtomicBool::new(false))
    }

    /// Raises the flag (before signalling the eventfd).
    pub(crate) fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Takes the flag: whether it was raised since the last take.
    pub(crate) fn take(&self) -> bool {
        // A cheap load first: the flag is down on almost every loop turn.
        self.0.load(Ordering::Acquire) && self.0.swap(false, Ordering::AcqRel)
    }
}

/// What other cores need to ring a core's doorbell.
pub(crate) struct Peer {
    pub(crate) index: usize,
    /// Duplicate of the core's ring descriptor, set once its ring exists and
    /// kept for the runtime's lifetime: the target of MSG_RING doorbells.
    /// Declared before `shared`, so it closes first: the ring context ends
    /// before the eventfd its wake read names is closed.
    ring: OnceLock<OwnedFd>,
    pub(crate) shared: Arc<Shared>,
    /// Set by eventfd doorbells: mailbox waiters must re-check.
    pub(crate) pending: PendingFlag,
}

impl Peer {
    pub(crate) fn new(index: usize, shared: Arc<Shared>) -> Peer {
        Peer {
            index,
            ring: OnceLock::new(),
            shared,
            pending: PendingFlag::new(),
        }
    }

    /// Publishes the duplicate of the core's ring descriptor (once).
    pub(crate) fn set_ring(&self, dup: OwnedFd) {
        let _ = self.ring.set(dup);
    }

    /// Rings this core's doorbell for waiter `token` (0: the core's mesh).
    /// `msg_ring` says whether the calling core may use MSG_RING for it: a
    /// core of the same runtime set up for MSG_RING (see
    /// `Mesh::can_msg_ring`); otherwise, or when that does not work out, the
    /// eventfd rings.
    pub(crate) fn ring(&self, token: u64, msg_ring: bool) {
        if !(msg_ring && self.ring_msg(token)) {
            self.ring_eventfd();
        }
    }

    /// Tries the MSG_RING doorbell; `false` when it cannot be used now.
    fn ring_msg(&self, token: u64) -> bool {
        let Some(target) = self.ring.get() else {
            return false;
        };
        if self.shared.is_stopped() {
            return false;
        }
        let pushed = crate::driver::try_with(|cx| {
            let Ok(mut driver) = cx.driver.try_borrow_mut() else {
                return false;
            };
            // SAFETY: `target` is the duplicate held by this peer. The caller
            // is a core of the same runtime (`msg_ring`), and the runtime
            // keeps its peers (in every core's mesh and in the `Runtime`)
            // until every core thread, this one included, has ended; a core's
            // loop consumes its whole submission queue before it ends, so
            // the descriptor is open until the kernel has consumed this SQE.
            unsafe { push_doorbell(&mut driver, target.as_fd(), token, self.index) };
            true
        })
        .unwrap_or(false);
        if pushed {
            let _ = stats::try_with(|s| Stats::add(&s.doorbells_sent, 1));
        }
        pushed
    }

    /// Rings through the eventfd.
    pub(crate) fn ring_eventfd(&self) {
        self.pending.raise();
        self.shared.signal();
        let _ = stats::try_with(|s| Stats::add(&s.doorbells_sent, 1));
    }
}
