//! `IORING_OP_CONNECT`: connects a socket to an address.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use io_uring::{opcode, squeue, types};
use socket2::SockAddr;

use super::Operation;
use crate::driver::lifecycle::Cqe;

/// Connects `fd` to `addr`.
pub(crate) struct Connect {
    fd: OwnedFd,
    /// Boxed: the SQE points at it, and the operation moves.
    addr: Box<SockAddr>,
}

impl Connect {
    pub(crate) fn new(fd: OwnedFd, addr: SockAddr) -> Connect {
        Connect {
            fd,
            addr: Box::new(addr),
        }
    }
}

// SAFETY: the entry points at the boxed address (a heap allocation owned by
// `self`, never modified) and names the descriptor `self` owns, which stays
// open until `complete` hands it back or the driver drops `self` after the
// final completion.
unsafe impl Operation for Connect {
    /// The result, the socket and the address (for error messages).
    type Output = (io::Result<()>, OwnedFd, SockAddr);

    fn entry(&mut self) -> squeue::Entry {
        opcode::Connect::new(
            types::Fd(self.fd.as_raw_fd()),
            self.addr.as_ptr().cast(),
            self.addr.len(),
        )
        .build()
    }

    fn complete(self, cqe: Cqe) -> Self::Output {
        (cqe.io_result().map(drop), self.fd, *self.addr)
    }
}
