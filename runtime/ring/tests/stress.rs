//! Two-thread stress test of the mailbox ring through the public API.
//!
//! Small capacities keep the ring full most of the time; both sides pick
//! random batch sizes and alternate single and batch operations; the consumer
//! parks on `std::thread::park` using the ring's park/wake protocol. Every
//! message must arrive exactly once and in order, and every value must be
//! dropped exactly once. Each scenario runs with both park barriers
//! (`WakeBarrier`). Iteration counts are fixed; nothing is timed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringwire_ring::{channel_with, Closed, TryRecvError, TrySendError, WakeBarrier};

/// Messages per scenario.
const MESSAGES: u64 = 200_000;

/// A parked consumer that sees no progress for this long has lost a wake-up
/// (a watchdog instead of a hung test; it never fires on a correct ring).
const LOST_WAKEUP: Duration = Duration::from_secs(20);

/// xorshift64*: deterministic per-seed batch sizes without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// How many `Msg` were built and dropped.
#[derive(Default)]
struct Counts {
    built: AtomicUsize,
    dropped: AtomicUsize,
}

impl Counts {
    fn assert_balanced(&self, what: &str) {
        assert_eq!(
            self.dropped.load(Ordering::Relaxed),
            self.built.load(Ordering::Relaxed),
            "{what}: values dropped != values built"
        );
    }
}

/// A message that counts its drops and carries a heap allocation (so that a
/// double drop or a leak is also visible to miri/ASan if run there).
struct Msg {
    seq: u64,
    check: Box<u64>,
    counts: Arc<Counts>,
}

impl Msg {
    fn new(seq: u64, counts: &Arc<Counts>) -> Self {
        counts.built.fetch_add(1, Ordering::Relaxed);
        Self {
            seq,
            check: Box::new(!seq),
            counts: counts.clone(),
        }
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        self.counts.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Both park barriers (see the crate docs); every scenario runs with each.
const MODES: [WakeBarrier; 2] = [WakeBarrier::Symmetric, WakeBarrier::Asymmetric];

fn run_in_order(capacity: usize, seed: u64) {
    for mode in MODES {
        run_in_order_with(capacity, seed, mode);
    }
}

fn run_in_order_with(capacity: usize, seed: u64, mode: WakeBarrier) {
    let counts = Arc::new(Counts::default());
    let (mut tx, mut rx) = channel_with::<Msg>(capacity, mode);
    let consumer_done = Arc::new(AtomicBool::new(false));

    let consumer = {
        let consumer_done = consumer_done.clone();
        thread::spawn(move || {
            let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
            let mut expected = 0u64;
            let mut parks = 0u64;
            let check = |msg: Msg, expected: &mut u64| {
                assert_eq!(msg.seq, *expected, "out of order or duplicated");
                assert_eq!(*msg.check, !msg.seq, "corrupted payload");
                *expected += 1;
            };
            loop {
                let result = if rng.below(4) == 0 {
                    rx.try_pop().map(|msg| check(msg, &mut expected))
                } else {
                    let max = 1 + rng.below(2 * capacity as u64 + 2) as usize;
                    rx.pop_batch(max).map(|batch| {
                        assert!(batch.len() <= max);
                        // Sometimes stop early: the rest must stay queued.
                        let take = if rng.below(3) == 0 {
                            1 + rng.below(max as u64) as usize
                        } else {
                            max
                        };
                        for msg in batch.take(take) {
                            check(msg, &mut expected);
                        }
                    })
                };
                match result {
                    Ok(()) => {}
                    Err(TryRecvError::Closed) => break,
                    Err(TryRecvError::Empty) => {
                        if rng.below(2) == 0 {
                            thread::yield_now();
                        } else if rx.prepare_park() {
                            parks += 1;
                            let parked_at = Instant::now();
                            thread::park_timeout(LOST_WAKEUP);
                            let stuck = parked_at.elapsed() >= LOST_WAKEUP;
                            rx.cancel_park();
                            assert!(
                                !(stuck && (!rx.is_empty() || rx.is_closed())),
                                "lost wake-up: parked {LOST_WAKEUP:?} with work pending"
                            );
                        }
                    }
                }
            }
            consumer_done.store(true, Ordering::Relaxed);
            (expected, parks)
        })
    };

    let consumer_thread = consumer.thread().clone();
    let mut rng = Rng(seed);
    let mut next = 0u64;
    let mut full = 0u64;
    while next < MESSAGES {
        match rng.below(3) {
            0 => match tx.try_push(Msg::new(next, &counts)) {
                Ok(()) => next += 1,
                Err(TrySendError::Full(msg)) => {
                    assert_eq!(msg.seq, next, "Full must hand back the same value");
                    full += 1;
                }
                Err(TrySendError::Closed(_)) => panic!("consumer left early"),
            },
            _ => {
                let batch = 1 + rng.below(2 * capacity as u64 + 2);
                let mut source = (next..(next + batch).min(MESSAGES)).map(|s| Msg::new(s, &counts));
                let pushed = tx.push_iter(&mut source).expect("consumer left early");
                // What did not fit was never taken from the iterator.
                assert_eq!(
                    source.next().map(|m| m.seq),
                    Some(next + pushed as u64).filter(|&s| s < (next + batch).min(MESSAGES))
                );
                if pushed == 0 {
                    full += 1;
                }
                next += pushed as u64;
            }
        }
        if tx.needs_wakeup() {
            consumer_thread.unpark();
        }
        if rng.below(16) == 0 {
            thread::yield_now();
        }
    }
    if tx.close() {
        consumer_thread.unpark();
    }

    let (received, _parks) = consumer.join().unwrap();
    assert!(consumer_done.load(Ordering::Relaxed));
    assert_eq!(received, MESSAGES);
    counts.assert_balanced(&format!("capacity {capacity}, {mode:?}"));
    if capacity <= 2 {
        assert!(full > 0, "capacity {capacity}: the ring was never full");
    }
}

#[test]
fn in_order_exactly_once_capacity_1() {
    run_in_order(1, 1);
}

#[test]
fn in_order_exactly_once_capacity_2() {
    run_in_order(2, 2);
}

#[test]
fn in_order_exactly_once_capacity_8() {
    run_in_order(8, 3);
}

#[test]
fn in_order_exactly_once_capacity_64() {
    run_in_order(64, 4);
}

/// The consumer leaves in the middle of the stream: the producer gets its
/// values back as `Closed`, and every value built is dropped exactly once
/// (delivered, returned, or left in the ring).
#[test]
fn consumer_leaves_mid_stream_drops_each_value_once() {
    for round in 0..50u64 {
        let counts = Arc::new(Counts::default());
        let mode = MODES[round as usize % 2];
        let (mut tx, mut rx) = channel_with::<Msg>(4, mode);
        let stop_after = 100 + round * 37;
        let consumer = thread::spawn(move || {
            let mut expected = 0;
            while expected < stop_after {
                match rx.pop_batch(3) {
                    Ok(batch) => {
                        for msg in batch {
                            assert_eq!(msg.seq, expected);
                            expected += 1;
                        }
                    }
                    Err(TryRecvError::Empty) => thread::yield_now(),
                    Err(TryRecvError::Closed) => unreachable!("producer never closes first"),
                }
            }
            // Dropping `rx` here drops whatever is queued.
        });
        let mut seq = 0;
        loop {
            match tx.try_push(Msg::new(seq, &counts)) {
                Ok(()) => seq += 1,
                Err(TrySendError::Full(_)) => thread::yield_now(),
                Err(TrySendError::Closed(msg)) => {
                    assert_eq!(msg.seq, seq);
                    break;
                }
            }
        }
        assert!(seq >= stop_after);
        let mut source = (0..3).map(|s| Msg::new(s, &counts));
        assert_eq!(tx.push_iter(&mut source), Err(Closed));
        assert_eq!(source.count(), 3, "Closed push_iter took values");
        consumer.join().unwrap();
        drop(tx);
        counts.assert_balanced(&format!("round {round}"));
    }
}
