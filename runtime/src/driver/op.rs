//! Single-shot operations as futures that own their resources.
//!
//! An [`Op<T>`] is created by submitting an SQE together with `T`, the
//! resources the SQE points into (buffers, addresses, timespecs). Polling it
//! yields the completion and gives `T` back. Dropping it early hands `T` to the
//! driver, which keeps it until the kernel's completion arrives and cancels
//! the operation; see the module docs of [`crate::driver`].
//!
//! `T` is moved when the future is dropped, so anything the kernel reads or
//! writes through a pointer must live on the heap (a `Vec`'s contents, a
//! `Box`), never inline in `T`.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use io_uring::squeue;

use super::{Cqe, Lifecycle};
use crate::core::with_core;

/// An operation in flight that owns `T` until it completes.
pub(crate) struct Op<T: 'static> {
    key: usize,
    data: Option<T>,
    /// Ops belong to the ring of the core that made them.
    _not_send: PhantomData<*const ()>,
}

impl<T: 'static> Op<T> {
    /// Submits `entry`, built from `data`, on the current core.
    ///
    /// # Safety
    ///
    /// Every pointer in the entry must point into heap memory owned by `data`
    /// (or memory that otherwise outlives the operation), so that it stays
    /// valid when `data` is moved into the driver.
    pub(crate) unsafe fn submit(data: T, entry: squeue::Entry) -> Op<T> {
        Self::submit_with(data, false, entry)
    }

    fn submit_with(data: T, returns_fd: bool, entry: squeue::Entry) -> Op<T> {
        let key = with_core(|core| {
            let mut driver = core.driver.borrow_mut();
            // SAFETY: the caller guarantees the entry only names memory owned
            // by `data` (heap) or outliving it; `data` stays in `self` or in
            // the driver's slot until the completion arrives.
            unsafe { driver.submit(Lifecycle::Submitted, returns_fd, || entry) }
        });
        Op {
            key,
            data: Some(data),
            _not_send: PhantomData,
        }
    }
}

impl<T: 'static + Unpin> Future for Op<T> {
    type Output = (Cqe, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.data.is_none() {
            // The key may belong to another operation by now: never touch it.
            unreachable_polled_after_completion();
        }
        let key = this.key;
        let done = with_core(|core| {
            let mut driver = core.driver.borrow_mut();
            let slot = driver.slot_mut(key);
            match &mut slot.state {
                Lifecycle::Completed(cqe) => {
                    let cqe = *cqe;
                    driver.remove(key);
                    Some(cqe)
                }
                Lifecycle::Waiting(w) => {
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                    None
                }
                Lifecycle::Notif(_, w) => {
                    *w = Some(cx.waker().clone());
                    None
                }
                state @ Lifecycle::Submitted => {
                    *state = Lifecycle::Waiting(cx.waker().clone());
                    None
                }
                // `Ignored` and `Multi` never belong to a live single-shot op.
                _ => unreachable_state(),
            }
        });
        match done {
            Some(cqe) => match this.data.take() {
                Some(data) => Poll::Ready((cqe, data)),
                None => unreachable_polled_after_completion(),
            },
            None => Poll::Pending,
        }
    }
}

#[cold]
fn unreachable_state() -> ! {
    panic!("ringwire operation slot in a state its op cannot be in")
}

#[cold]
fn unreachable_polled_after_completion() -> ! {
    panic!("ringwire operation polled after it completed")
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        if let Some(data) = self.data.take() {
            let key = self.key;
            // Ops are not `Send`, so this runs on the core that made the op,
            // and the core drops its tasks before it clears itself. Should a
            // core be gone anyway, the resources are leaked, never freed while
            // the kernel may still use them.
            let mut data = Some(data);
            crate::core::try_with_core(|core| {
                if let Some(d) = data.take() {
                    core.driver.borrow_mut().abandon(key, Box::new(d));
                }
            });
            if let Some(d) = data {
                std::mem::forget(d);
            }
        }
    }
}
