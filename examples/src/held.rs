//! Received bytes held in the buffers the kernel filled, and sent from there:
//! the zero-copy path of echo-node's `lenprefix` echo.
//!
//! A message that spans receive buffers is never reassembled. The buffers it
//! arrived in are held, in order, until the message is complete; then every
//! held byte up to the end of the last complete message leaves in one
//! vectored send (`SENDMSG`, one iovec per buffer), and a buffer goes back to
//! the kernel when the send that carried its last byte completes. A buffer
//! holding the end of one message and the start of the next is shared
//! between the send and the queue ([`Piece`] views over one `Rc`).

use std::collections::VecDeque;
use std::rc::Rc;

use ringwire::runtime::{IoBuf, RecvBuf};

/// A range of one received buffer, sendable as it is. Views of one buffer
/// share it; it goes back to the kernel when the last view is dropped.
pub struct Piece {
    buf: Rc<RecvBuf>,
    start: usize,
    end: usize,
}

impl Piece {
    /// Number of bytes in the view.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The bytes of the view.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

// SAFETY: the bytes live in the `RecvBuf`, which the `Rc` keeps alive (and
// with it the buffer memory, and the buffer id out of the kernel's ring, so
// the kernel cannot refill it) for as long as any view exists; moving a
// `Piece` moves only the `Rc` pointer, never the bytes. Nothing writes them
// while views exist: the only writable access to a `RecvBuf` is
// `as_mut_slice(&mut self)`, and this module never hands out the `Rc` (so no
// `&mut RecvBuf` can be made from it). `start <= end <= buf.len()` is kept
// by every constructor below.
unsafe impl IoBuf for Piece {
    fn stable_ptr(&self) -> *const u8 {
        self.buf[self.start..].as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.end - self.start
    }
}

/// Buffers of incomplete messages, oldest first.
#[derive(Default)]
pub struct Held {
    pieces: VecDeque<Piece>,
    bytes: usize,
}

impl Held {
    /// An empty queue.
    pub fn new() -> Held {
        Held::default()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Holds all of `buf` (no message ends inside it).
    pub fn hold(&mut self, buf: RecvBuf) {
        let end = buf.len();
        self.bytes += end;
        self.pieces.push_back(Piece {
            buf: Rc::new(buf),
            start: 0,
            end,
        });
    }

    /// A message ends at `end` inside `buf`: moves everything held, then
    /// `buf[..end]`, to `out` (in stream order), and holds `buf[end..]`.
    ///
    /// # Panics
    ///
    /// When `end` is beyond `buf`'s length.
    pub fn release_through(&mut self, buf: RecvBuf, end: usize, out: &mut Vec<Piece>) {
        let len = buf.len();
        assert!(end <= len, "message end {end} beyond a {len}-byte buffer");
        self.release_all(out);
        let buf = Rc::new(buf);
        if end < len {
            self.bytes += len - end;
            self.pieces.push_back(Piece {
                buf: Rc::clone(&buf),
                start: end,
                end: len,
            });
        }
        if end > 0 {
            out.push(Piece { buf, start: 0, end });
        }
    }

    /// Moves everything held to `out`, in stream order.
    pub fn release_all(&mut self, out: &mut Vec<Piece>) {
        out.extend(self.pieces.drain(..));
        self.bytes = 0;
    }
}
