//! Scoped thread-locals: how each subsystem finds its per-core state.
//!
//! Every subsystem of a core (counters, context, driver, executor, mesh)
//! keeps its state in a value that lives on the core thread's stack for the
//! whole event loop, and publishes a pointer to it in its own thread-local
//! for exactly that long ([`ScopedKey::set`]). Code running on the core reaches
//! it through that subsystem's accessor ([`ScopedKey::with`] /
//! [`ScopedKey::try_with`]), never through a loop-wide object, so the module
//! graph stays one-way (compare tokio's and monoio's per-subsystem contexts).
//!
//! Declare a key with `scoped_thread_local!` (`crate::scoped::scoped_thread_local`).

use std::cell::Cell;
use std::marker::PhantomData;
use std::thread::LocalKey;

/// A thread-local pointer to a `T` that is set only while a closure runs.
pub(crate) struct ScopedKey<T: 'static> {
    inner: &'static LocalKey<Cell<*const ()>>,
    // `fn() -> T`: the key is `Sync` whatever `T` is (it is only ever read on
    // the thread that set it).
    _marker: PhantomData<fn() -> T>,
}

/// Declares a [`ScopedKey`] static.
macro_rules! scoped_thread_local {
    ($(#[$attrs:meta])* $vis:vis static $name:ident: $ty:ty) => {
        $(#[$attrs])*
        $vis static $name: $crate::scoped::ScopedKey<$ty> = {
            ::std::thread_local!(static PTR: ::std::cell::Cell<*const ()> =
                const { ::std::cell::Cell::new(::std::ptr::null()) });
            $crate::scoped::ScopedKey::new(&PTR)
        };
    };
}

pub(crate) use scoped_thread_local;

impl<T: 'static> ScopedKey<T> {
    /// Wraps a thread-local pointer cell (used by the macro).
    pub(crate) const fn new(inner: &'static LocalKey<Cell<*const ()>>) -> ScopedKey<T> {
        ScopedKey {
            inner,
            _marker: PhantomData,
        }
    }

    /// Publishes `value` on this thread while `f` runs (nested calls see the
    /// innermost value; the previous one is restored afterwards, even when
    /// `f` unwinds).
    pub(crate) fn set<R>(&'static self, value: &T, f: impl FnOnce() -> R) -> R {
        struct Restore {
            key: &'static LocalKey<Cell<*const ()>>,
            prev: *const (),
        }
        impl Drop for Restore {
            fn drop(&mut self) {
                let prev = self.prev;
                self.key.with(|c| c.set(prev));
            }
        }
        let prev = self
            .inner
            .with(|c| c.replace(value as *const T as *const ()));
        let _restore = Restore {
            key: self.inner,
            prev,
        };
        f()
    }

    /// Runs `f` with the published value, or returns `None` when none is
    /// published on this thread (off a core, or during thread teardown).
    #[inline]
    pub(crate) fn try_with<R>(&'static self, f: impl FnOnce(&T) -> R) -> Option<R> {
        let ptr = self.inner.try_with(Cell::get).unwrap_or(std::ptr::null());
        if ptr.is_null() {
            return None;
        }
        // SAFETY: a non-null pointer was stored by `set`, whose `value: &T`
        // borrow outlives the closure during which the pointer is published
        // (the `Restore` guard puts the previous pointer back before `set`
        // returns or unwinds). This runs on the same thread inside that
        // closure, so the `T` is alive; it is only ever shared (`&T`), and
        // the reference cannot escape `f` (its lifetime is local to it).
        Some(f(unsafe { &*ptr.cast::<T>() }))
    }

    /// Runs `f` with the published value.
    ///
    /// # Panics
    ///
    /// When no value is published on this thread (off a ringwire core).
    #[inline]
    pub(crate) fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        match self.try_with(f) {
            Some(r) => r,
            None => not_on_core(),
        }
    }

    /// Whether a value is published on this thread.
    #[cfg(test)]
    pub(crate) fn is_set(&'static self) -> bool {
        !self
            .inner
            .try_with(Cell::get)
            .unwrap_or(std::ptr::null())
            .is_null()
    }
}

#[cold]
#[inline(never)]
fn not_on_core() -> ! {
    panic!("this ringwire function must be called from a task running on a ringwire core")
}

#[cfg(test)]
mod tests {
    scoped_thread_local!(static KEY: u32);

    #[test]
    fn set_publishes_only_while_the_closure_runs_and_nests() {
        assert!(!KEY.is_set());
        assert_eq!(KEY.try_with(|v| *v), None);
        let outer = 1u32;
        let inner = 2u32;
        KEY.set(&outer, || {
            assert_eq!(KEY.with(|v| *v), 1);
            KEY.set(&inner, || assert_eq!(KEY.with(|v| *v), 2));
            assert_eq!(KEY.with(|v| *v), 1);
        });
        assert!(!KEY.is_set());
    }

    #[test]
    fn an_unwinding_closure_restores_the_previous_value() {
        let v = 7u32;
        let r = std::panic::catch_unwind(|| KEY.set(&v, || panic!("inside")));
        assert!(r.is_err());
        assert!(!KEY.is_set());
    }

    #[test]
    #[should_panic(expected = "ringwire core")]
    fn with_panics_off_a_core() {
        KEY.with(|_| ());
    }
}
