//! Typed cross-core channels: an SPSC ring plus a doorbell.
//!
//! [`channel`] makes a bounded ring of `T`. Move the [`Sender`] to one core
//! and the [`Receiver`] to another (both are `Send`, neither is `Clone`).
//! The receiver binds to the core it is first polled on (a waiter slot there)
//! and must stay there. When it has nothing to read it runs the ring's park
//! handshake and sleeps; a sender rings its doorbell (MSG_RING or eventfd)
//! only then, so a busy stream of messages costs no syscall per message.
//! Values move by value: a registered buffer handle or an archived message's
//! buffer travels without its payload being copied.
//!
//! # The waiter handshake
//!
//! ```text
//! receiver (on its core)                  sender (any thread)
//!   try_pop: empty                          push; needs_wakeup (fence)
//!   bind: publish (core, token) once        if the receiver may be parked:
//!   store the task's waker in its slot          read the binding, ring (core, token)
//!   prepare_park (store; fence; re-check)
//!   sleep ... the doorbell arrives as a MSG_RING completion for `token`
//!   (or an eventfd write with the core's pending flag raised), the core
//!   wakes the waiter, which re-checks the ring
//! ```
//!
//! The binding is published before the park handshake's fence and read after
//! the sender's, so a sender that sees the receiver parked also sees where to
//! ring. The `#[cfg(loom)]` model below checks that no value is left unseen
//! with a parked receiver, for both doorbell kinds.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use super::doorbell::Peer;
use super::ring::{self, Consumer, Producer, TryRecvError, TrySendError};
use crate::executor::yield_now;
use crate::loom::sync::Mutex;

/// Where the receiver sleeps: its core and waiter token.
#[derive(Clone)]
struct Binding {
    peer: Arc<Peer>,
    token: u64,
}

/// The receiver's binding, published once for senders to read.
///
/// A mutex rather than a lock-free cell: it is written once per receiver and
/// read by a sender only when the receiver may be parked (and then cached),
/// and loom models it.
pub(crate) struct WaiterBinding<B> {
    bound: Mutex<Option<B>>,
}

impl<B: Clone> WaiterBinding<B> {
    pub(crate) fn new() -> Self {
        WaiterBinding {
            bound: Mutex::new(None),
        }
    }

    /// The binding, made by `make` on first use.
    pub(crate) fn bind(&self, make: impl FnOnce() -> B) -> B {
        let mut b = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        b.get_or_insert_with(make).clone()
    }

    /// The binding, if the receiver has bound.
    pub(crate) fn get(&self) -> Option<B> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The sending half of a typed cross-core channel.
pub struct Sender<T> {
    producer: Option<Producer<T>>,
    bound: Arc<WaiterBinding<Binding>>,
    /// The binding once read (it never changes).
    target: Option<Binding>,
}

/// The receiving half of a typed cross-core channel.
pub struct Receiver<T> {
    consumer: Consumer<T>,
    bound: Arc<WaiterBinding<Binding>>,
    /// This receiver's binding, once polled.
    me: Option<Binding>,
    parked: bool,
}

/// Creates a channel holding up to `capacity` values (rounded up to a power
/// of two). Memory: `capacity * size_of::<T>()` bytes plus about 512.
pub fn channel<T: Send>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (p, c) = ring::channel(capacity);
    let bound = Arc::new(WaiterBinding::new());
    (
        Sender {
            producer: Some(p),
            bound: bound.clone(),
            target: None,
        },
        Receiver {
            consumer: c,
            bound,
            me: None,
            parked: false,
        },
    )
}

impl<T> Sender<T> {
    fn producer(&mut self) -> &mut Producer<T> {
        self.producer
            .as_mut()
            .expect("the producer is only taken in drop")
    }

    fn wake_if_needed(&mut self) {
        if self.producer().needs_wakeup() {
            self.ring();
        }
    }

    /// Rings the receiver's doorbell (it may be parked).
    fn ring(&mut self) {
        if self.target.is_none() {
            self.target = self.bound.get();
        }
        if let Some(b) = &self.target {
            let msg_ring = super::mesh::try_with(|m| m.can_msg_ring(&b.peer)).unwrap_or(false);
            b.peer.ring(b.token, msg_ring);
        }
    }

    /// Sends `value` if there is room; a full ring or a gone receiver hands
    /// it back.
    pub fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        self.producer().try_push(value)?;
        self.wake_if_needed();
        Ok(())
    }

    /// Sends as many values from `values` as fit, publishing them at once
    /// and ringing the doorbell at most once; returns how many were sent.
    pub fn send_batch<I: IntoIterator<Item = T>>(
        &mut self,
        values: I,
    ) -> Result<usize, ring::Closed> {
        let n = self.producer().push_iter(values)?;
        if n > 0 {
            self.wake_if_needed();
        }
        Ok(n)
    }

    /// Sends `value`, waiting (one loop turn at a time) while the ring is
    /// full. Fails, handing the value back, once the receiver is gone.
    pub async fn send(&mut self, mut value: T) -> Result<(), T> {
        loop {
            match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(v)) => return Err(v),
                Err(TrySendError::Full(v)) => {
                    value = v;
                    yield_now().await;
                }
            }
        }
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.producer.as_ref().is_none_or(Producer::is_closed)
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(p) = self.producer.take() {
            if p.close() {
                self.ring();
            }
        }
    }
}

impl<T> Receiver<T> {
    /// Takes a value if one is waiting; `Err(Closed)` once the sender is gone
    /// and everything it sent was taken.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let r = self.consumer.try_pop();
        if r.is_ok() && self.parked {
            self.parked = false;
            self.consumer.cancel_park();
        }
        r
    }

    /// Waits for the next value; `None` once the sender is gone and
    /// everything it sent was taken.
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread, or on a different core than the one this
    /// receiver was first polled on.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| loop {
            match self.try_recv() {
                Ok(v) => return Poll::Ready(Some(v)),
                Err(TryRecvError::Closed) => return Poll::Ready(None),
                Err(TryRecvError::Empty) => {}
            }
            let token = self.bind();
            super::mesh::with(|m| {
                if let Some(slot) = m.waiters.borrow_mut().get_mut(token as usize - 1) {
                    match slot {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        s => *s = Some(cx.waker().clone()),
                    }
                }
            });
            if self.consumer.prepare_park() {
                self.parked = true;
                return Poll::Pending;
            }
            // Values (or the closure) arrived meanwhile: take them.
        })
        .await
    }

    /// Values waiting now.
    pub fn len(&self) -> usize {
        self.consumer.len()
    }

    /// Whether no value is waiting now.
    pub fn is_empty(&self) -> bool {
        self.consumer.is_empty()
    }

    /// Binds to the current core on first use; returns the waiter token.
    fn bind(&mut self) -> u64 {
        super::mesh::with(|m| {
            if self.me.is_none() {
                let bound = self.bound.bind(|| {
                    let key = m.waiters.borrow_mut().insert(None);
                    Binding {
                        peer: m.me().clone(),
                        token: key as u64 + 1,
                    }
                });
                self.me = Some(bound);
            }
            let Some(b) = &self.me else {
                unreachable!("bound just above")
            };
            assert!(
                Arc::ptr_eq(&b.peer, m.me()),
                "a mailbox receiver is bound to the core it was first polled on"
            );
            b.token
        })
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let Some(b) = self.me.take() else { return };
        let token = b.token;
        let peer = b.peer.clone();
        let remove = move || {
            super::mesh::try_with(|m| {
                if Arc::ptr_eq(m.me(), &peer) {
                    let mut w = m.waiters.borrow_mut();
                    if w.contains(token as usize - 1) {
                        w.remove(token as usize - 1);
                    }
                }
            });
        };
        let here = super::mesh::try_with(|m| Arc::ptr_eq(m.me(), &b.peer)).unwrap_or(false);
        if here {
            remove();
        } else {
            // Dropped away from its core: free the waiter slot there.
            b.peer.shared.run(Box::new(remove));
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::loom::sync::atomic::{AtomicU64, Ordering};
    use crate::mailbox::doorbell::PendingFlag;

    /// The two ways a doorbell reaches the receiver's core.
    #[derive(Clone, Copy)]
    enum Kind {
        /// A completion for the waiter's token lands in the core's ring.
        MsgRing,
        /// The core's pending flag is raised and its eventfd written.
        EventFd,
    }

    /// The receiver's core: its ring (counts completions for the waiter),
    /// eventfd (a counter) and pending flag.
    struct Core {
        cqes: AtomicU64,
        eventfd: AtomicU64,
        pending: PendingFlag,
    }

    impl Core {
        fn ring(&self, kind: Kind) {
            match kind {
                Kind::MsgRing => {
                    self.cqes.fetch_add(1, Ordering::AcqRel);
                }
                Kind::EventFd => {
                    self.pending.raise();
                    self.eventfd.fetch_add(1, Ordering::AcqRel);
                }
            }
        }

        /// Sleeps in `io_uring_enter` until a doorbell arrives; returns
        /// whether it woke the waiter (a MSG_RING completion for it, or an
        /// eventfd wake-up with the pending flag raised).
        fn park(&self) -> bool {
            loop {
                if self.cqes.swap(0, Ordering::AcqRel) != 0 {
                    return true;
                }
                if self.eventfd.swap(0, Ordering::AcqRel) != 0 {
                    return self.pending.take();
                }
                crate::loom::spin_loop();
            }
        }
    }

    fn model(kind: Kind) {
        loom::model(move || {
            let (mut tx, mut rx) = ring::channel::<u32>(2);
            let binding = Arc::new(WaiterBinding::<u64>::new());
            let core = Arc::new(Core {
                cqes: AtomicU64::new(0),
                eventfd: AtomicU64::new(0),
                pending: PendingFlag::new(),
            });
            let sender = {
                let (binding, core) = (binding.clone(), core.clone());
                loom::thread::spawn(move || {
                    let ring = |binding: &WaiterBinding<u64>| {
                        // A parked receiver has bound: the sender must find
                        // where to ring.
                        assert_eq!(binding.get(), Some(1), "parked receiver not found");
                        core.ring(kind);
                    };
                    tx.try_push(10).unwrap();
                    if tx.needs_wakeup() {
                        ring(&binding);
                    }
                    if tx.close() {
                        ring(&binding);
                    }
                })
            };
            // The receiver task on its core.
            let mut got = Vec::new();
            loop {
                match rx.try_pop() {
                    Ok(v) => got.push(v),
                    Err(TryRecvError::Closed) => break,
                    Err(TryRecvError::Empty) => {
                        let token = binding.bind(|| 1);
                        assert_eq!(token, 1);
                        if rx.prepare_park() {
                            // Sleep until a doorbell wakes this waiter.
                            while !core.park() {}
                            rx.cancel_park();
                        }
                    }
                }
            }
            sender.join().unwrap();
            assert_eq!(got, vec![10]);
        });
    }

    #[test]
    fn parked_receiver_is_woken_by_msg_ring() {
        model(Kind::MsgRing);
    }

    #[test]
    fn parked_receiver_is_woken_by_eventfd_and_pending_flag() {
        model(Kind::EventFd);
    }
}
