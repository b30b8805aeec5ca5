//! Buffers the kernel (or a peer core) writes into: bulk destinations.

/// Memory a receive may write into: its bytes stay at one address while the
/// value lives, even when the value moves (heap memory).
///
/// # Safety
///
/// `stable_mut_ptr()` must point to `bytes_total()` writable bytes that stay
/// at the same address and valid for as long as the value lives, even when
/// the value itself is moved, and nothing else may read or write them while
/// a receive owns the value.
pub unsafe trait IoBufMut: 'static {
    /// Start of the bytes.
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// Number of bytes that may be written.
    fn bytes_total(&self) -> usize;
    /// Marks the first `n` bytes as written.
    ///
    /// # Safety
    ///
    /// The first `n` bytes were written and `n <= bytes_total()`.
    unsafe fn set_init(&mut self, n: usize);
}

// SAFETY: a Vec's spare capacity lives on the heap and does not move with the
// Vec value; `bytes_total` is the capacity.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len() {
            // SAFETY: the caller guarantees `n <= capacity` and that the
            // first `n` bytes were written.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: a boxed slice's bytes live on the heap and do not move with the box;
// all of them are initialised already.
unsafe impl IoBufMut for Box<[u8]> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
    unsafe fn set_init(&mut self, _n: usize) {}
}
