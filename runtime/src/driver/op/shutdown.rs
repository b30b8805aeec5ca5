//! `IORING_OP_SHUTDOWN`: shuts down one or both directions of a socket.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, squeue, types};

use super::Operation;
use crate::driver::lifecycle::Cqe;

/// Shuts down `how` (`SHUT_RD`, `SHUT_WR`, `SHUT_RDWR`) of a socket.
pub(crate) struct Shutdown {
    sock: Rc<OwnedFd>,
    how: i32,
}

impl Shutdown {
    pub(crate) fn new(sock: Rc<OwnedFd>, how: std::net::Shutdown) -> Shutdown {
        let how = match how {
            std::net::Shutdown::Read => libc::SHUT_RD,
            std::net::Shutdown::Write => libc::SHUT_WR,
            std::net::Shutdown::Both => libc::SHUT_RDWR,
        };
        Shutdown { sock, how }
    }
}

// SAFETY: a shutdown names no memory, only the socket, which `self` keeps
// open (it holds a reference to it) until the operation is over, so the
// descriptor number cannot be closed and reused meanwhile.
unsafe impl Operation for Shutdown {
    type Output = io::Result<()>;

    fn entry(&mut self) -> squeue::Entry {
        opcode::Shutdown::new(types::Fd(self.sock.as_raw_fd()), self.how).build()
    }

    fn complete(self, cqe: Cqe) -> io::Result<()> {
        cqe.io_result().map(drop)
    }
}
