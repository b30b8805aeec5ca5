//! Concurrency primitives that [loom] can swap out.
//!
//! The ring takes its atomics, `Arc` and `UnsafeCell` from here instead of
//! `std`, the way tokio and crossbeam do it. A normal build re-exports `std`;
//! a build with `RUSTFLAGS="--cfg loom"` re-exports loom's instrumented types
//! so that the `#[cfg(loom)]` tests can explore every interleaving and
//! memory-ordering outcome (see `.ci/loom.sh`).
//!
//! loom's `UnsafeCell` tracks accesses and so cannot hand out a bare
//! `*mut T` through `get()`; both builds therefore expose the closure API
//! `with(|ptr: *const T| ..)` / `with_mut(|ptr: *mut T| ..)`, and code written
//! against it compiles in either build.
//!
//! Notes for loom:
//! - loom models `fence(SeqCst)` faithfully but treats `SeqCst` *accesses* as
//!   `AcqRel`; use fences where a Dekker-style (store; fence; load) pattern
//!   is needed.
//! - `Arc` and atomics' constructors are not `const` under loom.
//!
//! [loom]: https://docs.rs/loom

#[cfg(loom)]
pub(crate) mod sync {
    pub(crate) use loom::sync::Arc;

    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
    }
}

#[cfg(not(loom))]
pub(crate) mod sync {
    pub(crate) use std::sync::Arc;

    pub(crate) mod atomic {
        pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
    }
}

#[cfg(loom)]
pub(crate) mod cell {
    pub(crate) use loom::cell::UnsafeCell;
}

#[cfg(not(loom))]
pub(crate) mod cell {
    /// `std::cell::UnsafeCell` with loom's closure-based API.
    #[derive(Debug)]
    #[repr(transparent)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        /// Wraps `value`.
        #[inline(always)]
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        /// Calls `f` with a shared pointer to the contents.
        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Calls `f` with a mutable pointer to the contents.
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

/// Hints to the processor that the caller is spinning (loom: yields to the
/// scheduler, which a spin loop under loom must do to make progress).
#[cfg(all(test, loom))]
#[inline(always)]
pub(crate) fn spin_loop() {
    loom::thread::yield_now();
}
