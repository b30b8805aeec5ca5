//! Buffers handed to and received from the kernel.
//!
//! - [`IoBuf`]: what a send takes. The runtime holds the buffer until the
//!   kernel is done with it and then gives it back, so the same allocation is
//!   reused without copying.
//! - [`RecvBuf`]: a buffer the kernel filled from the core's provided buffer
//!   ring. It derefs to the received bytes and goes back to the ring when
//!   dropped. It can be sent as-is (echoing without a copy).

use std::ops::Deref;
use std::rc::Rc;

use crate::core::try_with_core;
use crate::driver::bufring::BufMem;

/// A buffer whose bytes the kernel may read after the value has been moved.
///
/// # Safety
///
/// `stable_ptr()` must point to `bytes_init()` initialised bytes that stay at
/// the same address, unmodified and valid, for as long as the value lives,
/// even when the value itself is moved (heap memory, or `'static` memory).
pub unsafe trait IoBuf: Unpin + 'static {
    /// Start of the bytes.
    fn stable_ptr(&self) -> *const u8;
    /// Number of initialised bytes to send.
    fn bytes_init(&self) -> usize;
}

// SAFETY: a Vec's contents live on the heap; moving the Vec moves only its
// (pointer, length, capacity) triple, and nothing can modify the contents
// while the runtime owns the Vec.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as for `Vec<u8>`: the slice lives on the heap.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: `'static` slices never move and are never freed.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

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
    /// Wraps buffer `bid`, holding `len` received bytes.
    pub(crate) fn new(ptr: *const u8, len: usize, bid: u16, mem: Rc<BufMem>) -> RecvBuf {
        RecvBuf { ptr, len, bid, mem }
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
        try_with_core(|core| {
            let mut bufs = core.bufs.borrow_mut();
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
    mem: Rc<crate::driver::sendpool::PoolMem>,
}

impl SendBuf {
    /// Takes a free buffer from the current core's pool, if there is one.
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread.
    pub fn try_acquire() -> Option<SendBuf> {
        crate::core::with_core(|core| {
            let mut pool = core.send_pool.borrow_mut();
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
            crate::core::with_core(|core| {
                let mut pool = core.send_pool.borrow_mut();
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

    /// Lends this buffer to other cores: the returned [`RemoteBuf`] is `Send`,
    /// reads the same bytes in place (no copy), can be sent on any core's
    /// socket, and goes back to this core's pool when dropped (through the
    /// mailboxes). Use it to pass an archived message built in a registered
    /// buffer to another core.
    ///
    /// # Panics
    ///
    /// Off the core whose pool the buffer came from.
    pub fn into_remote(self) -> RemoteBuf {
        let home = crate::core::with_core(|core| {
            assert!(
                Rc::ptr_eq(core.send_pool.borrow().mem(), &self.mem),
                "SendBuf::into_remote must be called on the buffer's own core"
            );
            core.mesh.me().clone()
        });
        let remote = RemoteBuf {
            ptr: self.ptr,
            len: self.len,
            id: self.id,
            home,
        };
        // The buffer now belongs to `remote`: skip the guard's return to the
        // pool, but release its reference to the memory (the core keeps the
        // memory alive while any buffer is lent, see `run_core`).
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped again, so the field is moved
        // out exactly once; the other fields are plain data.
        drop(unsafe { std::ptr::read(&me.mem) });
        remote
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
        try_with_core(|core| {
            let mut pool = core.send_pool.borrow_mut();
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

/// A send-pool buffer lent to another core (see [`SendBuf::into_remote`]).
///
/// Derefs to the bytes written into it, in place, on whatever thread holds it,
/// and can be sent on any core's socket. Dropping it returns the buffer to its
/// home core's pool: directly on that core, through the core mesh from
/// another core of the same runtime, or through the home core's control queue
/// from any other thread.
pub struct RemoteBuf {
    ptr: *const u8,
    len: usize,
    id: u16,
    home: std::sync::Arc<crate::mailbox::doorbell::Peer>,
}

// SAFETY: the bytes are only read, and the memory they live in stays
// allocated while the buffer is lent: the home core frees its pool memory at
// exit only if every buffer is back, and leaks it otherwise. Returning the id
// happens on the home core, through its queues.
unsafe impl Send for RemoteBuf {}

// SAFETY: shared references only read the lent bytes (`Deref`, `len`), which
// nobody writes while the buffer is lent; dropping (which returns the buffer)
// needs ownership. So one `RemoteBuf` may be read from many threads at once,
// e.g. a broadcast payload behind an `Arc`.
unsafe impl Sync for RemoteBuf {}

impl RemoteBuf {
    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Deref for RemoteBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` was written through the `SendBuf` before it
        // was lent and is not written again while lent; the memory outlives
        // every lent buffer (see the `Send` impl).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::fmt::Debug for RemoteBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBuf")
            .field("id", &self.id)
            .field("len", &self.len)
            .field("home_core", &self.home.index)
            .finish()
    }
}

// SAFETY: the bytes stay put and unmodified while the value lives (see the
// `Send` impl); moving the value does not move them.
unsafe impl IoBuf for RemoteBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

impl Drop for RemoteBuf {
    fn drop(&mut self) {
        let id = self.id;
        let give_back = move || {
            crate::core::try_with_core(|c| c.send_pool.borrow_mut().give_back(id));
        };
        let home = &self.home;
        let sent = try_with_core(|core| {
            if core.shared.exec_id == home.shared.exec_id {
                core.send_pool.borrow_mut().give_back(id);
                return true;
            }
            // Another core of the same runtime: the mesh ring to home.
            let same_runtime = core
                .mesh
                .peers
                .get(home.index)
                .is_some_and(|p| std::sync::Arc::ptr_eq(p, home));
            same_runtime && crate::mailbox::try_post(home.index, give_back).is_ok()
        })
        .unwrap_or(false);
        if !sent {
            // A full ring, another runtime or a plain thread: the home
            // core's control queue (a gone core simply never runs it).
            home.shared.run(Box::new(give_back));
        }
    }
}
