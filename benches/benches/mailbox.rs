//! Mailbox ring: one-way cross-core throughput, ringwire's SPSC ring against
//! crossbeam's `ArrayQueue` and glommio's `shared_channel`.
//!
//! The producer runs pinned to core 0, the consumer to core 1; each sample
//! sends `iters` messages of 8 B, 16 B or 64 B and is timed from the producer's
//! first push to the consumer's last pop (thread and executor start-up are
//! outside the timed region). "Batch" is how many messages each side moves
//! per turn: ringwire publishes its index once per batch (`push_slice`,
//! `pop_batch`) and checks `needs_wakeup` once per batch, as the runtime
//! does (the ring's park barrier, printed at the start, decides what that
//! check costs); crossbeam and glommio have no batch API and move the same
//! number of messages one call at a time. All queues hold 1024 messages.
//! Both sides spin (ringwire, crossbeam) or await (glommio, its normal use)
//! when the queue is full or empty.
//!
//! Run: `nice -n 10 cargo bench -p ringwire-benches --bench mailbox`

use std::hint::{black_box, spin_loop};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use ringwire_runtime::mailbox::ring::channel;

/// Messages each queue holds.
const CAPACITY: usize = 1024;
/// Messages moved per turn.
const BATCHES: [usize; 3] = [1, 16, 64];
/// Producer and consumer cores.
const PRODUCER_CORE: usize = 0;
const CONSUMER_CORE: usize = 1;

fn pin(core: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("warning: could not pin to core {core}; figures will be noisy");
    }
}

/// The message sent as number `i` (distinct bytes so nothing is constant).
fn message<const N: usize>(i: u64) -> [u8; N] {
    [i as u8; N]
}

/// Runs `producer` on core 0 and `consumer` on core 1; returns the time from
/// the producer's start to the consumer's end.
fn run_pair(
    producer: impl FnOnce() + Send + 'static,
    consumer: impl FnOnce() + Send + 'static,
) -> Duration {
    let barrier = Arc::new(Barrier::new(2));
    let consumer = {
        let barrier = barrier.clone();
        thread::spawn(move || {
            pin(CONSUMER_CORE);
            barrier.wait();
            consumer();
            Instant::now()
        })
    };
    let producer = thread::spawn(move || {
        pin(PRODUCER_CORE);
        barrier.wait();
        let start = Instant::now();
        producer();
        start
    });
    let start = producer.join().unwrap();
    let end = consumer.join().unwrap();
    end.duration_since(start)
}

fn ringwire<const N: usize>(iters: u64, batch: usize) -> Duration {
    let (mut tx, mut rx) = channel::<[u8; N]>(CAPACITY);
    let producer = move || {
        let buffer: Vec<[u8; N]> = (0..batch as u64).map(message).collect();
        let mut sent = 0;
        while sent < iters {
            let pushed = if batch == 1 {
                match tx.try_push(message(sent)) {
                    Ok(()) => 1,
                    Err(e) if e.is_full() => 0,
                    Err(_) => panic!("consumer gone"),
                }
            } else {
                let n = batch.min((iters - sent) as usize);
                tx.push_slice(&buffer[..n]).expect("consumer gone")
            };
            if pushed == 0 {
                spin_loop();
                continue;
            }
            sent += pushed as u64;
            // The consumer never parks here; the check is part of the cost.
            if tx.needs_wakeup() {
                unreachable!("consumer parked");
            }
        }
    };
    let consumer = move || {
        let mut received = 0;
        while received < iters {
            if batch == 1 {
                match rx.try_pop() {
                    Ok(m) => {
                        black_box(m);
                        received += 1;
                    }
                    Err(_) => spin_loop(),
                }
            } else {
                match rx.pop_batch(batch) {
                    Ok(messages) => {
                        for m in messages {
                            black_box(m);
                            received += 1;
                        }
                    }
                    Err(_) => spin_loop(),
                }
            }
        }
    };
    run_pair(producer, consumer)
}

fn crossbeam<const N: usize>(iters: u64, batch: usize) -> Duration {
    let queue = Arc::new(ArrayQueue::<[u8; N]>::new(CAPACITY));
    let tx = queue.clone();
    let producer = move || {
        let mut sent = 0;
        while sent < iters {
            let n = (batch as u64).min(iters - sent);
            for _ in 0..n {
                let mut m = message(sent);
                while let Err(back) = tx.push(m) {
                    m = back;
                    spin_loop();
                }
                sent += 1;
            }
        }
    };
    let consumer = move || {
        let mut received = 0;
        while received < iters {
            let mut got = 0;
            while got < batch {
                match queue.pop() {
                    Some(m) => {
                        black_box(m);
                        got += 1;
                    }
                    None => break,
                }
            }
            if got == 0 {
                spin_loop();
            }
            received += got as u64;
        }
    };
    run_pair(producer, consumer)
}

fn glommio<const N: usize>(iters: u64, batch: usize) -> Duration {
    let (sender, receiver) = shared_channel::new_bounded::<[u8; N]>(CAPACITY);
    let barrier = Arc::new(Barrier::new(2));
    let consumer_barrier = barrier.clone();
    let consumer = LocalExecutorBuilder::new(Placement::Fixed(CONSUMER_CORE))
        .name("mailbox-consumer")
        .spawn(move || async move {
            let receiver = receiver.connect().await;
            consumer_barrier.wait();
            let mut received = 0;
            while received < iters {
                for _ in 0..(batch as u64).min(iters - received) {
                    black_box(receiver.recv().await.expect("producer gone"));
                    received += 1;
                }
            }
            Instant::now()
        })
        .expect("glommio consumer executor");
    let producer = LocalExecutorBuilder::new(Placement::Fixed(PRODUCER_CORE))
        .name("mailbox-producer")
        .spawn(move || async move {
            let sender = sender.connect().await;
            barrier.wait();
            let start = Instant::now();
            let mut sent = 0;
            while sent < iters {
                for _ in 0..(batch as u64).min(iters - sent) {
                    sender.send(message(sent)).await.expect("consumer gone");
                    sent += 1;
                }
            }
            start
        })
        .expect("glommio producer executor");
    let start = producer.join().expect("glommio producer");
    let end = consumer.join().expect("glommio consumer");
    end.duration_since(start)
}

fn bench_size<const N: usize>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("mailbox/{N}B"));
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for batch in BATCHES {
        group.bench_with_input(BenchmarkId::new("ringwire", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| ringwire::<N>(iters, batch))
        });
        group.bench_with_input(
            BenchmarkId::new("crossbeam_arrayqueue", batch),
            &batch,
            |b, &batch| b.iter_custom(|iters| crossbeam::<N>(iters, batch)),
        );
        group.bench_with_input(
            BenchmarkId::new("glommio_shared_channel", batch),
            &batch,
            |b, &batch| b.iter_custom(|iters| glommio::<N>(iters, batch)),
        );
    }
    group.finish();
}

fn mailbox(c: &mut Criterion) {
    // Asymmetric unless the kernel refuses membarrier (see ringwire-ring).
    let (tx, _rx) = channel::<u8>(1);
    eprintln!("ringwire ring park barrier: {:?}", tx.wake_barrier());
    bench_size::<8>(c);
    bench_size::<16>(c);
    bench_size::<64>(c);
}

criterion_group!(benches, mailbox);
criterion_main!(benches);
