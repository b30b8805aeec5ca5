//! Bounded lock-free single-producer single-consumer ring: ringwire's
//! cross-core mailbox.
//!
//! The runtime (`ringwire-runtime`) keeps one ring per ordered pair of cores
//! and re-exports this crate as `ringwire_runtime::mailbox::ring`; the ring
//! itself knows nothing of cores, doorbells or io_uring, which keeps it small
//! enough to model-check with loom and to run under miri.
//!
//! [`channel`] allocates a ring of `capacity` slots (rounded up to a power of
//! two) and returns its two endpoints. The [`Producer`] and the [`Consumer`]
//! may live on different threads of one process (they are `Send` when
//! `T: Send`), but each is used from one thread at a time (neither is `Clone`
//! nor `Sync`).
//!
//! # Layout
//!
//! The ring is an array of slots indexed by two free-running counters:
//! `head` (next slot to pop, written only by the consumer) and `tail` (next
//! slot to push, written only by the producer). Slots `head..tail` hold
//! values; the ring is full when `tail - head == capacity`. Both counters sit
//! on their own 128-byte lines (x86_64 prefetches lines in pairs), and each
//! endpoint keeps a private copy of the *other* side's counter, refreshing it
//! only when the copy says the ring is full (producer) or empty (consumer).
//! In steady state a push therefore writes the producer's line and the slot,
//! and touches nothing the consumer owns (the design of rigtorp's
//! `SPSCQueue`).
//!
//! Small values share cache lines (16 values of 8 bytes per 128-byte line
//! pair). So that a producer waiting on a full ring does not write, message
//! by message, into the line the consumer is reading, [`Consumer::try_pop`]
//! hands popped slots back to the producer in groups (see there, and
//! `slots.rs` for the layout that was measured against it).
//!
//! # Calling order
//!
//! Producer side:
//! 1. [`Producer::try_push`] one value, or [`Producer::push_iter`] /
//!    [`Producer::push_slice`] as many as fit (one publication of `tail` for
//!    the whole batch). A full ring hands the value back
//!    ([`TrySendError::Full`]); nothing is ever dropped silently.
//! 2. After publishing (once per batch or loop turn, not per value), call
//!    [`Producer::needs_wakeup`]; if it returns `true`, ring the consumer's
//!    doorbell.
//! 3. [`Producer::close`] (or drop) when done; `close` also tells whether the
//!    doorbell must be rung so that a parked consumer sees the closure.
//!
//! Consumer side:
//! 1. [`Consumer::try_pop`] one value, or [`Consumer::pop_batch`] up to `max`
//!    values (one publication of `head` when the batch is dropped).
//! 2. When the ring is empty and the consumer has nothing else to do:
//!    [`Consumer::prepare_park`] (or [`Consumer::prepare_park_all`] for all
//!    the rings a thread consumes, with one barrier for all); park only if it
//!    returns `true`.
//! 3. After waking up (for any reason): [`Consumer::cancel_park`], then drain.
//!
//! # Park / wake protocol
//!
//! The consumer may sleep (e.g. in `io_uring_enter`) when its rings are
//! empty; a producer must then ring a doorbell (an `IORING_OP_MSG_RING`
//! completion or an eventfd write, outside this crate). Ringing it on every
//! push would cost a syscall per message, so the ring carries a `parked` word
//! and the two sides run a Dekker-style handshake. `parked` is written only by
//! the consumer: it holds a park sequence number, odd while the consumer is
//! (about to be) parked, even otherwise; the producer remembers the last odd
//! value it rang for (`woken`).
//!
//! ```text
//! consumer (prepare_park)              producer (push + needs_wakeup)
//!   seq += 2                             slot write; tail.store(t+1, Release)
//!   parked.store(seq | 1)                FENCE_P
//!   FENCE_C                              p = parked.load()
//!   t = tail.load(Acquire)               if p is odd and p != woken:
//!   if t != head or closed:                  woken = p; ring the doorbell
//!       parked.store(seq); don't park
//!   else park; on waking parked.store(seq)   (cancel_park)
//! ```
//!
//! Read `FENCE_P` and `FENCE_C` as two `SeqCst` fences (the form loom
//! checks). They are totally ordered. If the consumer's fence comes first,
//! the producer's load after its own fence sees `seq | 1` (or a later value:
//! `seq`, written only once the consumer is awake, or a newer park that runs
//! its own handshake) and it rings; if the producer's fence comes first, the
//! consumer's `tail` load sees the new value and it does not park. Either way
//! no wake-up is lost. `woken` makes one park cost at most one doorbell.
//! Closing the producer runs the same handshake with the `closed` flag in
//! place of `tail`.
//!
//! Only the consumer writes `parked`, so the producer's check is a plain load
//! of a line that stays shared in both caches while nobody parks, and no
//! read-modify-write races with the consumer's cancel. (This single-writer
//! shape is also what lets loom check the protocol exactly: loom cannot order
//! concurrent writes to one atomic precisely enough to verify a version in
//! which the producer clears the flag with a swap.)
//!
//! Spurious doorbells are possible (the consumer may find items and cancel
//! after the producer read `seq | 1`) and must be tolerated: a woken consumer
//! calls [`Consumer::cancel_park`] and drains; an empty ring then is not an
//! error.
//!
//! ## Where the barriers are paid
//!
//! The producer runs its half after every batch, one message at a time after
//! every message; the consumer runs its half only before it sleeps. A ring's
//! [`WakeBarrier`] says how the two fences are made:
//!
//! - [`WakeBarrier::Asymmetric`] (what [`channel`] gives where the kernel
//!   allows it): `FENCE_P` is a compiler fence only, so `needs_wakeup` is a
//!   plain load, and `FENCE_C` is a `SeqCst` fence, the system call
//!   `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, and another `SeqCst`
//!   fence (`F_c1`, the call, `F_c2`).
//! - [`WakeBarrier::Symmetric`] (no kernel support needed): `FENCE_P` is a
//!   `SeqCst` swap of the producer's own `tail` (one `xchg` on a line it
//!   owns) followed by a `SeqCst` load of `parked`, `FENCE_C` a `SeqCst`
//!   fence. By C++20's rules for SC fences this orders like two fences: if the
//!   producer's load read the old `parked`, it precedes the consumer's fence
//!   in the single total order, so does the swap sequenced before it, and the
//!   consumer's `tail` load after its fence sees the published tail.
//!
//! Why the asymmetric pair is enough. `membarrier` guarantees that every
//! thread of the process that runs during the call passes, between the
//! call's entry and its return, a point where it executes a full barrier (an
//! IPI to each CPU running one; a thread that is not running passes through
//! the scheduler's barriers when it is switched in or out). Call the
//! producer's barrier `F_p`. The compiler fence keeps the producer's
//! publication and its load of `parked` in program order, so `F_p` falls
//! before both, between them, or after both, and `F_c1 < F_p < F_c2` in the
//! SC fences' total order (the consumer's entry causes the IPI, and the call
//! returns only once every IPI has been handled):
//!
//! - `F_p` before the load of `parked`: the consumer's `parked` store is
//!   sequenced before `F_c1`, `F_c1 < F_p`, and the load is sequenced after
//!   `F_p`, so the load sees `seq | 1` (or later) and the producer rings.
//! - `F_p` after the publication: the publication is sequenced before `F_p`,
//!   `F_p < F_c2`, and the consumer's `tail` load is sequenced after `F_c2`,
//!   so it sees the publication and the consumer does not park.
//!
//! Every placement of `F_p` is covered by one of the two cases (placed
//! between the two accesses it is covered by both), so the asymmetric
//! handshake never loses a wake-up either; it is the two-fence protocol with
//! the producer's fence supplied by the kernel, at a point the consumer does
//! not choose. loom checks the two-fence protocol (both modes run it under
//! loom); miri runs the symmetric code (it has no `membarrier`); the stress
//! tests run both modes on real threads, and a store-buffering litmus test
//! (`barrier.rs`) runs the asymmetric pair itself, next to a control showing
//! that without `membarrier` the same pair does lose rounds.
//!
//! Whether the asymmetric mode is available is decided once per process, at
//! the first ring created ([`asymmetric_available`]); each ring's mode is
//! fixed when it is built and held by both endpoints, so they never
//! disagree. Where the kernel refuses `membarrier` (old kernel, seccomp,
//! miri) every ring is symmetric. Should a `membarrier` call fail after the
//! process registered for it, [`Consumer::prepare_park`] answers that the
//! consumer must not park: it keeps polling rather than risk a lost wake-up.
//! The cost of an asymmetric park is an IPI to every other CPU running a
//! thread of the process (about 1 us when one such CPU is busy, 0.1 us when
//! none is, measured on a 2-vCPU KVM guest).
//!
//! # Closing
//!
//! Dropping the consumer makes every later push fail with
//! [`TrySendError::Closed`], which returns the value, and drops the values
//! still in the ring. Dropping the producer makes [`Consumer::try_pop`] return
//! [`TryRecvError::Closed`] once the values pushed before the drop have been
//! popped. Values left in the ring when both endpoints are gone are dropped
//! exactly once.
//!
//! ```
//! use ringwire_ring::{channel, TryRecvError, TrySendError};
//!
//! let (mut tx, mut rx) = channel::<u32>(2);
//! assert!(tx.try_push(1).is_ok());
//! assert!(tx.try_push(2).is_ok());
//! assert!(matches!(tx.try_push(3), Err(TrySendError::Full(3))));
//!
//! assert_eq!(rx.try_pop(), Ok(1));
//! assert_eq!(rx.pop_batch(8).unwrap().collect::<Vec<_>>(), [2]);
//! assert_eq!(rx.try_pop(), Err(TryRecvError::Empty));
//!
//! // Nothing to do: park only if prepare_park says so.
//! assert!(rx.prepare_park());
//! tx.try_push(4).unwrap();
//! assert!(tx.needs_wakeup()); // ring the doorbell
//! rx.cancel_park(); // after waking up
//! assert_eq!(rx.try_pop(), Ok(4));
//!
//! drop(tx);
//! assert_eq!(rx.try_pop(), Err(TryRecvError::Closed));
//! ```
//!
//! Endpoints cannot be shared between threads, only moved:
//!
//! ```compile_fail
//! fn assert_sync<S: Sync>() {}
//! assert_sync::<ringwire_ring::Producer<u32>>();
//! ```
//!
//! ```compile_fail
//! fn assert_sync<S: Sync>() {}
//! assert_sync::<ringwire_ring::Consumer<u32>>();
//! ```

mod barrier;
mod loom;
mod slots;

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use crate::loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use crate::loom::sync::Arc;
use crate::slots::Slots;

pub use crate::barrier::{asymmetric_available, WakeBarrier};

/// Creates a ring with room for `capacity` values, rounded up to the next
/// power of two (0 becomes 1), with the asymmetric park barrier where the
/// kernel allows it ([`WakeBarrier::Asymmetric`]).
///
/// Memory: `capacity.next_power_of_two() * size_of::<T>()` bytes for the
/// slots plus about 512 bytes of cache-padded counters and flags.
///
/// # Panics
///
/// If the rounded capacity overflows `usize` or the allocation fails.
pub fn channel<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    channel_with(capacity, WakeBarrier::Asymmetric)
}

/// [`channel`] with the park barrier chosen: [`WakeBarrier::Symmetric`] for a
/// ring whose consumer parks very often (each asymmetric park is a system
/// call that interrupts the process's other running threads),
/// [`WakeBarrier::Asymmetric`] for the cheapest `needs_wakeup`. Asymmetric
/// falls back to symmetric where the kernel refuses `membarrier`; the
/// endpoints' [`wake_barrier`](Producer::wake_barrier) tells which one the
/// ring got.
///
/// # Panics
///
/// As [`channel`].
pub fn channel_with<T>(capacity: usize, barrier: WakeBarrier) -> (Producer<T>, Consumer<T>) {
    channel_starting_at(capacity, barrier, 0)
}

/// [`channel_with`] with both counters starting at `start`; tests use it to
/// cross the `usize` wrap-around quickly.
fn channel_starting_at<T>(
    capacity: usize,
    barrier: WakeBarrier,
    start: usize,
) -> (Producer<T>, Consumer<T>) {
    let capacity = capacity
        .max(1)
        .checked_next_power_of_two()
        .expect("ring capacity overflows usize");
    channel_inner(capacity, barrier, start, release_group(capacity))
}

/// Builds a ring of `capacity` slots (a power of two) whose consumer hands
/// slots back in groups of `release_group` (a power of two; loom tests give
/// small rings large groups).
fn channel_inner<T>(
    capacity: usize,
    barrier: WakeBarrier,
    start: usize,
    release_group: usize,
) -> (Producer<T>, Consumer<T>) {
    debug_assert!(capacity.is_power_of_two() && release_group.is_power_of_two());
    let asymmetric = barrier == WakeBarrier::Asymmetric && asymmetric_available();
    let slots = Slots::new(capacity);
    let shared = Arc::new(Shared {
        head: CachePadded(AtomicUsize::new(start)),
        tail: CachePadded(AtomicUsize::new(start)),
        parked: CachePadded(AtomicUsize::new(0)),
        producer_closed: AtomicBool::new(false),
        consumer_closed: AtomicBool::new(false),
        slots,
    });
    let producer = Producer {
        shared: Arc::clone(&shared),
        tail: start,
        cached_head: start,
        capacity,
        woken: 0,
        asymmetric,
        closed: false,
        _not_sync: PhantomData,
    };
    let consumer = Consumer {
        shared,
        head: start,
        cached_tail: start,
        released: start,
        release_mask: release_group - 1,
        park_seq: 0,
        asymmetric,
        _not_sync: PhantomData,
    };
    (producer, consumer)
}

/// Most slots [`Consumer::try_pop`] pops before handing them back to the
/// producer (see there).
const RELEASE_GROUP: usize = 16;

/// The release group of a ring of `capacity` slots (a power of two): at most
/// a quarter of the ring, so that a small ring is not held full by slots
/// already popped.
fn release_group(capacity: usize) -> usize {
    (capacity / 4).clamp(1, RELEASE_GROUP)
}

/// Aligns `T` to 128 bytes so that it shares its cache line (and the
/// adjacent line that x86_64's spatial prefetcher pulls in) with nothing else.
#[derive(Debug)]
#[repr(align(128))]
struct CachePadded<T>(T);

impl<T> Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// The state both endpoints point to.
struct Shared<T> {
    /// Next index to pop. Written only by the consumer (Release, after it
    /// has moved the value out of the slot), read by the producer (Acquire)
    /// when its cached copy says the ring is full.
    head: CachePadded<AtomicUsize>,
    /// Next index to push. Written only by the producer (Release, after it
    /// has written the slot), read by the consumer (Acquire) when its cached
    /// copy says the ring is empty.
    tail: CachePadded<AtomicUsize>,
    /// The consumer's park sequence number: odd while it is (about to be)
    /// parked, even otherwise. Written only by the consumer; read by the
    /// producer after every batch (see the crate docs). On its own line.
    parked: CachePadded<AtomicUsize>,
    /// The producer is gone: no value will be pushed after the current tail.
    producer_closed: AtomicBool,
    /// The consumer is gone: pushes fail with `Closed`.
    consumer_closed: AtomicBool,
    /// `capacity` slots, a power of two. The slot of index `i` is initialized
    /// exactly when `head <= i < tail` (in wrapping arithmetic), counting the
    /// endpoints' private, possibly not yet published, counters.
    slots: Slots<T>,
}

// SAFETY: `Shared` is only reachable through one `Producer` and one
// `Consumer`. The `UnsafeCell` slots are never accessed by both at once: the
// producer writes only slots in `tail..head + capacity` (free), the consumer
// reads only slots in `head..tail` (full), and ownership of a slot passes
// between them through the Release store / Acquire load of `tail` (full) and
// `head` (free). Values of `T` move from the producer's thread to the
// consumer's thread (or are dropped on whichever thread drops the ring last),
// hence `T: Send`. No `&T` is ever handed to two threads, so `T: Sync` is not
// needed.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: see the `Send` impl above: all shared mutation goes through atomics
// or through slots whose exclusive owner is decided by the head/tail protocol.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// Moves `value` into the slot of `index`.
    ///
    /// # Safety
    ///
    /// The caller is the producer and the slot of `index` is free: `index`
    /// lies in `tail..head + capacity` for a `head` the producer has loaded
    /// with Acquire (so the consumer is done with the slot).
    #[inline(always)]
    unsafe fn write(&self, index: usize, value: T) {
        self.slots.get(index).with_mut(|slot| {
            // SAFETY: the caller guarantees exclusive access to this free
            // slot; the pointer comes from a live `UnsafeCell`.
            unsafe { (*slot).write(value) };
        });
    }

    /// Moves the value out of the slot of `index`, leaving it logically
    /// uninitialized.
    ///
    /// # Safety
    ///
    /// The caller is the consumer (or the last owner of the ring), the slot of
    /// `index` is initialized (`index` lies in `head..tail` for a `tail` loaded
    /// with Acquire), and the caller advances `head` past `index` so that the
    /// value is read only once.
    #[inline(always)]
    unsafe fn read(&self, index: usize) -> T {
        self.slots.get(index).with(|slot| {
            // SAFETY: the caller guarantees that the slot is initialized and
            // that nobody writes it concurrently or reads it again.
            unsafe { (*slot).assume_init_read() }
        })
    }

    /// The producer side of the park handshake: after publishing `tail` or
    /// `producer_closed`, tells whether the consumer may be parked in a park
    /// the producer has not rung for yet (`woken`: the last one it rang for).
    #[inline]
    fn take_parked(&self, asymmetric: bool, woken: &mut usize) -> bool {
        // Orders the preceding publication before the load of `parked`;
        // pairs with the consumer's barrier (see the crate docs).
        let parked = barrier::producer_load_parked(asymmetric, &self.tail, &self.parked);
        if parked & 1 == 1 && parked != *woken {
            *woken = parked;
            true
        } else {
            false
        }
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // Both endpoints published their private counters when they were
        // dropped, and the last `Arc` drop synchronizes with both, so these
        // loads see the final values.
        let mut index = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        while index != tail {
            // SAFETY: `index` lies in `head..tail`, which holds initialized
            // values (invariant of `slots`); no endpoint is left, and `index`
            // advances so each value is read and dropped once.
            drop(unsafe { self.read(index) });
            index = index.wrapping_add(1);
        }
    }
}

/// The sending half of a ring; see the [crate docs](crate).
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Next index to write; ahead of `shared.tail` only inside a batch (or
    /// after a panic in a batch's iterator; `Drop` publishes it).
    tail: usize,
    /// The consumer's `head` when last loaded; never ahead of the real one.
    cached_head: usize,
    /// Number of slots (a power of two).
    capacity: usize,
    /// The consumer's last park (odd `parked` value) we rang for.
    woken: usize,
    /// The ring's barrier mode: `WakeBarrier::Asymmetric` in effect.
    asymmetric: bool,
    /// `close` already ran.
    closed: bool,
    /// `Send` but not `Sync`.
    _not_sync: PhantomData<Cell<()>>,
}

impl<T> Producer<T> {
    /// Pushes `value` and publishes it to the consumer.
    ///
    /// Returns the value in [`TrySendError::Full`] when the ring is full and
    /// in [`TrySendError::Closed`] when the consumer is gone (checked first:
    /// retrying cannot help then). Follow a successful push (or a batch of
    /// them) with [`needs_wakeup`](Self::needs_wakeup).
    ///
    /// "Full" counts the slots the consumer has popped one at a time but not
    /// yet handed back (fewer than [`Consumer::release_group`]; see
    /// [`Consumer::try_pop`]).
    #[inline]
    pub fn try_push(&mut self, value: T) -> Result<(), TrySendError<T>> {
        if self.shared.consumer_closed.load(Ordering::Relaxed) {
            return Err(TrySendError::Closed(value));
        }
        if self.tail.wrapping_sub(self.cached_head) == self.capacity {
            self.cached_head = self.shared.head.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.cached_head) == self.capacity {
                return Err(TrySendError::Full(value));
            }
        }
        // SAFETY: we are the producer and `tail - head < capacity` for a
        // `head` loaded with Acquire, so the slot of `tail` is free.
        unsafe { self.shared.write(self.tail, value) };
        self.tail = self.tail.wrapping_add(1);
        self.shared.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Pushes values from `values` while there is room, then publishes them
    /// all at once. Returns how many were pushed (0 if the ring is full).
    ///
    /// No value is taken from the iterator unless there is a slot for it, so
    /// passing `&mut iter` leaves the values that did not fit in `iter`.
    /// Returns [`Closed`] (taking nothing) when the consumer is gone.
    ///
    /// If the iterator panics, the values pushed before the panic stay in the
    /// ring and are published by the next push or by the producer's drop.
    pub fn push_iter<I>(&mut self, values: I) -> Result<usize, Closed>
    where
        I: IntoIterator<Item = T>,
    {
        if self.shared.consumer_closed.load(Ordering::Relaxed) {
            return Err(Closed);
        }
        let values = values.into_iter();
        let wanted = values.size_hint().0.max(1);
        let mut free = self.capacity - self.tail.wrapping_sub(self.cached_head);
        if free < wanted {
            self.cached_head = self.shared.head.load(Ordering::Acquire);
            free = self.capacity - self.tail.wrapping_sub(self.cached_head);
        }
        let start = self.tail;
        for value in values.take(free) {
            // SAFETY: we are the producer; at most `free` values are written,
            // all in `tail..head + capacity` for a `head` loaded with Acquire,
            // so every slot written here is free.
            unsafe { self.shared.write(self.tail, value) };
            self.tail = self.tail.wrapping_add(1);
        }
        let pushed = self.tail.wrapping_sub(start);
        if pushed > 0 {
            self.shared.tail.store(self.tail, Ordering::Release);
        }
        Ok(pushed)
    }

    /// Copies as many values from the front of `values` as fit and publishes
    /// them at once; returns how many were pushed (push `&values[n..]` later).
    pub fn push_slice(&mut self, values: &[T]) -> Result<usize, Closed>
    where
        T: Copy,
    {
        self.push_iter(values.iter().copied())
    }

    /// Tells whether the consumer may be parked and must be woken up (its
    /// doorbell rung) to see what was pushed so far.
    ///
    /// Call it after publishing (after a push or a batch of pushes, not after
    /// every value of a batch). It is a load of a line the consumer writes
    /// only when it parks, ordered after the publication by a compiler fence
    /// ([`WakeBarrier::Asymmetric`]) or by a locked instruction
    /// ([`WakeBarrier::Symmetric`]). Returns `true` at most once per
    /// [`Consumer::prepare_park`] that returned `true`. See the
    /// [crate docs](crate) for the protocol.
    #[must_use = "if this returns true the consumer's doorbell must be rung"]
    #[inline]
    pub fn needs_wakeup(&mut self) -> bool {
        self.shared.take_parked(self.asymmetric, &mut self.woken)
    }

    /// Closes the ring from the producer's side and tells whether the
    /// consumer may be parked and must be woken up to see the closure.
    ///
    /// Dropping the producer closes the ring too, but cannot report that; use
    /// `close` when the consumer may be parked on this ring.
    #[must_use = "if this returns true the consumer's doorbell must be rung"]
    pub fn close(mut self) -> bool {
        self.close_inner()
    }

    fn close_inner(&mut self) -> bool {
        self.closed = true;
        // Publishes values written by a batch whose iterator panicked; a
        // no-op otherwise.
        self.shared.tail.store(self.tail, Ordering::Release);
        self.shared.producer_closed.store(true, Ordering::Release);
        self.shared.take_parked(self.asymmetric, &mut self.woken)
    }

    /// Whether the consumer is gone (pushes would fail with `Closed`).
    pub fn is_closed(&self) -> bool {
        self.shared.consumer_closed.load(Ordering::Relaxed)
    }

    /// Number of slots in the ring.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The ring's park barrier (the same at both endpoints).
    pub fn wake_barrier(&self) -> WakeBarrier {
        mode(self.asymmetric)
    }
}

fn mode(asymmetric: bool) -> WakeBarrier {
    if asymmetric {
        WakeBarrier::Asymmetric
    } else {
        WakeBarrier::Symmetric
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        if !self.closed {
            // Nobody to tell about a parked consumer; see `close`.
            let _ = self.close_inner();
        }
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity)
            .field("tail", &self.tail)
            .field("wake_barrier", &self.wake_barrier())
            .finish_non_exhaustive()
    }
}

/// The receiving half of a ring; see the [crate docs](crate).
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Next index to read; ahead of `shared.head` only while a [`PopBatch`]
    /// is alive (or after one was leaked; the next pop or `Drop` publishes).
    head: usize,
    /// The producer's `tail` when last loaded; never ahead of the real one.
    cached_tail: usize,
    /// `head` when last published to the producer.
    released: usize,
    /// `release_group - 1`: `try_pop` publishes `head` when `head & mask` is 0.
    release_mask: usize,
    /// Even park sequence number; `parked` holds it (not parked) or it + 1.
    park_seq: usize,
    /// The ring's barrier mode: `WakeBarrier::Asymmetric` in effect.
    asymmetric: bool,
    /// `Send` but not `Sync`.
    _not_sync: PhantomData<Cell<()>>,
}

impl<T> Consumer<T> {
    /// Pops the oldest value.
    ///
    /// Returns [`TryRecvError::Empty`] when there is nothing to pop and
    /// [`TryRecvError::Closed`] when, in addition, the producer is gone.
    ///
    /// The slots popped one at a time are handed back to the producer in
    /// groups of [`release_group`](Self::release_group) (16 in rings of 64
    /// slots or more), and all of them whenever the ring is found empty:
    /// a producer waiting on a full ring then refills lines the consumer has
    /// left instead of writing, message by message, into the line the
    /// consumer is reading (and the line holding `head` moves once per
    /// group). Until then the producer may see the ring as full while up to
    /// `release_group - 1` popped slots are not yet handed back.
    #[inline]
    pub fn try_pop(&mut self) -> Result<T, TryRecvError> {
        if self.head == self.cached_tail && self.refresh_tail() == 0 {
            self.release();
            return Err(self.empty_or_closed());
        }
        // SAFETY: we are the consumer and `head < tail` for a `tail` loaded
        // with Acquire, so the slot of `head` holds a published value; `head`
        // advances right after, so it is read once.
        let value = unsafe { self.shared.read(self.head) };
        self.head = self.head.wrapping_add(1);
        if self.head & self.release_mask == 0 {
            self.release();
        }
        Ok(value)
    }

    /// Pops up to `max` values as an iterator; `head` is published once, when
    /// the batch is dropped (this also hands back slots popped by
    /// [`try_pop`](Self::try_pop) and not yet released).
    ///
    /// Returns [`TryRecvError::Empty`] or [`TryRecvError::Closed`] instead of
    /// an empty batch (also when `max` is 0). Values the batch does not yield
    /// before it is dropped stay in the ring.
    pub fn pop_batch(&mut self, max: usize) -> Result<PopBatch<'_, T>, TryRecvError> {
        let mut available = self.cached_tail.wrapping_sub(self.head);
        if available < max {
            available = self.refresh_tail();
        }
        if available == 0 || max == 0 {
            self.release();
            return Err(self.empty_or_closed());
        }
        let end = self.head.wrapping_add(available.min(max));
        Ok(PopBatch {
            consumer: self,
            end,
        })
    }

    /// Loads the producer's `tail` and returns how many values are ready.
    #[inline]
    fn refresh_tail(&mut self) -> usize {
        self.cached_tail = self.shared.tail.load(Ordering::Acquire);
        self.cached_tail.wrapping_sub(self.head)
    }

    /// The error for a ring found empty: `Closed` if the producer is gone and
    /// nothing was pushed before it left.
    #[cold]
    fn empty_or_closed(&mut self) -> TryRecvError {
        // Acquire: pairs with the Release store in `close_inner`, so the
        // `tail` loaded below includes everything pushed before the close.
        if self.shared.producer_closed.load(Ordering::Acquire) && self.refresh_tail() == 0 {
            TryRecvError::Closed
        } else {
            TryRecvError::Empty
        }
    }

    /// The consumer side of the park handshake: announces that the consumer
    /// is about to park and returns `true` if it may, `false` if values (or
    /// the producer's closure) are already visible and it must drain instead.
    ///
    /// After it returned `true`, the producer's next
    /// [`Producer::needs_wakeup`] or [`Producer::close`] returns `true`. Call
    /// [`cancel_park`](Self::cancel_park) when the consumer wakes up (for any
    /// reason) or decides not to park after all.
    ///
    /// On an asymmetric ring this is a `membarrier` system call; a thread
    /// consuming several rings parks on all of them with one call through
    /// [`prepare_park_all`](Self::prepare_park_all). Also returns `false` (do
    /// not park, keep polling) if that call fails, which it does not once the
    /// process registered for it.
    #[must_use = "park only if this returns true"]
    pub fn prepare_park(&mut self) -> bool {
        Self::prepare_park_all(std::slice::from_mut(self))
    }

    /// [`prepare_park`](Self::prepare_park) on every ring in `consumers` (the
    /// inbound rings of one thread) with a single barrier: announces the park
    /// on all of them, makes one barrier (one `membarrier` call if any ring is
    /// asymmetric), then checks them all. Returns `true` if the thread may
    /// park; then every producer's next `needs_wakeup` or `close` returns
    /// `true`. Returns `false`, with every park already cancelled, if any
    /// ring has values (or its producer's closure) visible. An empty slice
    /// returns `true`.
    ///
    /// After waking up, call [`cancel_park`](Self::cancel_park) on each.
    #[must_use = "park only if this returns true"]
    pub fn prepare_park_all(consumers: &mut [Consumer<T>]) -> bool {
        let mut asymmetric = false;
        for c in consumers.iter_mut() {
            c.announce_park();
            asymmetric |= c.asymmetric;
        }
        if consumers.is_empty() {
            return true;
        }
        // Orders every `parked` store above before every load below; pairs
        // with each producer's `needs_wakeup` (see the crate docs).
        let barrier_made = barrier::consumer_barrier(asymmetric);
        let mut may_park = barrier_made;
        if barrier_made {
            for c in consumers.iter_mut() {
                if c.has_news() {
                    may_park = false;
                    break;
                }
            }
        }
        if !may_park {
            for c in consumers.iter_mut() {
                c.cancel_park();
            }
        }
        may_park
    }

    /// The first half of a park: publishes `head` and marks this consumer as
    /// (about to be) parked.
    fn announce_park(&mut self) {
        // `try_pop` or a leaked `PopBatch` may have left `head` unpublished.
        self.release();
        self.park_seq = self.park_seq.wrapping_add(2);
        self.shared
            .parked
            .store(self.park_seq | 1, Ordering::Relaxed);
    }

    /// The second half, after the barrier: whether values or the producer's
    /// closure are visible (then the consumer must not park).
    fn has_news(&mut self) -> bool {
        self.refresh_tail() != 0 || self.shared.producer_closed.load(Ordering::Acquire)
    }

    /// Hands every popped slot back to the producer (publishes `head`).
    #[inline]
    fn release(&mut self) {
        if self.released != self.head {
            self.released = self.head;
            self.shared.head.store(self.head, Ordering::Release);
        }
    }

    /// How many slots [`try_pop`](Self::try_pop) pops before handing them
    /// back to the producer: a quarter of the capacity, at most 16.
    pub fn release_group(&self) -> usize {
        self.release_mask + 1
    }

    /// Withdraws a [`prepare_park`](Self::prepare_park): the producer stops
    /// reporting that a wake-up is needed.
    pub fn cancel_park(&mut self) {
        self.shared.parked.store(self.park_seq, Ordering::Relaxed);
    }

    /// Number of values ready to pop (a snapshot: the producer may push more
    /// at any time).
    pub fn len(&self) -> usize {
        self.shared
            .tail
            .load(Ordering::Acquire)
            .wrapping_sub(self.head)
    }

    /// Whether no value is ready to pop (a snapshot, see [`len`](Self::len)).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the producer is gone (values pushed before may still be
    /// waiting to be popped).
    pub fn is_closed(&self) -> bool {
        self.shared.producer_closed.load(Ordering::Acquire)
    }

    /// Number of slots in the ring.
    pub fn capacity(&self) -> usize {
        self.shared.slots.len()
    }

    /// The ring's park barrier (the same at both endpoints).
    pub fn wake_barrier(&self) -> WakeBarrier {
        mode(self.asymmetric)
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.shared.consumer_closed.store(true, Ordering::Relaxed);
        // Drop what is already there now (it may hold resources such as file
        // descriptors) rather than when the producer goes away. Values pushed
        // concurrently stay in the ring and are dropped with it.
        let tail = self.shared.tail.load(Ordering::Acquire);
        while self.head != tail {
            // SAFETY: `head..tail` holds published values (Acquire load of
            // `tail`); `head` is advanced and published before the value is
            // dropped, so a panicking `Drop` of `T` cannot cause a double drop.
            let value = unsafe { self.shared.read(self.head) };
            self.head = self.head.wrapping_add(1);
            self.shared.head.store(self.head, Ordering::Release);
            drop(value);
        }
        self.shared.head.store(self.head, Ordering::Release);
    }
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.capacity())
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// Values popped by [`Consumer::pop_batch`], yielded oldest first.
///
/// Dropping the batch publishes the consumer's progress once; values it did
/// not yield stay in the ring.
pub struct PopBatch<'a, T> {
    consumer: &'a mut Consumer<T>,
    /// One past the last index this batch may yield.
    end: usize,
}

impl<T> Iterator for PopBatch<'_, T> {
    type Item = T;

    #[inline]
    fn next(&mut self) -> Option<T> {
        let consumer = &mut *self.consumer;
        if consumer.head == self.end {
            return None;
        }
        // SAFETY: `head..end` lies in `head..tail` for a `tail` the consumer
        // loaded with Acquire in `pop_batch`, so the slot holds a published
        // value; `head` advances right after, so it is read once, and the
        // producer does not reuse the slot before `head` is published.
        let value = unsafe { consumer.shared.read(consumer.head) };
        consumer.head = consumer.head.wrapping_add(1);
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = self.end.wrapping_sub(self.consumer.head);
        (len, Some(len))
    }
}

impl<T> ExactSizeIterator for PopBatch<'_, T> {}

impl<T> Drop for PopBatch<'_, T> {
    fn drop(&mut self) {
        self.consumer.release();
    }
}

impl<T> fmt::Debug for PopBatch<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PopBatch")
            .field("remaining", &self.len())
            .finish()
    }
}

/// Why [`Producer::try_push`] handed the value back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The ring is full; retry after the consumer made room.
    Full(T),
    /// The consumer is gone; the value can never be delivered.
    Closed(T),
}

impl<T> TrySendError<T> {
    /// The value that was not pushed.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(value) | Self::Closed(value) => value,
        }
    }

    /// Whether the ring was full.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full(_))
    }

    /// Whether the consumer is gone.
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed(_))
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("Full(..)"),
            Self::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("ring is full"),
            Self::Closed(_) => f.write_str("ring's consumer is gone"),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

/// Why [`Consumer::try_pop`] or [`Consumer::pop_batch`] returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing to pop now.
    Empty,
    /// Nothing to pop, ever: the producer is gone and the ring is drained.
    Closed,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("ring is empty"),
            Self::Closed => f.write_str("ring is empty and its producer is gone"),
        }
    }
}

impl std::error::Error for TryRecvError {}

/// A batch push failed because the consumer is gone; nothing was taken from
/// the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ring's consumer is gone")
    }
}

impl std::error::Error for Closed {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::AtomicUsize as StdAtomicUsize;
    use std::sync::Arc as StdArc;

    /// Counts its drops in a shared counter.
    #[derive(Debug)]
    struct Counted(u64, StdArc<StdAtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter() -> StdArc<StdAtomicUsize> {
        StdArc::new(StdAtomicUsize::new(0))
    }

    fn drops(counter: &StdArc<StdAtomicUsize>) -> usize {
        counter.load(Ordering::Relaxed)
    }

    #[test]
    fn capacity_rounds_up_to_power_of_two() {
        for (asked, got) in [(0, 1), (1, 1), (2, 2), (3, 4), (5, 8), (64, 64), (65, 128)] {
            let (tx, rx) = channel::<u8>(asked);
            assert_eq!((tx.capacity(), rx.capacity()), (got, got), "asked {asked}");
        }
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn absurd_capacity_panics() {
        let _ = channel::<u8>(usize::MAX);
    }

    #[test]
    fn fifo_full_empty() {
        let (mut tx, mut rx) = channel(4);
        assert_eq!(rx.try_pop(), Err(TryRecvError::Empty));
        for i in 0..4 {
            tx.try_push(i).unwrap();
        }
        assert_eq!(rx.len(), 4);
        match tx.try_push(99) {
            Err(TrySendError::Full(99)) => {}
            other => panic!("expected Full(99), got {other:?}"),
        }
        assert_eq!(rx.try_pop(), Ok(0));
        tx.try_push(4).unwrap();
        assert!(tx.try_push(5).unwrap_err().is_full());
        for i in 1..5 {
            assert_eq!(rx.try_pop(), Ok(i));
        }
        assert_eq!(rx.try_pop(), Err(TryRecvError::Empty));
        assert!(rx.is_empty());
    }

    #[test]
    fn wraps_around_many_times() {
        let (mut tx, mut rx) = channel(4);
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        // Uneven push/pop counts move the indices across every slot offset.
        for round in 0..1000u32 {
            for _ in 0..(round % 5) {
                match tx.try_push(next_in) {
                    Ok(()) => next_in += 1,
                    Err(e) => assert!(e.is_full()),
                }
            }
            for _ in 0..(round % 3 + 1) {
                match rx.try_pop() {
                    Ok(v) => {
                        assert_eq!(v, next_out);
                        next_out += 1;
                    }
                    Err(e) => assert_eq!(e, TryRecvError::Empty),
                }
            }
            assert!(next_in - next_out <= 4);
        }
        assert!(next_out > 1000, "the ring barely moved: {next_out}");
    }

    #[test]
    fn counters_wrap_past_usize_max() {
        let (mut tx, mut rx) = channel_starting_at(4, WakeBarrier::Symmetric, usize::MAX - 5);
        let mut expected = 0;
        for i in 0..40 {
            tx.try_push(i).unwrap();
            if i % 2 == 1 {
                tx.try_push(1000 + i).unwrap();
            }
            let got: Vec<_> = rx.pop_batch(8).unwrap().collect();
            for v in got {
                if v >= 1000 {
                    assert_eq!(v, 1000 + expected - 1);
                } else {
                    assert_eq!(v, expected);
                    expected += 1;
                }
            }
        }
        assert_eq!(expected, 40);
        // Full detection across the wrap.
        let (mut tx, mut rx) = channel_starting_at(2, WakeBarrier::Asymmetric, usize::MAX);
        tx.try_push(1).unwrap();
        tx.try_push(2).unwrap();
        assert!(tx.try_push(3).unwrap_err().is_full());
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.try_pop(), Ok(1));
        tx.try_push(3).unwrap();
        assert_eq!(rx.pop_batch(5).unwrap().collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn push_iter_takes_only_what_fits() {
        let (mut tx, mut rx) = channel(4);
        let mut source = 0..10;
        assert_eq!(tx.push_iter(&mut source), Ok(4));
        assert_eq!(source.next(), Some(4), "an item was taken but not pushed");
        assert_eq!(tx.push_iter(&mut source), Ok(0));
        assert_eq!(source.next(), Some(5));
        assert_eq!(rx.try_pop(), Ok(0));
        assert_eq!(rx.try_pop(), Ok(1));
        // Refreshes its stale view of head: two slots are free now.
        assert_eq!(tx.push_iter(&mut source), Ok(2));
        assert_eq!(source.next(), Some(8));
        let all: Vec<_> = std::iter::from_fn(|| rx.try_pop().ok()).collect();
        assert_eq!(all, [2, 3, 6, 7]);
        assert_eq!(tx.push_iter(std::iter::empty()), Ok(0));
        // A filter's size hint is 0: it still fills the free slots.
        assert_eq!(tx.push_iter((0..100).filter(|v| v % 3 == 0)), Ok(4));
        assert_eq!(rx.pop_batch(10).unwrap().collect::<Vec<_>>(), [0, 3, 6, 9]);
    }

    #[test]
    fn push_slice_partial() {
        let (mut tx, mut rx) = channel(8);
        let data: Vec<u64> = (0..20).collect();
        let mut sent = 0;
        let mut received = Vec::new();
        while sent < data.len() {
            sent += tx.push_slice(&data[sent..]).unwrap();
            received.extend(rx.pop_batch(3).unwrap());
        }
        while let Ok(batch) = rx.pop_batch(3) {
            assert!(batch.len() <= 3);
            received.extend(batch);
        }
        assert_eq!(received, data);
    }

    #[test]
    fn pop_batch_limits_and_partial_consumption() {
        let (mut tx, mut rx) = channel(8);
        assert_eq!(rx.pop_batch(4).unwrap_err(), TryRecvError::Empty);
        assert_eq!(tx.push_iter(0..8), Ok(8));
        assert_eq!(rx.pop_batch(0).unwrap_err(), TryRecvError::Empty);
        {
            let mut batch = rx.pop_batch(5).unwrap();
            assert_eq!(batch.len(), 5);
            assert_eq!(batch.next(), Some(0));
            assert_eq!(batch.next(), Some(1));
            assert_eq!(batch.len(), 3);
            // Dropped with 2, 3, 4 unyielded: they stay in the ring.
        }
        // The two popped slots were published as free.
        assert_eq!(tx.push_iter(8..20), Ok(2));
        let rest: Vec<_> = rx.pop_batch(100).unwrap().collect();
        assert_eq!(rest, (2..10).collect::<Vec<_>>());
    }

    #[test]
    fn leaked_batch_is_published_by_next_pop() {
        let (mut tx, mut rx) = channel(2);
        tx.push_iter(0..2).unwrap();
        let mut batch = rx.pop_batch(2).unwrap();
        assert_eq!(batch.next(), Some(0));
        std::mem::forget(batch);
        // head not published: the producer still sees a full ring.
        assert!(tx.try_push(2).unwrap_err().is_full());
        assert_eq!(rx.try_pop(), Ok(1));
        tx.push_iter(2..4).unwrap();
        assert_eq!(rx.pop_batch(2).unwrap().collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn producer_drop_closes_after_drain() {
        let (mut tx, mut rx) = channel(4);
        tx.try_push(1).unwrap();
        tx.try_push(2).unwrap();
        assert!(!rx.is_closed());
        drop(tx);
        assert!(rx.is_closed());
        assert_eq!(rx.try_pop(), Ok(1));
        assert_eq!(rx.pop_batch(4).unwrap().collect::<Vec<_>>(), [2]);
        assert_eq!(rx.try_pop(), Err(TryRecvError::Closed));
        assert_eq!(rx.pop_batch(4).unwrap_err(), TryRecvError::Closed);
        assert!(!rx.prepare_park(), "must not park on a closed ring");
    }

    #[test]
    fn consumer_drop_returns_values_to_producer() {
        let (mut tx, rx) = channel::<String>(4);
        tx.try_push("a".into()).unwrap();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        match tx.try_push("b".into()) {
            Err(TrySendError::Closed(v)) => assert_eq!(v, "b"),
            other => panic!("expected Closed, got {other:?}"),
        }
        let mut source = vec!["c".to_string()].into_iter();
        assert_eq!(tx.push_iter(&mut source), Err(Closed));
        assert_eq!(source.len(), 1, "closed push_iter must take nothing");
    }

    #[test]
    fn every_value_dropped_exactly_once() {
        let count = counter();
        let make = |i| Counted(i, count.clone());
        {
            // Both endpoints dropped with values in the ring, across a wrap.
            let (mut tx, mut rx) = channel(4);
            for i in 0..3 {
                tx.try_push(make(i)).unwrap();
            }
            drop(rx.try_pop().unwrap());
            drop(rx.try_pop().unwrap());
            assert_eq!(drops(&count), 2);
            for i in 3..6 {
                tx.try_push(make(i)).unwrap();
            }
            let rejected = tx.try_push(make(6)).unwrap_err().into_inner();
            assert_eq!(rejected.0, 6);
            drop(rejected);
            assert_eq!(drops(&count), 3);
            drop(tx);
            drop(rx);
            assert_eq!(drops(&count), 7, "4 values left in the ring");
        }
        count.store(0, Ordering::Relaxed);
        {
            // Consumer dropped first drops what is in the ring right away.
            let (mut tx, rx) = channel(4);
            tx.push_iter((0..4).map(make)).unwrap();
            drop(rx);
            assert_eq!(drops(&count), 4);
            let back = tx.try_push(make(9)).unwrap_err();
            assert!(back.is_closed());
            drop(back);
            assert_eq!(drops(&count), 5);
            drop(tx);
            assert_eq!(drops(&count), 5);
        }
        count.store(0, Ordering::Relaxed);
        {
            // Producer dropped first; a partially consumed batch.
            let (mut tx, mut rx) = channel(8);
            tx.push_iter((0..8).map(make)).unwrap();
            drop(tx);
            let mut batch = rx.pop_batch(6).unwrap();
            drop(batch.next());
            drop(batch.next());
            drop(batch);
            assert_eq!(drops(&count), 2);
            drop(rx);
            assert_eq!(drops(&count), 8);
        }
    }

    #[test]
    fn panicking_iterator_loses_nothing() {
        let count = counter();
        let (mut tx, mut rx) = channel(8);
        let c = count.clone();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let source = (0..8).map(|i| {
                assert!(i < 3, "iterator panics at 3");
                Counted(i, c.clone())
            });
            tx.push_iter(source)
        }));
        assert!(result.is_err());
        // The three values written before the panic are delivered by the
        // next push.
        tx.try_push(Counted(100, count.clone())).unwrap();
        let got: Vec<u64> = rx.pop_batch(8).unwrap().map(|c| c.0).collect();
        assert_eq!(got, [0, 1, 2, 100]);
        assert_eq!(drops(&count), 4);
        // ...or by the producer's drop.
        let (mut tx, mut rx) = channel(8);
        let c = count.clone();
        let _ = catch_unwind(AssertUnwindSafe(|| {
            tx.push_iter((0..8).map(|i| {
                assert!(i < 2, "iterator panics at 2");
                Counted(i, c.clone())
            }))
        }));
        drop(tx);
        let got: Vec<u64> = rx.pop_batch(8).unwrap().map(|c| c.0).collect();
        assert_eq!(got, [0, 1]);
        assert_eq!(rx.try_pop().unwrap_err(), TryRecvError::Closed);
    }

    #[test]
    fn zero_sized_values() {
        let (mut tx, mut rx) = channel::<()>(2);
        tx.try_push(()).unwrap();
        tx.try_push(()).unwrap();
        assert!(tx.try_push(()).unwrap_err().is_full());
        assert_eq!(rx.pop_batch(5).unwrap().count(), 2);
    }

    /// Both park barriers; `Asymmetric` is symmetric where the kernel (or
    /// miri) has no `membarrier`, which `wake_barrier_reports_the_mode`
    /// checks.
    const MODES: [WakeBarrier; 2] = [WakeBarrier::Symmetric, WakeBarrier::Asymmetric];

    #[test]
    fn wake_barrier_reports_the_mode() {
        let (tx, rx) = channel_with::<u8>(4, WakeBarrier::Symmetric);
        assert_eq!(tx.wake_barrier(), WakeBarrier::Symmetric);
        assert_eq!(rx.wake_barrier(), WakeBarrier::Symmetric);
        let expected = if asymmetric_available() {
            WakeBarrier::Asymmetric
        } else {
            WakeBarrier::Symmetric
        };
        let (tx, rx) = channel::<u8>(4);
        assert_eq!(tx.wake_barrier(), expected);
        assert_eq!(rx.wake_barrier(), expected);
        // Decided once: the same answer every time.
        assert_eq!(asymmetric_available(), asymmetric_available());
    }

    /// The kernels this runs on (Linux 4.14 and later, no seccomp filter)
    /// grant `membarrier`; a `false` here means rings silently lost the
    /// cheap `needs_wakeup`.
    #[test]
    #[cfg(all(target_os = "linux", not(miri)))]
    fn membarrier_is_available_here() {
        assert!(asymmetric_available());
    }

    #[test]
    fn park_protocol_single_thread() {
        for mode in MODES {
            let (mut tx, mut rx) = channel_with(4, mode);
            // Nobody parked: no doorbell.
            tx.try_push(1).unwrap();
            assert!(!tx.needs_wakeup());
            // Items visible: refuse to park, and leave no flag behind.
            assert!(!rx.prepare_park());
            tx.try_push(2).unwrap();
            assert!(!tx.needs_wakeup());
            assert_eq!(rx.pop_batch(4).unwrap().count(), 2);
            // Empty: park.
            assert!(rx.prepare_park());
            tx.try_push(3).unwrap();
            assert!(tx.needs_wakeup(), "{mode:?}");
        }
    }

    #[test]
    fn needs_wakeup_once_per_park() {
        for mode in MODES {
            let (mut tx, mut rx) = channel_with(4, mode);
            assert!(rx.prepare_park());
            tx.try_push(1).unwrap();
            assert!(tx.needs_wakeup());
            tx.try_push(2).unwrap();
            assert!(!tx.needs_wakeup(), "one park, one doorbell");
            rx.cancel_park();
            assert_eq!(rx.try_pop(), Ok(1));
            assert_eq!(rx.try_pop(), Ok(2));
            // Woken by something else and cancelled: no doorbell.
            assert!(rx.prepare_park());
            rx.cancel_park();
            tx.try_push(3).unwrap();
            assert!(!tx.needs_wakeup());
            assert_eq!(rx.try_pop(), Ok(3));
            // Closing wakes a parked consumer, which then sees Closed.
            assert!(rx.prepare_park());
            assert!(tx.close());
            rx.cancel_park();
            assert_eq!(rx.try_pop(), Err(TryRecvError::Closed));
            // Closing without a parked consumer needs no doorbell.
            let (tx, _rx) = channel_with::<u8>(1, mode);
            assert!(!tx.close());
        }
    }

    #[test]
    fn prepare_park_all_one_barrier_for_all_rings() {
        for mode in MODES {
            let (mut txs, mut rxs): (Vec<_>, Vec<_>) =
                (0..3).map(|_| channel_with::<u32>(4, mode)).unzip();
            // All empty: park; every producer then rings exactly once.
            assert!(Consumer::prepare_park_all(&mut rxs));
            for tx in &mut txs {
                tx.try_push(1).unwrap();
                assert!(tx.needs_wakeup());
                tx.try_push(2).unwrap();
                assert!(!tx.needs_wakeup());
            }
            for rx in &mut rxs {
                rx.cancel_park();
                assert_eq!(rx.pop_batch(4).unwrap().count(), 2);
            }
            // One ring has a value: no park, and no park left announced on
            // any ring (the others' producers need not ring).
            txs[1].try_push(3).unwrap();
            assert!(!txs[1].needs_wakeup());
            assert!(!Consumer::prepare_park_all(&mut rxs));
            for tx in &mut txs {
                tx.try_push(4).unwrap();
                assert!(!tx.needs_wakeup(), "a refused park left a flag behind");
            }
            for rx in &mut rxs {
                while rx.try_pop().is_ok() {}
            }
            // A closed ring also refuses the park.
            let tx = txs.pop().unwrap();
            drop(tx);
            assert!(!Consumer::prepare_park_all(&mut rxs));
            rxs.pop();
            assert!(Consumer::prepare_park_all(&mut rxs));
            // Nothing to park on: nothing stops the park.
            assert!(Consumer::<u32>::prepare_park_all(&mut []));
        }
    }

    #[test]
    fn endpoints_are_send() {
        fn assert_send<S: Send>(_: &S) {}
        let (tx, rx) = channel::<Vec<u8>>(1);
        assert_send(&tx);
        assert_send(&rx);
    }

    /// Sends `0..n` from a second thread in batches of varying size; the
    /// consumer pops in batches of varying size and checks the order.
    fn two_threads(capacity: usize, mode: WakeBarrier, n: u64) {
        let (mut tx, mut rx) = channel_with(capacity, mode);
        let producer = std::thread::spawn(move || {
            let mut next = 0;
            while next < n {
                let end = (next + next % 7 + 1).min(n);
                let mut source = next..end;
                match tx.push_iter(&mut source) {
                    Ok(k) => next += k as u64,
                    Err(Closed) => panic!("consumer left early"),
                }
                if tx.needs_wakeup() {
                    // No doorbell in this test: the consumer spins.
                }
                std::thread::yield_now();
            }
        });
        let mut expected = 0;
        loop {
            match rx.pop_batch((expected as usize % 5) + 1) {
                Ok(batch) => {
                    for v in batch {
                        assert_eq!(v, expected);
                        expected += 1;
                    }
                }
                Err(TryRecvError::Empty) => std::thread::yield_now(),
                Err(TryRecvError::Closed) => break,
            }
        }
        assert_eq!(expected, n);
        producer.join().unwrap();
    }

    #[test]
    fn two_threads_in_order() {
        // Small under miri, which also checks this for data races.
        let n = if cfg!(miri) { 200 } else { 100_000 };
        for mode in MODES {
            two_threads(4, mode, n);
        }
    }

    #[test]
    fn two_threads_in_order_release_groups() {
        // 64 slots: try_pop hands slots back 16 at a time.
        let n = if cfg!(miri) { 300 } else { 100_000 };
        for mode in MODES {
            let (mut tx, mut rx) = channel_with(64, mode);
            assert_eq!(rx.release_group(), 16);
            let producer = std::thread::spawn(move || {
                let mut next = 0u64;
                while next < n {
                    match tx.try_push(next) {
                        Ok(()) => next += 1,
                        Err(TrySendError::Full(_)) => std::thread::yield_now(),
                        Err(TrySendError::Closed(_)) => panic!("consumer left early"),
                    }
                }
            });
            let mut expected = 0;
            loop {
                match rx.try_pop() {
                    Ok(v) => {
                        assert_eq!(v, expected);
                        expected += 1;
                    }
                    Err(TryRecvError::Empty) => std::thread::yield_now(),
                    Err(TryRecvError::Closed) => break,
                }
            }
            assert_eq!(expected, n);
            producer.join().unwrap();
        }
    }

    #[test]
    fn try_pop_releases_slots_in_groups() {
        for (capacity, group) in [
            (1, 1),
            (2, 1),
            (4, 1),
            (8, 2),
            (16, 4),
            (64, 16),
            (1024, 16),
        ] {
            let (_, rx) = channel::<u8>(capacity);
            assert_eq!(rx.release_group(), group, "capacity {capacity}");
        }
        let (mut tx, mut rx) = channel(64);
        assert_eq!(tx.push_iter(0..64), Ok(64));
        // Popped but not yet handed back: the producer still sees a full ring.
        for i in 0..15 {
            assert_eq!(rx.try_pop(), Ok(i));
        }
        assert!(tx.try_push(64).unwrap_err().is_full());
        // The 16th pop hands back the whole group.
        assert_eq!(rx.try_pop(), Ok(15));
        assert_eq!(tx.push_iter(64..100), Ok(16));
        for i in 16..80 {
            assert_eq!(rx.try_pop(), Ok(i));
        }
        // A partial group is handed back when the ring is found empty...
        assert_eq!(tx.push_iter(80..83), Ok(3));
        for i in 80..83 {
            assert_eq!(rx.try_pop(), Ok(i));
        }
        assert_eq!(rx.try_pop(), Err(TryRecvError::Empty));
        assert_eq!(tx.push_iter(0..100), Ok(64), "61 if 3 slots were held");
        // ...by a batch...
        assert_eq!(rx.try_pop(), Ok(0));
        assert_eq!(rx.pop_batch(2).unwrap().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(tx.push_iter(100..200), Ok(3));
        // ...and by a park, even a refused one (after a leaked batch here).
        assert_eq!(rx.try_pop(), Ok(3));
        let mut batch = rx.pop_batch(1).unwrap();
        assert_eq!(batch.next(), Some(4));
        std::mem::forget(batch);
        assert!(!rx.prepare_park());
        assert_eq!(tx.push_iter(200..300), Ok(2));
    }

    #[test]
    fn release_groups_across_the_wrap_drop_each_value_once() {
        // 32 slots: groups of 8.
        let count = counter();
        let make = |i| Counted(i, count.clone());
        let mut built = 0;
        {
            let (mut tx, mut rx) = channel_starting_at(32, WakeBarrier::Symmetric, usize::MAX - 40);
            let mut next_out = 0;
            // Uneven pushes and pops cross every slot and the counter wrap.
            for round in 0..200u64 {
                let want = (round * 7) % 23;
                let pushed = tx.push_iter((built..built + want).map(make)).unwrap() as u64;
                built += pushed;
                if let Ok(mut batch) = rx.pop_batch((round % 11 + 1) as usize) {
                    // Leave some in the batch now and then: they stay queued.
                    let take = if round % 3 == 0 { 1 } else { usize::MAX };
                    for c in batch.by_ref().take(take) {
                        assert_eq!(c.0, next_out);
                        next_out += 1;
                    }
                }
                if let Ok(c) = rx.try_pop() {
                    assert_eq!(c.0, next_out);
                    next_out += 1;
                }
            }
            assert!(next_out > 100, "the ring barely moved: {next_out}");
            // Both endpoints dropped with values left in the ring.
        }
        assert_eq!(drops(&count), built as usize);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::loom::spin_loop;
    use ::loom::sync::Notify;
    use ::loom::thread;

    /// Pushes `values` in order, spinning while the ring is full.
    fn push_all(tx: &mut Producer<u32>, values: impl IntoIterator<Item = u32>) {
        for mut v in values {
            loop {
                match tx.try_push(v) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) => {
                        v = back;
                        spin_loop();
                    }
                    Err(TrySendError::Closed(_)) => panic!("consumer gone"),
                }
            }
        }
    }

    #[test]
    fn push_pop_across_threads() {
        ::loom::model(|| {
            let (mut tx, mut rx) = channel::<u32>(2);
            let producer = thread::spawn(move || push_all(&mut tx, 0..3));
            let mut expected = 0;
            while expected < 3 {
                match rx.try_pop() {
                    Ok(v) => {
                        assert_eq!(v, expected);
                        expected += 1;
                    }
                    Err(TryRecvError::Empty) => spin_loop(),
                    Err(TryRecvError::Closed) => panic!("closed before all values arrived"),
                }
            }
            producer.join().unwrap();
        });
    }

    #[test]
    fn full_ring_capacity_two() {
        ::loom::model(|| {
            let (mut tx, mut rx) = channel::<u32>(2);
            let popped = ::loom::sync::Arc::new(AtomicBool::new(false));
            let consumer = {
                let popped = popped.clone();
                thread::spawn(move || {
                    let first = rx.try_pop().ok();
                    if first.is_some() {
                        popped.store(true, Ordering::Release);
                    }
                    (first, rx)
                })
            };
            tx.try_push(0).unwrap();
            tx.try_push(1).unwrap();
            // Full unless the consumer already took 0; if we know it did
            // (through `popped`), the freed slot must be usable.
            let saw_pop = popped.load(Ordering::Acquire);
            let third = tx.try_push(2);
            if let Err(e) = &third {
                assert!(e.is_full());
                assert!(!saw_pop, "a slot was known to be free but the push failed");
            }
            let (first, mut rx) = consumer.join().unwrap();
            let mut all: Vec<u32> = first.into_iter().collect();
            all.extend(std::iter::from_fn(|| rx.try_pop().ok()));
            let expected: &[u32] = if third.is_ok() { &[0, 1, 2] } else { &[0, 1] };
            assert_eq!(all, expected);
        });
    }

    #[test]
    fn batches_across_threads() {
        ::loom::model(|| {
            let (mut tx, mut rx) = channel::<u32>(2);
            let producer = thread::spawn(move || {
                let mut source = 0..4;
                while source.start < 4 {
                    if tx.push_iter(&mut source).unwrap() == 0 {
                        spin_loop();
                    }
                }
            });
            let mut expected = 0;
            while expected < 4 {
                match rx.pop_batch(2) {
                    Ok(batch) => {
                        for v in batch {
                            assert_eq!(v, expected);
                            expected += 1;
                        }
                    }
                    Err(TryRecvError::Empty) => spin_loop(),
                    Err(TryRecvError::Closed) => panic!("closed before all values arrived"),
                }
            }
            producer.join().unwrap();
        });
    }

    #[test]
    fn producer_close_is_seen_after_the_values() {
        ::loom::model(|| {
            let (mut tx, mut rx) = channel::<u32>(2);
            let producer = thread::spawn(move || {
                tx.try_push(7).unwrap();
                drop(tx);
            });
            let mut got = Vec::new();
            loop {
                match rx.try_pop() {
                    Ok(v) => got.push(v),
                    Err(TryRecvError::Empty) => spin_loop(),
                    Err(TryRecvError::Closed) => break,
                }
            }
            assert_eq!(got, [7], "Closed reported before the value was popped");
            producer.join().unwrap();
        });
    }

    /// Drop-counting value; the counter is a plain std atomic because it is
    /// only an observer, not part of the modelled protocol.
    struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn consumer_close_drops_each_value_once() {
        ::loom::model(|| {
            let drops = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (mut tx, mut rx) = channel::<Counted>(2);
            let consumer = thread::spawn(move || {
                let popped = rx.try_pop().is_ok();
                drop(rx);
                popped
            });
            let mut accepted = 0;
            let mut returned = 0;
            for _ in 0..3 {
                match tx.try_push(Counted(drops.clone())) {
                    Ok(()) => accepted += 1,
                    Err(e) => {
                        returned += 1;
                        drop(e.into_inner());
                    }
                }
            }
            let _popped = consumer.join().unwrap();
            assert!(tx.is_closed());
            assert!(tx.try_push(Counted(drops.clone())).unwrap_err().is_closed());
            returned += 1;
            drop(tx);
            let total = accepted + returned;
            assert_eq!(total, 4);
            assert_eq!(
                drops.load(std::sync::atomic::Ordering::Relaxed),
                total,
                "every value dropped exactly once"
            );
        });
    }

    /// The doorbell: a consumer that parks must be woken by the producer.
    /// loom reports a deadlock if a wake-up is lost (the consumer waits on
    /// `bell` forever).
    fn park_wake(values: u32) {
        ::loom::model(move || {
            let (mut tx, mut rx) = channel::<u32>(2);
            let bell = ::loom::sync::Arc::new(Notify::new());
            let producer_bell = bell.clone();
            let producer = thread::spawn(move || {
                for v in 0..values {
                    push_all(&mut tx, [v]);
                    if tx.needs_wakeup() {
                        producer_bell.notify();
                    }
                }
                if tx.close() {
                    producer_bell.notify();
                }
            });
            let mut expected = 0;
            loop {
                match rx.try_pop() {
                    Ok(v) => {
                        assert_eq!(v, expected);
                        expected += 1;
                    }
                    Err(TryRecvError::Empty) => {
                        if rx.prepare_park() {
                            bell.wait();
                            rx.cancel_park();
                        }
                    }
                    Err(TryRecvError::Closed) => break,
                }
            }
            assert_eq!(expected, values);
            producer.join().unwrap();
        });
    }

    #[test]
    fn park_wake_one_value_never_loses_a_wakeup() {
        park_wake(1);
    }

    #[test]
    fn park_wake_two_values_never_loses_a_wakeup() {
        park_wake(2);
    }

    /// One consumer parks on two rings with one barrier
    /// (`prepare_park_all`); the producer of both (one thread, to keep the
    /// model small) pushes a value into each. A lost wake-up on either ring
    /// leaves the consumer waiting forever, which loom reports as a deadlock.
    #[test]
    fn park_all_two_rings_never_loses_a_wakeup() {
        ::loom::model(|| {
            let bell = ::loom::sync::Arc::new(Notify::new());
            let (mut txs, mut rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| channel::<u32>(2)).unzip();
            let producer = {
                let bell = bell.clone();
                thread::spawn(move || {
                    for (i, tx) in txs.iter_mut().enumerate() {
                        push_all(tx, [i as u32]);
                        if tx.needs_wakeup() {
                            bell.notify();
                        }
                    }
                    // Keep the rings open until the consumer is done: a
                    // closed ring refuses every park.
                    txs
                })
            };
            let mut got = [None, None];
            loop {
                for (i, rx) in rxs.iter_mut().enumerate() {
                    if let Ok(v) = rx.try_pop() {
                        got[i] = Some(v);
                    }
                }
                if got.iter().all(Option::is_some) {
                    break;
                }
                if Consumer::prepare_park_all(&mut rxs) {
                    bell.wait();
                    for rx in &mut rxs {
                        rx.cancel_park();
                    }
                }
            }
            assert_eq!(got, [Some(0), Some(1)]);
            drop(producer.join().unwrap());
        });
    }

    /// `try_pop` hands slots back in groups (here a group of 2 in a ring of
    /// 2, larger than any real ring's, so that loom's small model meets every
    /// case) and all of them when it finds the ring empty: the producer gets
    /// every slot back, never writes one the consumer is still reading (loom
    /// checks the cells), and the values arrive in order.
    #[test]
    fn release_groups_hand_back_every_slot() {
        ::loom::model(|| {
            let (mut tx, mut rx) = channel_inner::<u32>(2, WakeBarrier::Asymmetric, 0, 2);
            assert_eq!(rx.release_group(), 2);
            // Two laps: the second reuses both cells.
            let producer = thread::spawn(move || push_all(&mut tx, 0..4));
            let mut expected = 0;
            while expected < 4 {
                match rx.try_pop() {
                    Ok(v) => {
                        assert_eq!(v, expected);
                        expected += 1;
                    }
                    Err(TryRecvError::Empty) => spin_loop(),
                    Err(TryRecvError::Closed) => panic!("closed before all values arrived"),
                }
            }
            producer.join().unwrap();
        });
    }
}
