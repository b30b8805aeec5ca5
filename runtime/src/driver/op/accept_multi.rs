//! Accepting on a listening socket: one multishot `ACCEPT` per listener,
//! every connection arriving as a completion that carries its descriptor.
//!
//! With [`ACCEPT_BACKLOG`] connections queued ahead of the owner, the
//! multishot is paused (cancelled) and re-armed once the owner has taken
//! them all. Descriptors nobody takes (the listener was dropped) are closed
//! by the driver.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll};

use io_uring::{opcode, squeue, types};

use super::multishot::{Multi, MultishotOperation};
use crate::stats::{self, Stats};

/// Accepted connections queued ahead of the owner before accepting pauses.
pub(crate) const ACCEPT_BACKLOG: usize = 256;

/// The accept operation: the listening socket.
pub(crate) struct AcceptMulti {
    sock: Rc<OwnedFd>,
}

// SAFETY: a multishot accept without an address buffer names no memory, only
// the listening socket, which `self` keeps open (it holds a reference) while
// the entry may be (re-)submitted and, once abandoned, until the final
// completion.
unsafe impl MultishotOperation for AcceptMulti {
    const RETURNS_FD: bool = true;

    fn entry(&self) -> squeue::Entry {
        opcode::AcceptMulti::new(types::Fd(self.sock.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
    }
}

/// The accepting side of one listener.
pub(crate) struct Acceptor {
    multi: Multi<AcceptMulti>,
}

impl Acceptor {
    /// Starts accepting on `sock`.
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread.
    pub(crate) fn arm(sock: Rc<OwnedFd>) -> Acceptor {
        Acceptor {
            multi: Multi::arm(AcceptMulti { sock }),
        }
    }

    /// The next accepted connection, or `Pending`.
    pub(crate) fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<OwnedFd>> {
        if let Some(cqe) = self.multi.try_next() {
            // Bound the descriptors accepted ahead of the owner: pause the
            // multishot until the backlog is taken.
            if self.multi.queued() >= ACCEPT_BACKLOG {
                self.multi.pause();
            }
            return Poll::Ready(match cqe.io_result() {
                Ok(fd) => {
                    stats::with(|s| Stats::add(&s.accepts, 1));
                    // SAFETY: the kernel just created this descriptor for
                    // this accept; nothing else owns it.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
                }
                Err(e) => Err(e),
            });
        }
        // Nothing queued: once a pause is complete, end it (the wait below
        // re-arms the accept).
        if self.multi.is_idle() {
            self.multi.resume();
        }
        self.multi.wait(cx);
        Poll::Pending
    }
}
