//! The buffer traits operations take: [`IoBuf`] (the kernel reads it) and
//! [`IoBufMut`] (the kernel writes into it).
//!
//! Both are `unsafe` to implement: an implementation promises that the
//! memory stays put while the value moves, which is what lets an operation
//! own the buffer and hand it back after the kernel is done with it. The
//! runtime re-exports them from [`crate::buf`], next to its own buffer types.

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

/// A buffer the kernel may write into after the value has been moved.
///
/// # Safety
///
/// `stable_mut_ptr()` must point to `bytes_total()` bytes of writable memory
/// that stay at the same address and valid for as long as the value lives,
/// even when the value itself is moved, and that nothing else reads or writes
/// while the runtime owns the value. The first `bytes_init()` of them are
/// initialised (`IoBuf`), and [`set_init`](IoBufMut::set_init) may only grow
/// that count.
pub unsafe trait IoBufMut: IoBuf {
    /// Start of the memory.
    fn stable_mut_ptr(&mut self) -> *mut u8;

    /// Total bytes the memory holds (initialised or not).
    fn bytes_total(&self) -> usize;

    /// Records that the first `pos` bytes are now initialised (a no-op when
    /// they already were).
    ///
    /// # Safety
    ///
    /// The first `pos` bytes must be initialised, and `pos <= bytes_total()`.
    unsafe fn set_init(&mut self, pos: usize);
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

// SAFETY: as for `IoBuf`: the allocation (all `capacity()` bytes) lives on
// the heap and is exclusively the Vec's; its length only grows through
// `set_init`, whose caller vouches for the bytes.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, pos: usize) {
        if pos > self.len() {
            // SAFETY: the caller guarantees `pos <= capacity()` and that the
            // first `pos` bytes are initialised.
            unsafe { self.set_len(pos) };
        }
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

// SAFETY: the boxed slice lives on the heap, is exclusively the Box's, and
// is initialised in full.
unsafe impl IoBufMut for Box<[u8]> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
    unsafe fn set_init(&mut self, _pos: usize) {}
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
