//! `IORING_OP_POLL_ADD` (single-shot): waits until a descriptor is readable.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, squeue, types};

use super::Operation;
use crate::driver::lifecycle::Cqe;

/// Waits for `POLLIN` on a descriptor (nothing is read).
pub(crate) struct PollIn {
    fd: Rc<OwnedFd>,
}

impl PollIn {
    pub(crate) fn new(fd: Rc<OwnedFd>) -> PollIn {
        PollIn { fd }
    }
}

// SAFETY: POLL_ADD names no memory, only the descriptor, which `self` keeps
// open (it holds a reference to it) until the operation is over, so the number
// cannot be closed and reused while the SQE names it.
unsafe impl Operation for PollIn {
    type Output = io::Result<()>;

    fn entry(&mut self) -> squeue::Entry {
        opcode::PollAdd::new(types::Fd(self.fd.as_raw_fd()), libc::POLLIN as u32).build()
    }

    fn complete(self, cqe: Cqe) -> io::Result<()> {
        cqe.io_result().map(drop)
    }
}
