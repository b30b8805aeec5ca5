//! A provided buffer ring (`IORING_REGISTER_PBUF_RING`) for multishot receives.
//!
//! The ring is a power-of-two array of `io_uring_buf` entries shared with the
//! kernel; user space appends free buffers at the tail, the kernel picks one
//! per receive completion and reports its id in the CQE flags. Buffers are
//! slices of one page-aligned allocation (`count * size` bytes), so every
//! buffer starts on a `size`-aligned offset (4096-byte aligned when `size` is a
//! multiple of the page size), which keeps kernel copies into them fast and
//! lets rkyv archives be read in place.
//!
//! Provided buffers are ordinary memory: the kernel copies into them with
//! `copy_to_user`, so they do not count against the locked-memory limit. Only
//! the ring of entries itself is pinned (16 bytes per buffer).

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use crate::error::StartError;

// The raw-pointer writes in `BufRing::push` rely on the kernel's 16-byte
// `struct io_uring_buf`.
const _: () = assert!(std::mem::size_of::<BufRingEntry>() == 16);

/// Buffer group id of the per-core receive ring.
pub(crate) const BGID: u16 = 0;

const PAGE: usize = 4096;

/// The memory all receive buffers of a core are carved from.
///
/// Reference-counted so that a [`crate::RecvBuf`] keeps it alive even if it
/// outlives its core (parked in a thread-local, say).
pub(crate) struct BufMem {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl BufMem {
    /// Start of the allocation.
    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for BufMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `BufRing::new` with this layout; the last
        // reference is gone, and no receive can write into it any more: a
        // `BufRing` that is still registered (or whose core did not drain its
        // operations) leaks a reference instead of dropping it.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A registered provided-buffer ring and the buffers it hands out.
pub(crate) struct BufRing {
    entries: NonNull<BufRingEntry>,
    entries_layout: Layout,
    mem: Rc<BufMem>,
    mask: u16,
    count: u16,
    size: u32,
    /// Our copy of the tail; published to the kernel with release stores.
    tail: u16,
    /// Buffers currently in the kernel's hands (free for receives).
    available: u16,
    /// The entry array is registered with a ring (which may outlive the
    /// core: other cores hold a duplicate of the ring's descriptor).
    registered: bool,
}

impl BufRing {
    /// Allocates `count` buffers of `size` bytes and registers them with `ring`.
    pub(crate) fn new(ring: &IoUring, count: u16, size: u32) -> Result<BufRing, StartError> {
        if count == 0 || !count.is_power_of_two() || count > 32768 {
            return Err(StartError::RecvBufferCount { count });
        }
        if size == 0 {
            return Err(StartError::ZeroBufferSize { what: "receive" });
        }
        let ring_bytes = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let mem_bytes = usize::from(count) * size as usize;
        let entries_layout =
            Layout::from_size_align(ring_bytes, PAGE).map_err(|_| StartError::BufferMemory {
                what: "receive ring",
                bytes: ring_bytes,
            })?;
        let mem_layout =
            Layout::from_size_align(mem_bytes, PAGE).map_err(|_| StartError::BufferMemory {
                what: "receive",
                bytes: mem_bytes,
            })?;
        // SAFETY: both layouts have a non-zero size (count >= 1, size >= 1).
        let entries = NonNull::new(unsafe { alloc::alloc_zeroed(entries_layout) })
            .ok_or(StartError::BufferMemory {
                what: "receive ring",
                bytes: ring_bytes,
            })?
            .cast::<BufRingEntry>();
        // SAFETY: as above.
        let mem = match NonNull::new(unsafe { alloc::alloc_zeroed(mem_layout) }) {
            Some(m) => m,
            None => {
                // SAFETY: `entries` was allocated just above with this layout
                // and is not registered yet.
                unsafe { alloc::dealloc(entries.as_ptr().cast(), entries_layout) };
                return Err(StartError::BufferMemory {
                    what: "receive",
                    bytes: mem_bytes,
                });
            }
        };
        let mut ring_bufs = BufRing {
            entries,
            entries_layout,
            mem: Rc::new(BufMem {
                ptr: mem,
                layout: mem_layout,
            }),
            mask: count - 1,
            count,
            size,
            tail: 0,
            available: 0,
            registered: false,
        };
        // SAFETY: the entry array is page aligned, `count` entries long, and
        // is freed only once unregistered (see `Drop for BufRing`).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries.as_ptr() as u64, count, BGID, 0)
        }
        .map_err(|error| StartError::RegisterRecvBuffers {
            count,
            size,
            memlock: crate::sys::memlock_limit(),
            error,
        })?;
        ring_bufs.registered = true;
        for bid in 0..count {
            ring_bufs.push(bid);
        }
        ring_bufs.publish();
        Ok(ring_bufs)
    }

    /// Unregisters the buffer ring from `ring`, so that its memory may be
    /// freed. Call only once the kernel has finished every receive that could
    /// pick a buffer from it.
    pub(crate) fn unregister(&mut self, ring: &IoUring) -> io::Result<()> {
        if self.registered {
            ring.submitter().unregister_buf_ring(BGID)?;
            self.registered = false;
        }
        Ok(())
    }

    /// Total number of buffers.
    pub(crate) fn count(&self) -> u16 {
        self.count
    }

    /// Buffers currently available to the kernel.
    pub(crate) fn available(&self) -> u16 {
        self.available
    }

    /// Pointer to the start of buffer `bid`.
    pub(crate) fn buf_ptr(&self, bid: u16) -> *mut u8 {
        assert!(bid < self.count, "buffer id {bid} out of range");
        // SAFETY: `bid < count`, so the offset stays inside the allocation of
        // `count * size` bytes.
        unsafe { self.mem.base().add(usize::from(bid) * self.size as usize) }
    }

    /// A reference to the buffer memory, for guards that point into it.
    pub(crate) fn mem(&self) -> &Rc<BufMem> {
        &self.mem
    }

    /// Notes that the kernel consumed a buffer (a CQE named it).
    pub(crate) fn taken(&mut self) {
        self.available = self.available.saturating_sub(1);
    }

    /// Gives buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let idx = usize::from(self.tail & self.mask);
        let addr = self.buf_ptr(bid) as u64;
        // The fields are written one by one through raw pointers, never
        // through a `&mut` to the whole entry: entry 0's last field is the
        // ring's tail, which the kernel reads at any time (kernel ABI
        // `struct io_uring_buf`: addr u64 at 0, len u32 at 8, bid u16 at 12,
        // resv/tail u16 at 14).
        // SAFETY: `idx <= mask < count`, so the entry lies inside the array;
        // the offsets are inside the 16-byte entry and aligned for their
        // types (the array is page aligned). The kernel only reads entries
        // between its head and the published tail, and this one is beyond
        // the published tail until `publish`.
        unsafe {
            let entry = self.entries.as_ptr().add(idx).cast::<u8>();
            entry.cast::<u64>().write(addr);
            entry.add(8).cast::<u32>().write(self.size);
            entry.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.available += 1;
    }

    fn publish(&self) {
        // SAFETY: the tail field lives inside entry 0 of the live entry array;
        // the kernel reads it concurrently, hence the atomic release store,
        // which also orders the entry writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.registered {
            // The ring context may outlive this core (a duplicate of its
            // descriptor is held for doorbells) and still reads the entries
            // and writes into the buffers: leak both rather than free them.
            std::mem::forget(self.mem.clone());
            return;
        }
        // SAFETY: allocated in `new` with this layout; unregistered, so the
        // kernel no longer reads it.
        unsafe { alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout) };
    }
}
