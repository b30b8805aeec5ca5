//! Receiving on a stream socket with provided buffers: one multishot `RECV`
//! per socket (or one single-shot `RECV` per arrival, when the core is set up
//! that way), each completion naming a buffer of the core's buffer ring.
//!
//! When the ring runs dry the receive stops with `ENOBUFS`: the driver puts
//! the slot on its starved list and re-arms it once buffers are back; the
//! data waits in the socket meanwhile.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::task::Context;

use io_uring::{opcode, squeue, types};

use super::multishot::{Multi, MultishotOperation};
use crate::driver::bufring::{BufMem, BGID};
use crate::driver::lifecycle::Cqe;
use crate::stats::{self, Stats};

/// The receive operation: a socket and the receive mode.
pub(crate) struct RecvMulti {
    sock: Rc<OwnedFd>,
    multishot: bool,
}

// SAFETY: a buffer-select receive names no memory of ours: the kernel picks
// buffers from the registered buffer ring, which stays registered until the
// core has drained every operation. The socket is kept open by `self`'s
// reference to it while the entry may be (re-)submitted.
unsafe impl MultishotOperation for RecvMulti {
    const RETURNS_FD: bool = false;
    const TAKES_BUFFERS: bool = true;

    fn entry(&self) -> squeue::Entry {
        let fd = types::Fd(self.sock.as_raw_fd());
        if self.multishot {
            opcode::RecvMulti::new(fd, BGID).build()
        } else {
            opcode::Recv::new(fd, std::ptr::null_mut(), 0)
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        }
    }
}

/// Bytes the kernel put into a provided buffer.
pub(crate) struct Chunk {
    pub(crate) ptr: *const u8,
    pub(crate) len: usize,
    pub(crate) bid: u16,
    pub(crate) mem: Rc<BufMem>,
}

/// What a receive completion means for its owner.
pub(crate) enum RecvEvent {
    /// Bytes arrived (the owner recycles the buffer when done with it).
    Data(Chunk),
    /// The peer closed its side.
    Eof,
    /// The receive failed; the stream is over.
    Failed(io::Error),
}

/// The receive of one stream socket.
pub(crate) struct Receiver {
    multi: Multi<RecvMulti>,
}

impl Receiver {
    /// Starts receiving on `sock`.
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread.
    pub(crate) fn arm(sock: Rc<OwnedFd>) -> Receiver {
        let multishot = crate::driver::with(|cx| {
            cx.count_receiving(true);
            cx.io.recv_multishot
        });
        Receiver {
            multi: Multi::arm(RecvMulti { sock, multishot }),
        }
    }

    /// Keeps the task's waker for the next event, re-arming the receive if
    /// it ended by itself.
    pub(crate) fn wait(&mut self, cx: &mut Context<'_>) {
        self.multi.wait(cx);
    }

    /// The next event that already arrived.
    pub(crate) fn try_recv(&mut self) -> Option<RecvEvent> {
        let key = self.multi.key();
        crate::driver::with(|cx| {
            let cqe = cx.driver.borrow_mut().multi(key).take()?;
            Some(event(cqe, cx))
        })
    }

    /// Stops the receive (see [`Multi::pause`]).
    pub(crate) fn pause(&mut self) {
        self.multi.pause();
    }

    /// Whether a pause is complete.
    pub(crate) fn is_idle(&self) -> bool {
        self.multi.is_idle()
    }

    /// Waits for the next completion or the end of a pause.
    pub(crate) fn wait_paused(&mut self, cx: &mut Context<'_>) {
        self.multi.wait_paused(cx);
    }

    /// Ends a pause (the next poll re-arms).
    pub(crate) fn resume(&mut self) {
        self.multi.resume();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = crate::driver::try_with(|cx| cx.count_receiving(false));
        // `multi` drops next: queued buffers go back to the ring, and the
        // slot keeps the socket open until the final completion.
    }
}

/// Interprets a receive completion.
fn event(cqe: Cqe, cx: &crate::driver::Context) -> RecvEvent {
    if cqe.result > 0 {
        let Some(bid) = cqe.buffer() else {
            return RecvEvent::Failed(io::Error::other("receive completion without a buffer id"));
        };
        let len = cqe.result as usize;
        let (ptr, mem) = {
            let bufs = cx.bufs.borrow();
            (bufs.buf_ptr(bid).cast_const(), bufs.mem().clone())
        };
        stats::with(|s| Stats::add(&s.bytes_received, len as u64));
        return RecvEvent::Data(Chunk { ptr, len, bid, mem });
    }
    // End of stream or an error: a buffer it may carry goes back.
    if let Some(bid) = cqe.buffer() {
        cx.bufs.borrow_mut().recycle(bid);
    }
    if cqe.result == 0 {
        RecvEvent::Eof
    } else {
        RecvEvent::Failed(io::Error::from_raw_os_error(-cqe.result))
    }
}
