//! The accepting socket machinery shared by TCP and Unix listeners.
//!
//! Accepting is the driver's multishot accept operation
//! ([`Acceptor`](crate::driver::op::accept_multi::Acceptor)): every connection
//! the kernel accepts arrives as a completion carrying the new descriptor,
//! queued until [`Listener::accept`] takes it. When the core shuts down,
//! `accept` returns `None`; the accept is cancelled when the listener is
//! dropped, and descriptors that arrive after that are closed by the driver.

use std::future::poll_fn;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::Poll;

use crate::driver::op::accept_multi::Acceptor;

/// A listening socket registered with the current core's ring.
pub(crate) struct Listener {
    /// Shared with the accept operation, which keeps the descriptor open
    /// until its final completion even after the listener is dropped.
    fd: Rc<OwnedFd>,
    accept: Option<Acceptor>,
    _not_send: PhantomData<*const ()>,
}

impl Listener {
    pub(crate) fn new(fd: OwnedFd) -> Listener {
        Listener {
            fd: Rc::new(fd),
            accept: None,
            _not_send: PhantomData,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Waits for the next connection; `None` once the core shuts down.
    pub(crate) async fn accept(&mut self) -> Option<io::Result<OwnedFd>> {
        poll_fn(|cx| {
            if crate::context::is_shutting_down() {
                return Poll::Ready(None);
            }
            let fd = &self.fd;
            let acceptor = self.accept.get_or_insert_with(|| Acceptor::arm(fd.clone()));
            acceptor.poll_accept(cx).map(Some)
        })
        .await
    }
}
