//! The accepting socket machinery shared by TCP and Unix listeners.
//!
//! One multishot `ACCEPT` per listener: every connection the kernel accepts
//! arrives as a completion carrying the new descriptor, queued in the
//! listener's slot until [`Listener::accept`] takes it. When the core shuts
//! down, `accept` returns `None` and the multishot is cancelled; descriptors
//! that arrive after that are closed by the driver.

use std::future::poll_fn;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::Poll;

use io_uring::{opcode, types};

use crate::core::with_core;
use crate::driver::{Lifecycle, Multi};
use crate::stats::Stats;

/// Accepted connections queued ahead of the owner before accepting pauses.
const ACCEPT_BACKLOG: usize = 256;

/// A listening socket registered with the current core's ring.
pub(crate) struct Listener {
    /// Shared with the accept slot when the listener is dropped, so the
    /// descriptor outlives any accept SQE that names it.
    fd: Rc<OwnedFd>,
    key: Option<usize>,
    _not_send: PhantomData<*const ()>,
}

impl Listener {
    pub(crate) fn new(fd: OwnedFd) -> Listener {
        Listener {
            fd: Rc::new(fd),
            key: None,
            _not_send: PhantomData,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Waits for the next connection; `None` once the core shuts down.
    pub(crate) async fn accept(&mut self) -> Option<io::Result<OwnedFd>> {
        poll_fn(|cx| {
            with_core(|core| {
                if core.is_shutting_down() {
                    return Poll::Ready(None);
                }
                let mut driver = core.driver.borrow_mut();
                let fd = self.fd.as_raw_fd();
                let key = *self.key.get_or_insert_with(|| {
                    let state = Lifecycle::Multi(Multi {
                        armed: true,
                        ..Multi::default()
                    });
                    // SAFETY: a multishot accept without an address buffer
                    // names no memory; the listener fd outlives the slot.
                    unsafe { driver.submit(state, true, || accept_entry(fd)) }
                });
                let Lifecycle::Multi(m) = &mut driver.slot_mut(key).state else {
                    return Poll::Ready(Some(Err(io::Error::other("listener slot lost"))));
                };
                // Pop past the completion of our own pause (see below).
                while m
                    .queue
                    .front()
                    .is_some_and(|c| c.result == -libc::ECANCELED)
                {
                    m.queue.pop_front();
                }
                if let Some(cqe) = m.queue.pop_front() {
                    // Bound the descriptors accepted ahead of the owner:
                    // pause the multishot until the backlog is taken (it is
                    // re-armed below once the queue is empty).
                    if m.armed && m.queue.len() >= ACCEPT_BACKLOG {
                        driver.cancel(key);
                    }
                    return Poll::Ready(Some(match cqe.io_result() {
                        Ok(newfd) => {
                            Stats::add(&core.stats.accepts, 1);
                            // SAFETY: the kernel just created this descriptor
                            // for us; nothing else owns it.
                            Ok(unsafe { OwnedFd::from_raw_fd(newfd as RawFd) })
                        }
                        Err(e) => Err(e),
                    }));
                }
                let rearm = !m.armed;
                if rearm {
                    m.armed = true;
                }
                m.waker = Some(cx.waker().clone());
                if rearm {
                    // SAFETY: as above.
                    unsafe { driver.resubmit(key, accept_entry(fd)) };
                }
                Poll::Pending
            })
        })
        .await
    }
}

fn accept_entry(fd: RawFd) -> io_uring::squeue::Entry {
    opcode::AcceptMulti::new(types::Fd(fd))
        .flags(libc::SOCK_CLOEXEC)
        .build()
}

impl Drop for Listener {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        crate::core::try_with_core(|core| {
            let mut driver = core.driver.borrow_mut();
            let (armed, queued) = match &mut driver.slot_mut(key).state {
                Lifecycle::Multi(m) => (m.armed, std::mem::take(&mut m.queue)),
                _ => (false, Default::default()),
            };
            for cqe in queued {
                if cqe.result >= 0 {
                    crate::sys::close(cqe.result);
                }
            }
            if armed {
                driver.slot_mut(key).state = Lifecycle::Ignored(Box::new(self.fd.clone()));
                driver.cancel(key);
            } else {
                driver.remove(key);
            }
        });
    }
}
