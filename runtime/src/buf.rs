//! Buffers handed to and received from the kernel.
//!
//! - [`IoBuf`]: what a send takes. The runtime holds the buffer until the
//!   kernel is done with it and then gives it back, so the same allocation is
//!   reused without copying. [`IoBufMut`]: what a direct receive fills
//!   (`recv_exact_into`).
//! - [`RecvBuf`]: a buffer the kernel filled from the core's provided buffer
//!   ring. It derefs to the received bytes and goes back to the ring when
//!   dropped. It can be sent as-is (echoing without a copy).
//! - [`SendBuf`]: a registered buffer from the core's send pool, filled in
//!   place. Lent to other cores, it becomes a
//!   [`RemoteBuf`](crate::mailbox::RemoteBuf) (see [`SendBuf::into_remote`]).
//! - [`AlignedBuf`]: a zeroed heap buffer with a chosen alignment, to receive
//!   into when the bytes must be aligned (rkyv archives, O_DIRECT-style I/O).

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::rc::Rc;

use crate::driver::bufring::BufMem;
pub use crate::driver::op::buf::{IoBuf, IoBufMut};
use crate::driver::op::recv_multi::Chunk;
use crate::driver::sendpool::PoolMem;

// SAFETY: a `RecvBuf` points into its core's buffer memory, which it keeps
// alive through an `Rc`; the buffer id is not returned to the ring (so the
// kernel cannot refill it) until the `RecvBuf` is dropped.
unsafe impl IoBuf for RecvBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

/// The current core's receive buffers: how many the kernel can fill right
/// now, and how many the core has. A task that holds received buffers across
/// loop turns (to send a message from the buffers it arrived in) checks this
/// to let go before the ring runs dry, since held buffers are ones no
/// connection on the core can receive into.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn recv_buffer_supply() -> (usize, usize) {
    crate::driver::with(|cx| {
        let bufs = cx.bufs.borrow();
        (usize::from(bufs.available()), usize::from(bufs.count()))
    })
}

/// Received bytes, in place in the buffer the kernel filled.
///
/// Dropping it returns the buffer to the core's provided buffer ring. Hold
/// it only as long as needed: while it lives, the kernel has one buffer fewer
/// for receives on this core. Not `Send`: buffers belong to their core.
///
/// Every receive buffer starts at an offset within the buffer memory that is a
/// multiple of the configured buffer size, and the memory is page aligned, so
/// with the default size the bytes start 4096-byte aligned.
pub struct RecvBuf {
    ptr: *const u8,
    len: usize,
    bid: u16,
    mem: Rc<BufMem>,
}

impl RecvBuf {
    /// Takes ownership of a received chunk.
    pub(crate) fn from_chunk(chunk: Chunk) -> RecvBuf {
        RecvBuf {
            ptr: chunk.ptr,
            len: chunk.len,
            bid: chunk.bid,
            mem: chunk.mem,
        }
    }

    /// Number of received bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes were received (never true for a buffer handed out by
    /// a receive, which reports end of stream separately).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The received bytes, writable: to transform them in place (decrypt
    /// them, for instance) before handing them on.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr..ptr+len` lies inside the buffer memory kept alive by
        // `self.mem` (allocated writable; `ptr` comes from its `*mut` base),
        // and the kernel finished writing it before the completion that
        // produced this guard. The guard owns the buffer exclusively until it
        // drops: its id goes back to the ring (where the kernel could refill
        // it) only in `Drop`, no other guard points into it, and `&mut self`
        // makes this the only borrow of the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast_mut(), self.len) }
    }

    /// Keeps only the bytes in `range` (which must lie inside the buffer),
    /// e.g. to send part of what was received without copying.
    ///
    /// # Panics
    ///
    /// When the range is out of bounds.
    pub fn slice(&mut self, range: std::ops::Range<usize>) {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "RecvBuf::slice {range:?} out of bounds for {} bytes",
            self.len
        );
        // SAFETY: `range.start <= len`, so the pointer stays inside (or one
        // past the end of) the received bytes.
        self.ptr = unsafe { self.ptr.add(range.start) };
        self.len = range.end - range.start;
    }
}

impl Deref for RecvBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies inside the buffer memory kept alive by
        // `self.mem`; the kernel wrote these bytes before the completion that
        // produced this guard, and cannot write them again until the buffer id
        // is recycled in `Drop`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl AsRef<[u8]> for RecvBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBuf")
            .field("bid", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        let bid = self.bid;
        let mem = &self.mem;
        // Only the core that owns the ring may recycle into it; a guard that
        // outlived its core just releases its reference to the memory.
        crate::driver::try_with(|cx| {
            let mut bufs = cx.bufs.borrow_mut();
            if Rc::ptr_eq(bufs.mem(), mem) {
                bufs.recycle(bid);
            }
        });
    }
}

/// A registered (fixed) send buffer from the current core's send pool.
///
/// Fill it in place (serialize straight into [`spare_mut`](Self::spare_mut)
/// and [`advance`](Self::advance), or [`extend_from_slice`](Self::extend_from_slice)),
/// then hand it to a send, which uses the registered-buffer path
/// (`WRITE_FIXED`, or `SEND_ZC` with the buffer index) and gives it back when
/// the kernel is done. Dropping it returns it to the pool. Not `Send`.
///
/// Every pool buffer starts page aligned; the pool is sized by
/// [`crate::RuntimeBuilder::send_buffers`].
pub struct SendBuf {
    ptr: *mut u8,
    cap: usize,
    len: usize,
    id: u16,
    mem: Rc<PoolMem>,
}

/// A send-pool buffer's bytes, detached from its guard to be lent to other
/// cores (see [`SendBuf::lend`]).
pub(crate) struct Lent {
    pub(crate) ptr: *const u8,
    pub(crate) len: usize,
    pub(crate) id: u16,
}

impl SendBuf {
    /// Takes a free buffer from the current core's pool, if there is one.
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread.
    pub fn try_acquire() -> Option<SendBuf> {
        crate::driver::with(|cx| {
            let mut pool = cx.pool.borrow_mut();
            let id = pool.take()?;
            Some(SendBuf {
                ptr: pool.ptr(id),
                cap: pool.buf_size() as usize,
                len: 0,
                id,
                mem: pool.mem().clone(),
            })
        })
    }

    /// Takes a free buffer, waiting for one to come back if the pool is
    /// empty (back-pressure: the core sends more than the kernel takes).
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread, or when the pool has no buffers at all
    /// (`send_buffers(0)`), since waiting would then never end.
    pub async fn acquire() -> SendBuf {
        std::future::poll_fn(|cx| {
            if let Some(b) = SendBuf::try_acquire() {
                return std::task::Poll::Ready(b);
            }
            crate::driver::with(|d| {
                let mut pool = d.pool.borrow_mut();
                assert!(
                    pool.count() > 0,
                    "the send pool is disabled (send_buffers(0))"
                );
                pool.wait(cx.waker());
            });
            std::task::Poll::Pending
        })
        .await
    }

    /// Whether the current core's pool has a free buffer.
    pub(crate) fn available() -> bool {
        crate::driver::with(|cx| cx.pool.borrow().free_count() > 0)
    }

    /// Detaches the bytes from the guard, to lend them to other cores: the
    /// buffer stays taken (the pool gets its id back through
    /// [`give_back`]) and the pool memory stays allocated while any buffer
    /// is lent (the core leaks it at exit otherwise).
    ///
    /// # Panics
    ///
    /// Off the core whose pool the buffer came from.
    pub(crate) fn lend(self) -> Lent {
        crate::driver::with(|cx| {
            assert!(
                Rc::ptr_eq(cx.pool.borrow().mem(), &self.mem),
                "SendBuf::into_remote must be called on the buffer's own core"
            );
        });
        let lent = Lent {
            ptr: self.ptr,
            len: self.len,
            id: self.id,
        };
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped again, so the field is moved
        // out exactly once (and dropped, releasing this guard's reference to
        // the memory); the other fields are plain data.
        drop(unsafe { std::ptr::read(&me.mem) });
        lent
    }

    /// Index of this buffer among the ring's registered buffers.
    pub(crate) fn index(&self) -> u16 {
        self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total size of the buffer.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Room left.
    pub fn remaining(&self) -> usize {
        self.cap - self.len
    }

    /// The written bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is inside this buffer's slice of the pool
        // memory kept alive by `mem`, initialised (zeroed at start-up, then
        // written), and only this guard may touch it.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The unwritten rest of the buffer, to serialize into; follow with
    /// [`advance`](Self::advance).
    pub fn spare_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr+len..ptr+cap` is inside this buffer's slice of the
        // pool memory, initialised (zeroed at allocation), and exclusively
        // ours while this guard lives.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(self.len), self.cap - self.len) }
    }

    /// Marks `n` more bytes (written through [`spare_mut`](Self::spare_mut)) as data.
    ///
    /// # Panics
    ///
    /// When `n` exceeds [`remaining`](Self::remaining).
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.remaining(), "SendBuf::advance past capacity");
        self.len += n;
    }

    /// Appends `data`; returns `false` (writing nothing) if it does not fit.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> bool {
        if data.len() > self.remaining() {
            return false;
        }
        self.spare_mut()[..data.len()].copy_from_slice(data);
        self.len += data.len();
        true
    }

    /// Forgets the data (the buffer stays taken).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// Returns send-pool buffer `id` (lent earlier) to the current core's pool.
pub(crate) fn give_back(id: u16) {
    crate::driver::with(|cx| cx.pool.borrow_mut().give_back(id));
}

impl Deref for SendBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for SendBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBuf")
            .field("id", &self.id)
            .field("len", &self.len)
            .field("capacity", &self.cap)
            .finish()
    }
}

impl Drop for SendBuf {
    fn drop(&mut self) {
        let id = self.id;
        let mem = &self.mem;
        crate::driver::try_with(|cx| {
            let mut pool = cx.pool.borrow_mut();
            if Rc::ptr_eq(pool.mem(), mem) {
                pool.give_back(id);
            }
        });
    }
}

// SAFETY: the bytes live in pinned pool memory kept alive by `mem`; moving the
// guard does not move them, and nothing else writes them while it lives.
unsafe impl IoBuf for SendBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

/// A zero-initialised heap buffer whose start is aligned to a chosen power of
/// two (at least 16 bytes), e.g. to receive an rkyv archive straight into
/// memory it can be read from in place.
///
/// Its length is fixed at creation; every byte is initialised, so as an
/// [`IoBufMut`] all of it can be received into and as an [`IoBuf`] all of it
/// is sent.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    align: usize,
}

impl AlignedBuf {
    /// `len` zero bytes aligned to `align`.
    ///
    /// # Panics
    ///
    /// When `align` is not a power of two, is below 16, or the size
    /// overflows (`len` rounded up to `align` exceeds `isize::MAX`); aborts
    /// when the memory cannot be allocated, like `Vec`.
    pub fn new(len: usize, align: usize) -> AlignedBuf {
        assert!(
            align.is_power_of_two() && align >= 16,
            "AlignedBuf alignment must be a power of two of at least 16, got {align}"
        );
        if len == 0 {
            // A dangling but aligned pointer: nothing is read or written.
            // The address is `align`, a valid non-null address for zero bytes.
            let ptr =
                NonNull::new(std::ptr::without_provenance_mut(align)).expect("align is not zero");
            return AlignedBuf { ptr, len, align };
        }
        let layout = Layout::from_size_align(len, align).expect("AlignedBuf size overflows");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len, align }
    }

    /// The alignment of the start.
    pub fn align(&self) -> usize {
        self.align
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: allocated in `new` with exactly this size and alignment
        // (valid there, so valid here).
        unsafe {
            alloc::dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.len, self.align),
            )
        };
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed, then written)
        // bytes owned by `self` (or `len == 0` with an aligned non-null
        // pointer); the shared borrow of `self` keeps them from being
        // written meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `Deref`, with exclusive access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("align", &self.align)
            .finish()
    }
}

// SAFETY: `AlignedBuf` owns its heap allocation exclusively (like a
// `Box<[u8]>`); nothing about it is tied to a thread.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads (`Deref`), like `Box<[u8]>`.
unsafe impl Sync for AlignedBuf {}

// SAFETY: the bytes live in the heap allocation owned by `self`, which does
// not move when `self` moves, are all initialised, and are not modified
// while the runtime owns the value.
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

// SAFETY: the allocation of `len` bytes is owned exclusively by `self`,
// stays put when `self` moves and is initialised in full, so `set_init` has
// nothing to record.
unsafe impl IoBufMut for AlignedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.len
    }
    unsafe fn set_init(&mut self, _pos: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_zeroed_aligned_and_writable() {
        for align in [16, 64, 4096] {
            for len in [0, 1, 100, 8192] {
                let mut b = AlignedBuf::new(len, align);
                assert_eq!(b.len(), len);
                assert_eq!(b.as_ptr() as usize % align, 0);
                assert!(b.iter().all(|&x| x == 0));
                for (i, x) in b.iter_mut().enumerate() {
                    *x = i as u8;
                }
                assert!(b.iter().enumerate().all(|(i, &x)| x == i as u8));
                assert_eq!(IoBufMut::bytes_total(&b), len);
                assert_eq!(IoBuf::bytes_init(&b), len);
            }
        }
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn aligned_buf_refuses_small_alignments() {
        let _ = AlignedBuf::new(10, 8);
    }

    #[test]
    fn vec_set_init_only_grows() {
        let mut v: Vec<u8> = Vec::with_capacity(32);
        v.extend_from_slice(&[1, 2, 3]);
        let p = IoBufMut::stable_mut_ptr(&mut v);
        // SAFETY: writing inside the capacity of the vector we own.
        unsafe { p.add(3).write_bytes(9, 5) };
        // SAFETY: bytes 0..8 are now initialised.
        unsafe { IoBufMut::set_init(&mut v, 8) };
        assert_eq!(v, [1, 2, 3, 9, 9, 9, 9, 9]);
        // SAFETY: a smaller count is a no-op.
        unsafe { IoBufMut::set_init(&mut v, 2) };
        assert_eq!(v.len(), 8);
        assert_eq!(IoBufMut::bytes_total(&v), v.capacity());
    }
}
