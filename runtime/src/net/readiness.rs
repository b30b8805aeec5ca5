//! Waiting on the ring for a descriptor to become readable.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::driver::op::poll_add::PollIn;
use crate::driver::op::Op;

/// Future returned by [`readable`].
#[must_use = "futures do nothing unless awaited"]
pub struct Readable {
    fd: Option<Rc<OwnedFd>>,
    op: Option<Op<PollIn>>,
    done: bool,
}

/// Completes when `fd` is readable: one single-shot `IORING_OP_POLL_ADD`
/// (`POLLIN`) on the current core's ring, so a core can sleep on a
/// descriptor that other code reads (an eventfd, a device's event channel)
/// together with everything else it waits for. Only readiness is reported;
/// nothing is read.
///
/// The operation holds `fd` until the kernel is done with it: a future
/// dropped early cancels the poll, and the descriptor stays open (and its
/// number unused by anything else) until the cancellation completes.
///
/// # Panics
///
/// When first polled off a ringwire core thread.
pub fn readable(fd: Rc<OwnedFd>) -> Readable {
    Readable {
        fd: Some(fd),
        op: None,
        done: false,
    }
}

impl Future for Readable {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(Ok(()));
        }
        if this.op.is_none() {
            if let Some(fd) = this.fd.take() {
                this.op = Some(Op::new(PollIn::new(fd)));
            }
        }
        let Some(op) = this.op.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match Pin::new(op).poll(cx) {
            Poll::Ready(res) => {
                this.op = None;
                this.done = true;
                Poll::Ready(res)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Placement, Runtime};
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::time::Duration;

    fn eventfd() -> OwnedFd {
        // SAFETY: plain syscall; checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: just created, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn signal(fd: &OwnedFd) {
        let one = 1u64;
        // SAFETY: 8 bytes from a live u64 to an eventfd.
        let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        assert_eq!(n, 8);
    }

    #[test]
    fn wakes_when_the_descriptor_becomes_readable() {
        let rt = Runtime::builder()
            .placement(Placement::Unpinned(1))
            .build()
            .unwrap();
        let fd = eventfd();
        let writer = fd.try_clone().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = rt.spawn_on(0, move || async move {
            let fd = Rc::new(fd);
            // A poll dropped before readiness leaves nothing behind.
            drop(crate::time::timeout(Duration::from_millis(1), readable(fd.clone())).await);
            tx.send(()).unwrap();
            readable(fd).await
        });
        rx.recv().unwrap();
        signal(&writer);
        let result = handle.join_timeout(Duration::from_secs(10));
        assert!(matches!(result, Some(Ok(Ok(())))), "{result:?}");
        rt.shutdown(Duration::from_secs(1));
    }
}
