//! `IORING_OP_SENDMSG` with an owned iovec array: one gather send of many
//! buffers.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, squeue, types};

use super::buf::IoBuf;
use super::Operation;
use crate::driver::lifecycle::Cqe;
use crate::stats::{self, Stats};

/// Most iovecs in one `SENDMSG` (the kernel's `UIO_MAXIOV`).
pub(crate) const MAX_IOVECS: usize = 1024;

/// Sends the bytes of `bufs`, skipping the first `skip` bytes (already sent),
/// in one `SENDMSG` of at most [`MAX_IOVECS`] pieces.
pub(crate) struct SendMsg<B: IoBuf> {
    bufs: Vec<B>,
    sock: Rc<OwnedFd>,
    /// Boxed: the message header points at it, and the operation moves.
    /// Only held (owned), never read again.
    _iovecs: Box<[libc::iovec]>,
    /// Boxed: the SQE points at it.
    msg: Box<libc::msghdr>,
}

impl<B: IoBuf> SendMsg<B> {
    /// A gather send of `bufs` after the first `skip` bytes.
    pub(crate) fn new(sock: Rc<OwnedFd>, bufs: Vec<B>, skip: usize) -> Self {
        let mut skip = skip;
        let mut iovecs = Vec::with_capacity(bufs.len().min(MAX_IOVECS));
        for b in &bufs {
            let len = b.bytes_init();
            if skip >= len {
                skip -= len;
                continue;
            }
            if iovecs.len() == MAX_IOVECS {
                break;
            }
            iovecs.push(libc::iovec {
                // SAFETY: `skip < len`, so the pointer stays inside the
                // buffer's initialised bytes.
                iov_base: unsafe { b.stable_ptr().add(skip) } as *mut libc::c_void,
                iov_len: len - skip,
            });
            skip = 0;
        }
        let mut iovecs = iovecs.into_boxed_slice();
        // SAFETY: msghdr is plain data; all-zero is a valid (empty) header.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_iov = iovecs.as_mut_ptr();
        msg.msg_iovlen = iovecs.len();
        SendMsg {
            bufs,
            sock,
            _iovecs: iovecs,
            msg,
        }
    }
}

// SAFETY: the entry points at the boxed message header, which points at the
// boxed iovec array, whose entries point into the initialised bytes of the
// buffers in `bufs` (stable while `self` owns them, by `IoBuf`'s contract):
// all heap memory owned by `self`, not moved when `self` moves, and not
// modified while the operation runs. The socket is kept open by `self`'s
// reference to it.
unsafe impl<B: IoBuf> Operation for SendMsg<B> {
    type Output = (io::Result<usize>, Vec<B>);

    fn entry(&mut self) -> squeue::Entry {
        opcode::SendMsg::new(types::Fd(self.sock.as_raw_fd()), &*self.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
    }

    fn complete(self, cqe: Cqe) -> Self::Output {
        match cqe.io_result() {
            Ok(n) => {
                stats::with(|s| Stats::add(&s.bytes_sent, u64::from(n)));
                (Ok(n as usize), self.bufs)
            }
            Err(e) => (Err(e), self.bufs),
        }
    }
}
