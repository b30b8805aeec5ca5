//! Sends from an [`IoBuf`]: `SEND`, `WRITE_FIXED` (registered buffer) or
//! `SEND_ZC` (zero copy), chosen per core configuration.
//!
//! - `SEND_ZC` when the length is at least the core's zero-copy threshold.
//!   Its result CQE carries `F_MORE`; the operation completes only with the
//!   notification CQE, so the buffer never comes back while the kernel may
//!   still read it (see the lifecycle's `Notified` state).
//! - `WRITE_FIXED` for a registered send-pool buffer when the core sends
//!   through the registered path.
//! - `SEND` with `MSG_NOSIGNAL` otherwise.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, squeue, types};

use super::buf::IoBuf;
use super::Operation;
use crate::driver::lifecycle::Cqe;
use crate::stats::{self, Stats};

/// `IORING_SEND_ZC_REPORT_USAGE`: the notification says whether the kernel
/// copied after all.
const IORING_SEND_ZC_REPORT_USAGE: u16 = 1 << 3;

#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Fixed(u16),
    ZeroCopy(Option<u16>),
}

/// Sends bytes of `buf` from `offset` on a stream socket.
pub(crate) struct Send<B: IoBuf> {
    buf: B,
    sock: Rc<OwnedFd>,
    offset: usize,
    kind: Kind,
}

impl<B: IoBuf> Send<B> {
    /// A send of `buf[offset..]` on `sock`. `registered` is the index of the
    /// registered buffer holding those bytes, if any (a send-pool buffer).
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread.
    pub(crate) fn new(sock: Rc<OwnedFd>, buf: B, offset: usize, registered: Option<u16>) -> Self {
        let offset = offset.min(buf.bytes_init());
        let len = buf.bytes_init() - offset;
        let io = crate::driver::with(|cx| cx.io);
        let registered = registered.filter(|_| io.fixed_send);
        let kind = if io.zc_threshold.is_some_and(|t| len >= t) {
            Kind::ZeroCopy(registered)
        } else if let Some(index) = registered {
            Kind::Fixed(index)
        } else {
            Kind::Plain
        };
        match kind {
            Kind::ZeroCopy(fixed) => stats::with(|s| {
                Stats::add(&s.zc_sends, 1);
                Stats::add(&s.fixed_sends, u64::from(fixed.is_some()));
            }),
            Kind::Fixed(_) => stats::with(|s| Stats::add(&s.fixed_sends, 1)),
            Kind::Plain => {}
        }
        Send {
            buf,
            sock,
            offset,
            kind,
        }
    }
}

// SAFETY: the entry points at `buf[offset..bytes_init]` (`offset <=
// bytes_init` by construction), bytes that `IoBuf` guarantees stay put and
// unmodified while `self` owns `buf`, even when moved; for a registered
// buffer the kernel also checks that the range lies inside registered buffer
// `index` (EFAULT otherwise). The socket is kept open by `self`'s reference
// to it, so its number cannot be reused while the SQE names it.
unsafe impl<B: IoBuf> Operation for Send<B> {
    type Output = (io::Result<usize>, B);

    fn entry(&mut self) -> squeue::Entry {
        let len = u32::try_from(self.buf.bytes_init() - self.offset).unwrap_or(u32::MAX);
        // SAFETY: `offset <= bytes_init()`, so the pointer stays inside (or
        // one past the end of) the buffer's bytes.
        let ptr = unsafe { self.buf.stable_ptr().add(self.offset) };
        let fd = types::Fd(self.sock.as_raw_fd());
        match self.kind {
            Kind::ZeroCopy(fixed) => opcode::SendZc::new(fd, ptr, len)
                .buf_index(fixed)
                .flags(libc::MSG_NOSIGNAL)
                .zc_flags(IORING_SEND_ZC_REPORT_USAGE)
                .build(),
            // A write on a stream socket ignores the offset. It has no
            // MSG_NOSIGNAL: Rust programs ignore SIGPIPE from the start.
            Kind::Fixed(index) => opcode::WriteFixed::new(fd, ptr, len, index).build(),
            Kind::Plain => opcode::Send::new(fd, ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
        }
    }

    fn complete(self, cqe: Cqe) -> Self::Output {
        match cqe.io_result() {
            Ok(n) => {
                stats::with(|s| Stats::add(&s.bytes_sent, u64::from(n)));
                (Ok(n as usize), self.buf)
            }
            Err(e) => (Err(e), self.buf),
        }
    }
}
