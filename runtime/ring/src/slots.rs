//! The slot array: `capacity` cells of `T`, a power of two, on a 128-byte
//! boundary. Index `i` (a free-running counter) lives in cell
//! `i & (capacity - 1)`.
//!
//! Consecutive indices share cache lines: with 8-byte values, 16 messages sit
//! on one 128-byte line pair (x86_64's spatial prefetcher moves lines in
//! pairs). When the producer writes right behind the consumer (a full ring,
//! where the consumer is the bottleneck), that line moves between the cores
//! for every message; the consumer therefore hands slots back in groups (see
//! `Consumer::try_pop`), so that a producer waiting on a full ring refills
//! lines the consumer has left. (With an empty ring the consumer reads right
//! behind the producer, but then it waits for the producer anyway.)
//!
//! Spreading consecutive indices over different lines instead (index `i` on
//! line `i % lines`) was measured too: it costs a line transfer per message
//! where the plain layout moves up to 16 messages per transfer, and one
//! message at a time 8-byte values fell from about 290 to about 27 M msgs/s
//! in the same two-core test.

use std::alloc::{self, Layout};
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use crate::loom::cell::UnsafeCell;

/// Alignment of the slot array: a cache-line pair, so that a value whose size
/// divides 128 (8 B, 64 B, ...) never straddles two cache lines, which would
/// double the lines that move between the cores per message.
pub(crate) const LINE: usize = 128;

/// `len` slots of `T`, allocated on a [`LINE`] boundary.
pub(crate) struct Slots<T> {
    ptr: NonNull<UnsafeCell<MaybeUninit<T>>>,
    /// Number of slots, a power of two.
    len: usize,
}

impl<T> Slots<T> {
    fn layout(len: usize) -> Layout {
        Layout::array::<UnsafeCell<MaybeUninit<T>>>(len)
            .and_then(|l| l.align_to(LINE))
            .expect("ring capacity overflows the address space")
    }

    /// Allocates `len` slots; `len` is a power of two.
    pub(crate) fn new(len: usize) -> Slots<T> {
        debug_assert!(len.is_power_of_two());
        let layout = Self::layout(len);
        let ptr = if layout.size() == 0 {
            // Zero-sized slots: any well-aligned pointer will do.
            NonNull::<UnsafeCell<MaybeUninit<T>>>::dangling()
        } else {
            // SAFETY: the layout has a non-zero size.
            let raw = unsafe { alloc::alloc(layout) };
            match NonNull::new(raw.cast::<UnsafeCell<MaybeUninit<T>>>()) {
                Some(p) => p,
                None => alloc::handle_alloc_error(layout),
            }
        };
        for i in 0..len {
            // SAFETY: `i < len`, inside the allocation made for `len` cells
            // (or a zero-sized write through a dangling, aligned pointer).
            unsafe {
                ptr.as_ptr()
                    .add(i)
                    .write(UnsafeCell::new(MaybeUninit::uninit()))
            };
        }
        Slots { ptr, len }
    }

    /// Number of slots.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The slot of index `index` (any counter value; only its low bits
    /// count).
    #[inline(always)]
    pub(crate) fn get(&self, index: usize) -> &UnsafeCell<MaybeUninit<T>> {
        let offset = index & (self.len - 1);
        // SAFETY: `offset < len` (`len` is a power of two) and every cell was
        // initialised in `new`; the cells live until `drop`, which needs
        // `&mut self`.
        unsafe { &*self.ptr.as_ptr().add(offset) }
    }
}

impl<T> Drop for Slots<T> {
    fn drop(&mut self) {
        // The cells themselves (not the values in them, which the ring's drop
        // handles) may need dropping: loom's cells track state.
        for i in 0..self.len {
            // SAFETY: each cell was initialised in `new` and is dropped once.
            unsafe { std::ptr::drop_in_place(self.ptr.as_ptr().add(i)) };
        }
        let layout = Self::layout(self.len);
        if layout.size() != 0 {
            // SAFETY: allocated in `new` with this same layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn array_is_line_aligned() {
        let slots = Slots::<u8>::new(8);
        assert_eq!(slots.ptr.as_ptr() as usize % LINE, 0);
        let slots = Slots::<[u8; 24]>::new(64);
        assert_eq!(slots.ptr.as_ptr() as usize % LINE, 0);
    }

    #[test]
    fn indices_wrap_onto_the_array() {
        let slots = Slots::<u64>::new(8);
        let base = slots.get(0) as *const _;
        for i in [8, 16, usize::MAX - 7] {
            assert_eq!(slots.get(i) as *const _, base, "index {i}");
        }
        assert_eq!(slots.get(usize::MAX) as *const _, slots.get(7) as *const _);
    }
}
