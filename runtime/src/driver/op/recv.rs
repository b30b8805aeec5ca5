//! A plain `RECV` straight into caller memory, with `MSG_WAITALL`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, squeue, types};

use super::buf::IoBufMut;
use super::Operation;
use crate::driver::lifecycle::Cqe;
use crate::stats::{self, Stats};

/// Receives up to `len` bytes into `buf[start..start + len]`, waiting for
/// all of them (`MSG_WAITALL`; a signal or the end of the stream may still
/// cut it short).
pub(crate) struct Recv<B: IoBufMut> {
    buf: B,
    sock: Rc<OwnedFd>,
    start: usize,
    len: usize,
}

impl<B: IoBufMut> Recv<B> {
    /// A receive into `buf[start..start + len]`.
    ///
    /// # Panics
    ///
    /// When `start` is past the buffer's initialised bytes (the bytes in
    /// between would be exposed uninitialised) or `start + len` past its end.
    pub(crate) fn new(sock: Rc<OwnedFd>, buf: B, start: usize, len: usize) -> Self {
        assert!(
            start <= buf.bytes_init() && start.saturating_add(len) <= buf.bytes_total(),
            "receive range {start}..{} outside the buffer ({} initialised of {})",
            start.saturating_add(len),
            buf.bytes_init(),
            buf.bytes_total()
        );
        Recv {
            buf,
            sock,
            start,
            len,
        }
    }
}

// SAFETY: the entry points at `buf[start..start + len]`, inside the
// `bytes_total()` writable bytes that `IoBufMut` guarantees stay put, valid
// and untouched by anyone else while `self` owns `buf` (checked in `new`).
// The socket is kept open by `self`'s reference to it.
unsafe impl<B: IoBufMut> Operation for Recv<B> {
    type Output = (io::Result<usize>, B);

    fn entry(&mut self) -> squeue::Entry {
        // SAFETY: `start <= bytes_total()` (checked in `new`).
        let ptr = unsafe { self.buf.stable_mut_ptr().add(self.start) };
        let len = u32::try_from(self.len).unwrap_or(u32::MAX);
        opcode::Recv::new(types::Fd(self.sock.as_raw_fd()), ptr, len)
            .flags(libc::MSG_WAITALL)
            .build()
    }

    fn complete(mut self, cqe: Cqe) -> Self::Output {
        match cqe.io_result() {
            Ok(n) => {
                let n = n as usize;
                // SAFETY: bytes `..start` were initialised (`start <=
                // bytes_init()`, checked in `new`) and the kernel wrote
                // `start..start + n`, inside the buffer.
                unsafe { self.buf.set_init(self.start + n) };
                stats::with(|s| {
                    Stats::add(&s.bytes_received, n as u64);
                    Stats::add(&s.recv_direct_bytes, n as u64);
                });
                (Ok(n), self.buf)
            }
            Err(e) => (Err(e), self.buf),
        }
    }
}
