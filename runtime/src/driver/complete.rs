//! Completion: reaping the completion queue and dispatching each CQE to
//! what its `user_data` names (a slot's lifecycle, the wake read, a
//! doorbell).

use super::bufring::BufRing;
use super::lifecycle::{Cqe, Released};
use super::tags::Tag;
use super::{Context, Driver, Slot};
use crate::stats::{self, Stats};

impl Context {
    /// Moves completions out of the completion queue into their slots,
    /// waking the tasks that wait for them; doorbell CQEs are collected for
    /// the loop. Returns whether doorbells are waiting to be taken
    /// ([`Context::take_doorbells`]).
    pub(crate) fn dispatch(&self) -> bool {
        let mut bufs = self.bufs.borrow_mut();
        let mut driver = self.driver.borrow_mut();
        driver.dispatch(&mut bufs);
        !(driver.doorbells.is_empty() && driver.failed_doorbells.is_empty())
    }
}

impl Driver {
    fn dispatch(&mut self, bufs: &mut BufRing) {
        let mut completed = 0u64;
        // Take completions in batches so that the CQ borrow ends before slots
        // are touched.
        let mut batch: [(u64, Cqe); 64] = [(
            0,
            Cqe {
                result: 0,
                flags: 0,
            },
        ); 64];
        loop {
            let mut n = 0;
            {
                let mut cq = self.ring.completion();
                for cqe in &mut cq {
                    batch[n] = (
                        cqe.user_data(),
                        Cqe {
                            result: cqe.result(),
                            flags: cqe.flags(),
                        },
                    );
                    n += 1;
                    if n == batch.len() {
                        break;
                    }
                }
                cq.sync();
            }
            if n == 0 {
                break;
            }
            completed += n as u64;
            for &(ud, cqe) in &batch[..n] {
                match Tag::decode(ud) {
                    Tag::Ignore => {}
                    Tag::Wake => self.arm_wake(),
                    Tag::DoorbellIn(token) => self.doorbells.push(token),
                    Tag::DoorbellFailed(target) => {
                        // Only failures post a source CQE (SKIP_SUCCESS).
                        if cqe.result < 0 {
                            self.failed_doorbells.push(target);
                        }
                    }
                    Tag::Slot(key) => self.complete(key, cqe, bufs),
                }
            }
        }
        stats::with(|s| {
            if completed > 0 {
                Stats::add(&s.ops_completed, completed);
            }
            s.cqes_per_reap.record(completed);
        });
    }

    #[inline]
    fn complete(&mut self, key: usize, cqe: Cqe, bufs: &mut BufRing) {
        if cqe.buffer().is_some() {
            bufs.taken();
        }
        let act = match self.slots.get_mut(key) {
            Some(Slot::Single(op)) => op.complete(cqe),
            Some(Slot::Multi(m)) => m.life.complete(cqe),
            None => {
                // A completion for a freed slot (cannot happen while slots are
                // only freed on a final CQE, but a provided buffer or a
                // descriptor must never be lost if it did).
                let rel = Released::of(cqe, false);
                if let Some(bid) = rel.recycle {
                    bufs.recycle(bid);
                }
                return;
            }
        };
        self.apply(key, act, Some(bufs));
    }
}
