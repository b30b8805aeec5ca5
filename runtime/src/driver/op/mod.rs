//! Operation types: each builds its own SQE from data it owns.
//!
//! An [`Operation`] is a value that owns everything its SQE names: heap
//! buffers, a boxed address or timespec, a reference to the socket. The trait
//! is `unsafe` to implement: each implementation argues, once, in the SAFETY
//! comment on its implementation, that the entry it builds names only memory
//! and descriptors that stay valid while the value lives, even when the value
//! is moved. Submitting one ([`Op::new`]) is then safe:
//!
//! - [`Op<O>`] is the future of a single-shot operation. Polled to the end,
//!   it hands the completion and the owned data back through
//!   [`Operation::complete`]. Dropped early, it moves the operation into its
//!   slot (the lifecycle's `Ignored` state) and cancels it; the data is
//!   dropped only after the kernel's final completion.
//! - [`multishot::Multi<O>`] is the handle of a multishot operation
//!   ([`recv_multi`], [`accept_multi`]): a stream of completions, re-armed by
//!   the driver when it stops for lack of buffers.
//!
//! One file per operation: [`timeout`], [`send`] (plain, registered and
//! zero-copy), [`sendmsg`] (gather), [`recv`] (plain receive into caller
//! memory), [`connect`], [`shutdown`], [`poll_add`] (readiness of another
//! descriptor), [`eventfd_read`] (the core's wake-up
//! read), [`msg_ring`] (doorbells to other cores), [`recv_multi`],
//! [`accept_multi`]. The buffer traits the send and receive operations take
//! live in [`buf`].
//!
//! Datagrams: [`recvmsg_multi`] (multishot `RECVMSG`, one datagram and its
//! source address per provided buffer), [`sendmsg_to`] (`SENDMSG` with a
//! destination and, for UDP GSO, a segment size).

pub(crate) mod accept_multi;
pub mod buf;
pub(crate) mod connect;
pub(crate) mod eventfd_read;
pub(crate) mod msg_ring;
pub(crate) mod multishot;
pub(crate) mod poll_add;
pub(crate) mod recv;
pub(crate) mod recv_multi;
pub(crate) mod recvmsg_multi;
pub(crate) mod send;
pub(crate) mod sendmsg;
pub(crate) mod sendmsg_to;
pub(crate) mod shutdown;
pub(crate) mod timeout;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use io_uring::squeue;

use super::lifecycle::Cqe;

/// A single-shot io_uring operation that owns what its SQE names.
///
/// # Safety
///
/// The entry returned by [`entry`](Operation::entry) may name only:
/// memory owned by `self` that does not move when `self` moves (heap
/// allocations, not fields stored inline), `'static` memory, or memory
/// otherwise guaranteed to outlive `self`; and descriptors that `self` keeps
/// open (or that outlive it). That memory must stay valid, and memory the
/// kernel reads must stay unmodified, until [`complete`](Operation::complete)
/// consumes `self` or `self` is dropped. The driver keeps `self` alive until
/// the operation's final completion, also when its future is dropped early.
pub(crate) unsafe trait Operation: 'static {
    /// What the operation's future resolves to.
    type Output;

    /// Builds the SQE (its `user_data` is set by the driver).
    fn entry(&mut self) -> squeue::Entry;

    /// Turns the completion into the output, giving back what `self` owns.
    fn complete(self, cqe: Cqe) -> Self::Output;
}

/// A single-shot operation in flight on the current core.
pub(crate) struct Op<O: Operation> {
    key: usize,
    op: Option<O>,
    /// Ops belong to the ring of the core that made them.
    _not_send: PhantomData<*const ()>,
}

// `Op` never hands out a pinned reference to `O` (the kernel's pointers go
// into heap memory `O` owns, never into `O` itself), so moving it is fine.
impl<O: Operation> Unpin for Op<O> {}

impl<O: Operation> Op<O> {
    /// Submits `op` on the current core.
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread.
    pub(crate) fn new(mut op: O) -> Op<O> {
        let entry = op.entry();
        let key = super::with(|cx| {
            // SAFETY: `O: Operation` promises that the entry names only what
            // `op` keeps valid while it lives; `op` stays in this future or,
            // once the future is dropped early, in the driver's slot until
            // the final completion (`Drop for Op`).
            unsafe { cx.driver.borrow_mut().submit_single(entry) }
        });
        Op {
            key,
            op: Some(op),
            _not_send: PhantomData,
        }
    }
}

impl<O: Operation> Future for Op<O> {
    type Output = O::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O::Output> {
        let this = &mut *self;
        if this.op.is_none() {
            // The key may belong to another operation by now: never touch it.
            polled_after_completion();
        }
        let key = this.key;
        let cqe = match super::with(|d| d.driver.borrow_mut().poll_single(key, cx.waker())) {
            Poll::Ready(cqe) => cqe,
            Poll::Pending => return Poll::Pending,
        };
        match this.op.take() {
            Some(op) => Poll::Ready(op.complete(cqe)),
            None => polled_after_completion(),
        }
    }
}

#[cold]
#[inline(never)]
fn polled_after_completion() -> ! {
    panic!("ringwire operation polled after it completed")
}

impl<O: Operation> Drop for Op<O> {
    fn drop(&mut self) {
        let Some(op) = self.op.take() else { return };
        let key = self.key;
        // Ops are not `Send`, so this runs on the core that made the op, and
        // the core drops its tasks before it clears its driver. Should the
        // driver be gone anyway, the resources are leaked, never freed while
        // the kernel may still use them.
        let mut op = Some(op);
        super::try_with(|cx| {
            if let Some(op) = op.take() {
                cx.driver.borrow_mut().abandon_single(key, Box::new(op));
            }
        });
        if let Some(op) = op {
            std::mem::forget(op);
        }
    }
}
