//! The read of a core's control eventfd: what wakes a parked core when
//! another thread posts work or wakes a task there.
//!
//! It is not an [`Operation`](super::Operation) future: the driver keeps one
//! such read armed at all times under the `WAKE` tag and re-arms it after
//! each completion.

use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

/// The 8-byte read of the control eventfd.
pub(crate) struct WakeRead {
    fd: RawFd,
    /// Target of the read. Leaked on purpose (8 bytes per core): the kernel
    /// may finish cancelling the read after the ring closes.
    buf: &'static mut u64,
}

impl WakeRead {
    /// A read of eventfd `fd`.
    ///
    /// # Safety
    ///
    /// `fd` must stay open for as long as the ring that submits this read
    /// may still consume its SQE (the core's shared state owns the eventfd
    /// and outlives the ring context).
    pub(crate) unsafe fn new(fd: RawFd) -> WakeRead {
        WakeRead {
            fd,
            buf: Box::leak(Box::new(0)),
        }
    }

    /// The SQE (without `user_data`). It names the leaked buffer, valid
    /// forever, and the eventfd, open as [`WakeRead::new`] requires.
    pub(crate) fn entry(&mut self) -> squeue::Entry {
        let buf: *mut u64 = &mut *self.buf;
        opcode::Read::new(types::Fd(self.fd), buf.cast(), 8).build()
    }
}
