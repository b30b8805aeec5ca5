//! Typed cross-core channels: an SPSC ring plus a doorbell.
//!
//! [`channel`] makes a bounded ring of `T`. Move the [`Sender`] to one core
//! and the [`Receiver`] to another (both are `Send`, neither is `Clone`).
//! The receiver binds to the core it is first polled on and must stay there.
//! When it has nothing to read it runs the ring's park handshake and sleeps;
//! a sender rings its doorbell (MSG_RING or eventfd) only then, so a busy
//! stream of messages costs no syscall per message. Values move by value:
//! a registered buffer handle or an archived message's buffer travels without
//! its payload being copied.

use std::future::poll_fn;
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use super::doorbell::Peer;
use super::ring::{self, Consumer, Producer, TryRecvError, TrySendError};
use crate::core::{try_with_core, with_core};
use crate::executor::yield_now;

/// Where the receiver sleeps: its core and waiter token.
struct Binding {
    peer: Arc<Peer>,
    token: u64,
    exec_id: u32,
}

/// The sending half of a typed cross-core channel.
pub struct Sender<T> {
    producer: Option<Producer<T>>,
    bound: Arc<OnceLock<Binding>>,
}

/// The receiving half of a typed cross-core channel.
pub struct Receiver<T> {
    consumer: Consumer<T>,
    bound: Arc<OnceLock<Binding>>,
    parked: bool,
}

/// Creates a channel holding up to `capacity` values (rounded up to a power
/// of two). Memory: `capacity * size_of::<T>()` bytes plus about 512.
pub fn channel<T: Send>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (p, c) = ring::channel(capacity);
    let bound = Arc::new(OnceLock::new());
    (
        Sender {
            producer: Some(p),
            bound: bound.clone(),
        },
        Receiver {
            consumer: c,
            bound,
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
            if let Some(b) = self.bound.get() {
                b.peer.ring(b.token);
            }
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
                if let Some(b) = self.bound.get() {
                    b.peer.ring(b.token);
                }
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
            with_core(|c| {
                if let Some(slot) = c.mesh.waiters.borrow_mut().get_mut(token as usize - 1) {
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
        with_core(|c| {
            let b = self.bound.get_or_init(|| {
                let key = c.mesh.waiters.borrow_mut().insert(None);
                Binding {
                    peer: c.mesh.me().clone(),
                    token: key as u64 + 1,
                    exec_id: c.shared.exec_id,
                }
            });
            assert!(
                b.exec_id == c.shared.exec_id,
                "a mailbox receiver is bound to the core it was first polled on"
            );
            b.token
        })
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        if let Some(b) = self.bound.get() {
            let (exec_id, token) = (b.exec_id, b.token);
            let remove = move || {
                try_with_core(|c| {
                    if c.shared.exec_id == exec_id {
                        let mut w = c.mesh.waiters.borrow_mut();
                        if w.contains(token as usize - 1) {
                            w.remove(token as usize - 1);
                        }
                    }
                });
            };
            let here = try_with_core(|c| c.shared.exec_id == exec_id).unwrap_or(false);
            if here {
                remove();
            } else {
                // Dropped away from its core: free the waiter slot there.
                b.peer.shared.run(Box::new(remove));
            }
        }
    }
}
