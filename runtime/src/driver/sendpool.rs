//! The per-core pool of registered (fixed) send buffers.
//!
//! `count` buffers of `size` bytes are carved from one page-aligned
//! allocation and registered with the ring (`IORING_REGISTER_BUFFERS`), one
//! registered buffer per pool buffer, so a [`crate::SendBuf`]'s id is its
//! `buf_index`. Registered buffers are pinned by the kernel and count against
//! the locked-memory limit (RLIMIT_MEMLOCK) unless the process has
//! CAP_IPC_LOCK. The pool never allocates after start-up: a buffer is taken
//! from the free list and returned to it when its `SendBuf` drops (after the
//! kernel is done with it, since the send op owns the `SendBuf`).

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::io;
use std::ptr::NonNull;
use std::rc::Rc;
use std::task::Waker;

use io_uring::IoUring;

use crate::error::StartError;

const PAGE: usize = 4096;

/// The pinned memory of a send pool, kept alive by every `SendBuf`.
pub(crate) struct PoolMem {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl PoolMem {
    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for PoolMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `SendPool::new` with this layout; the last
        // reference is gone, and the buffers are no longer registered with a
        // ring (a pool that is still registered, whose core did not drain its
        // operations, or that has buffers lent out leaks a reference
        // instead, see `Drop for SendPool`).
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Free list and registration of one core's send buffers.
pub(crate) struct SendPool {
    mem: Rc<PoolMem>,
    size: u32,
    count: u16,
    free: Vec<u16>,
    waiters: VecDeque<Waker>,
    /// The buffers are registered with a ring (which may outlive the core:
    /// other cores hold a duplicate of the ring's descriptor).
    registered: bool,
}

impl SendPool {
    /// Allocates and registers `count` buffers of `size` bytes (`count == 0`
    /// makes an empty pool and registers nothing).
    pub(crate) fn new(ring: &IoUring, count: u16, size: u32) -> Result<SendPool, StartError> {
        if count > 0 && size == 0 {
            return Err(StartError::ZeroBufferSize { what: "send" });
        }
        let bytes = usize::from(count.max(1)) * (size.max(1) as usize);
        let layout =
            Layout::from_size_align(bytes, PAGE).map_err(|_| StartError::BufferMemory {
                what: "send",
                bytes,
            })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout) }).ok_or(
            StartError::BufferMemory {
                what: "send",
                bytes,
            },
        )?;
        let mem = Rc::new(PoolMem { ptr, layout });
        let mut pool = SendPool {
            mem,
            size,
            count,
            free: (0..count).rev().collect(),
            waiters: VecDeque::new(),
            registered: false,
        };
        if count > 0 {
            let iovecs: Vec<libc::iovec> = (0..count)
                .map(|i| libc::iovec {
                    // SAFETY: `i < count`, inside the allocation.
                    iov_base: unsafe { pool.mem.base().add(usize::from(i) * size as usize) }.cast(),
                    iov_len: size as usize,
                })
                .collect();
            // SAFETY: every iovec covers memory owned by `mem`, which is freed
            // only once unregistered (see `Drop for SendPool`).
            unsafe { ring.submitter().register_buffers(&iovecs) }.map_err(|error| {
                StartError::RegisterSendBuffers {
                    count,
                    size,
                    memlock: crate::sys::memlock_limit(),
                    error,
                }
            })?;
            pool.registered = true;
        }
        Ok(pool)
    }

    /// Unregisters the buffers from `ring`, so that their memory may be
    /// freed. Call only once the kernel has finished every operation that
    /// names them.
    pub(crate) fn unregister(&mut self, ring: &IoUring) -> io::Result<()> {
        if self.registered {
            ring.submitter().unregister_buffers()?;
            self.registered = false;
        }
        Ok(())
    }

    /// Whether some buffers are out (taken, or lent to other cores).
    pub(crate) fn has_lent(&self) -> bool {
        self.free.len() < usize::from(self.count)
    }

    pub(crate) fn mem(&self) -> &Rc<PoolMem> {
        &self.mem
    }

    pub(crate) fn buf_size(&self) -> u32 {
        self.size
    }

    pub(crate) fn count(&self) -> u16 {
        self.count
    }

    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Takes a free buffer id.
    pub(crate) fn take(&mut self) -> Option<u16> {
        self.free.pop()
    }

    /// Start of buffer `id`.
    pub(crate) fn ptr(&self, id: u16) -> *mut u8 {
        assert!(id < self.count, "send buffer id {id} out of range");
        // SAFETY: `id < count`, inside the allocation of `count * size` bytes.
        unsafe { self.mem.base().add(usize::from(id) * self.size as usize) }
    }

    /// Returns buffer `id` and wakes the tasks waiting for a buffer (all of
    /// them: a woken waiter whose future was dropped must not swallow the
    /// wake-up; those that find the pool empty again simply wait again).
    pub(crate) fn give_back(&mut self, id: u16) {
        debug_assert!(!self.free.contains(&id), "send buffer {id} returned twice");
        self.free.push(id);
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    /// Registers a task to wake when a buffer comes back.
    pub(crate) fn wait(&mut self, waker: &Waker) {
        let _ = crate::stats::try_with(|s| crate::stats::Stats::add(&s.send_pool_waits, 1));
        if !self.waiters.iter().any(|w| w.will_wake(waker)) {
            self.waiters.push_back(waker.clone());
        }
    }
}

impl Drop for SendPool {
    fn drop(&mut self) {
        // Still registered (the ring context may outlive this core), or
        // buffers lent to other cores that point into the memory without
        // owning it (`RemoteBuf`): leak the memory rather than free it.
        if self.registered || self.has_lent() {
            std::mem::forget(self.mem.clone());
        }
    }
}
