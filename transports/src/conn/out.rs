//! Outbound buffers and the per-connection send queue.
//!
//! Frames are encoded straight into the connection's current registered
//! send buffer ([`SendBuf`], from the core's pool). A frame larger than a
//! pool buffer gets a heap buffer of its own; a broadcast payload encoded
//! once is shared ([`SharedPayload`]) behind each connection's own header; a
//! bulk segment is the caller's memory, borrowed until sent ([`Segment`]).
//! The backend's flusher takes everything queued in one go and hands it to
//! the kernel (one submission) or to the peer core.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;

use ringwire_runtime::{IoBuf, RemoteBuf, SendBuf};
use rkyv::util::AlignedVec;

/// Zero bytes for frame padding (at most 15 are ever needed).
pub(crate) static ZEROS: [u8; 16] = [0; 16];

/// A heap buffer of whole frames, 16-byte aligned (so that an in-process
/// peer can read its archives in place).
pub(crate) struct HeapFrames(pub(crate) AlignedVec<16>);

// SAFETY: an `AlignedVec`'s bytes live in a heap allocation that does not
// move when the vector value moves, and nothing writes them while the send
// owns the value (it is only read through `stable_ptr`).
unsafe impl IoBuf for HeapFrames {
    fn stable_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.0.len()
    }
}

/// Memory shared by many connections (and cores): a lent pool buffer, or a
/// heap buffer for what is larger than a pool buffer.
#[derive(Clone)]
pub(crate) enum SharedBytes {
    Pool(Arc<RemoteBuf>),
    Heap(Arc<AlignedVec<16>>),
}

impl SharedBytes {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            SharedBytes::Pool(b) => b,
            SharedBytes::Heap(b) => b,
        }
    }
}

/// A payload (with its padding) encoded once and sent on many connections:
/// bytes `start..end` of a shared buffer.
#[derive(Clone)]
pub(crate) struct SharedPayload {
    pub(crate) buf: SharedBytes,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl SharedPayload {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf.bytes()[self.start..self.end]
    }
}

/// The caller's bulk segment, borrowed until sent: type-erased so segments of
/// any [`IoBuf`] type travel in one queue, and handed back whole afterwards.
pub(crate) struct Segment {
    pub(crate) ptr: *const u8,
    pub(crate) len: usize,
    /// The caller's buffer (`B: IoBuf`), owned until the send completes.
    pub(crate) owner: Box<dyn Any>,
    /// Where the buffer goes back once sent: the bulk send's slot and the
    /// segment's index.
    pub(crate) back: Option<(SegmentSlots, usize)>,
}

/// A bulk send's segments, each given back here (by index) once sent.
pub(crate) type SegmentSlots = std::rc::Rc<std::cell::RefCell<Vec<Option<Box<dyn Any>>>>>;

impl Segment {
    pub(crate) fn new<B: IoBuf>(buf: B) -> Segment {
        Segment {
            ptr: buf.stable_ptr(),
            len: buf.bytes_init(),
            owner: Box::new(buf),
            back: None,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` are the initialised bytes of the `IoBuf` in
        // `owner`, which the `IoBuf` contract keeps in place and unmodified
        // while the value lives, and `owner` lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Some((slot, index)) = self.back.take() {
            let owner = std::mem::replace(&mut self.owner, Box::new(()));
            if let Some(entry) = slot.borrow_mut().get_mut(index) {
                *entry = Some(owner);
            }
        }
    }
}

/// One piece of outbound data.
pub(crate) enum OutBuf {
    /// Whole frames in a registered pool buffer.
    Pool(SendBuf),
    /// Whole frames in a heap buffer (too large for a pool buffer, or the
    /// pool was empty).
    Heap(HeapFrames),
    /// A frame header written for a shared payload (32 bytes, kept in a small
    /// heap buffer).
    Header(HeapFrames),
    /// A payload shared with other connections.
    Shared(SharedPayload),
    /// A bulk segment's bytes, from the caller's memory.
    Segment(Segment),
    /// Frame padding.
    Pad(&'static [u8]),
}

impl OutBuf {
    pub(crate) fn len(&self) -> usize {
        match self {
            OutBuf::Pool(b) => b.len(),
            OutBuf::Heap(h) | OutBuf::Header(h) => h.0.len(),
            OutBuf::Shared(s) => s.end - s.start,
            OutBuf::Segment(s) => s.len,
            OutBuf::Pad(p) => p.len(),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            OutBuf::Pool(b) => b.as_slice(),
            OutBuf::Heap(h) | OutBuf::Header(h) => &h.0,
            OutBuf::Shared(s) => s.bytes(),
            OutBuf::Segment(s) => s.bytes(),
            OutBuf::Pad(p) => p,
        }
    }
}

// SAFETY: every variant's bytes stay at a fixed address and unmodified while
// the value lives: pool and heap buffers and lent buffers by their own
// `IoBuf` contracts (an `Arc` does not move its contents), segments by the
// caller's `IoBuf` (see `Segment::bytes`), padding is static.
unsafe impl IoBuf for OutBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.bytes().as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

/// A piece of outbound data with the highest sequence number of the data
/// frames it carries (0: control frames only, never resent).
pub(crate) struct Tagged {
    pub(crate) buf: OutBuf,
    pub(crate) last_seq: u64,
}

/// Frames queued on one connection, not yet handed to the flusher.
///
/// Control frames (hello, acks, heartbeats, close) collect in their own small
/// buffer and go out first in each flush; data frames collect in pool
/// buffers (and the special buffers of large, shared and bulk frames), each
/// tagged with the last sequence number it carries, so that a connection
/// that resumes after a cut can send its hello alone and then resend exactly
/// what the peer has not acknowledged.
#[derive(Default)]
pub(crate) struct OutQueue {
    /// Control frames for the next flush.
    pub(crate) control: AlignedVec<16>,
    /// The pool buffer being filled with data frames.
    pub(crate) cur: Option<SendBuf>,
    /// Last sequence number in `cur`.
    pub(crate) cur_last_seq: u64,
    /// Filled or special buffers, in order, before `cur`.
    pub(crate) ready: VecDeque<Tagged>,
    /// Messages in `ready` and `cur`.
    pub(crate) messages: usize,
    /// Bytes in `control`, `ready` and `cur`.
    pub(crate) bytes: usize,
    /// Messages and bytes handed to the flusher and not yet sent.
    pub(crate) in_flight_messages: usize,
    pub(crate) in_flight_bytes: usize,
    /// Data is held back (only control frames go out): a resumed
    /// connection's handshake is under way.
    pub(crate) hold_data: bool,
}

impl OutQueue {
    /// Whether anything waits for the flusher (that it may send now).
    pub(crate) fn is_empty(&self) -> bool {
        self.control.is_empty()
            && (self.hold_data
                || (self.ready.is_empty() && self.cur.as_ref().is_none_or(|b| b.is_empty())))
    }

    /// Closes the current pool buffer (it goes out before anything queued
    /// after this call).
    pub(crate) fn seal(&mut self) {
        if let Some(cur) = self.cur.take() {
            if cur.is_empty() {
                self.cur = Some(cur);
            } else {
                self.ready.push_back(Tagged {
                    buf: OutBuf::Pool(cur),
                    last_seq: std::mem::take(&mut self.cur_last_seq),
                });
            }
        }
    }

    /// Queues a special buffer carrying (part of) data frame `seq`.
    pub(crate) fn push(&mut self, buf: OutBuf, seq: u64) {
        self.seal();
        self.ready.push_back(Tagged { buf, last_seq: seq });
    }

    /// Takes everything that may go out now, in order (control frames first),
    /// for one flush.
    pub(crate) fn take(&mut self) -> Vec<Tagged> {
        let mut out = Vec::with_capacity(self.ready.len() + 2);
        if !self.control.is_empty() {
            let control = std::mem::take(&mut self.control);
            out.push(Tagged {
                buf: OutBuf::Heap(HeapFrames(control)),
                last_seq: 0,
            });
        }
        if !self.hold_data {
            self.seal();
            out.extend(self.ready.drain(..));
            self.in_flight_messages += self.messages;
            self.messages = 0;
        }
        let bytes: usize = out.iter().map(|t| t.buf.len()).sum();
        self.in_flight_bytes += bytes;
        self.bytes = self.bytes.saturating_sub(bytes);
        out
    }

    /// Like [`take`](Self::take), into the caller's vectors (kept from batch
    /// to batch, so that a flush allocates nothing): the buffers, and the
    /// last sequence number each carries.
    pub(crate) fn take_into(&mut self, bufs: &mut Vec<OutBuf>, seqs: &mut Vec<u64>) {
        let mut bytes = 0;
        if !self.control.is_empty() {
            let control = std::mem::take(&mut self.control);
            bytes += control.len();
            bufs.push(OutBuf::Heap(HeapFrames(control)));
            seqs.push(0);
        }
        if !self.hold_data {
            self.seal();
            for t in self.ready.drain(..) {
                bytes += t.buf.len();
                bufs.push(t.buf);
                seqs.push(t.last_seq);
            }
            self.in_flight_messages += self.messages;
            self.messages = 0;
        }
        self.in_flight_bytes += bytes;
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Whether data (not only control frames) would go out in the next
    /// flush.
    pub(crate) fn has_data(&self) -> bool {
        !self.hold_data
            && (!self.ready.is_empty() || self.cur.as_ref().is_some_and(|b| !b.is_empty()))
    }

    /// Messages and bytes queued or in flight (what back-pressure counts).
    pub(crate) fn load(&self) -> (usize, usize) {
        (
            self.messages + self.in_flight_messages,
            self.bytes + self.in_flight_bytes,
        )
    }

    /// Whether control frames wait to go out.
    pub(crate) fn has_control(&self) -> bool {
        !self.control.is_empty()
    }

    /// Drops the queued data, keeping the control frames (a failing
    /// connection's last words).
    pub(crate) fn clear_data(&mut self) {
        let control = std::mem::take(&mut self.control);
        self.clear();
        self.bytes = control.len();
        self.control = control;
    }

    /// Drops everything queued (the connection is gone).
    pub(crate) fn clear(&mut self) {
        self.control = AlignedVec::new();
        self.cur = None;
        self.ready.clear();
        self.messages = 0;
        self.bytes = 0;
    }
}
