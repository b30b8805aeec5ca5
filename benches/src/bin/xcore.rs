//! xcore: cross-core messaging inside a ringwire runtime, two pinned cores.
//!
//! For each doorbell (MSG_RING, eventfd), in one run:
//!
//! - `wake`: the receiver on core 1 parks (nothing to do) before every message;
//!   the sender on core 0 sleeps 200 us, then sends its `Instant::now()`
//!   through a typed channel. The receiver records now - sent: the wake-up
//!   latency of a parked core, doorbell included.
//! - `submit_to`: core 0 calls `submit_to(1, ..)` with an empty future, one at
//!   a time after a 200 us pause (so core 1 is parked); round-trip time.
//! - `stream`: core 0 sends 64-byte messages through a typed channel in
//!   batches of 64 as fast as it can for the duration; messages/s received.
//!
//! ```text
//! xcore [--samples 5000] [--duration 2] [--cpus 0,1]
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use ringwire::runtime::mailbox::channel;
use ringwire::runtime::time::sleep;
use ringwire::runtime::{submit_to, Doorbell, Placement, Runtime};
use ringwire_benches::cli::{parse_cpu_list, parse_duration, CpuList};

/// Cross-core messaging inside a ringwire runtime on two pinned cores:
/// wake-up latency, submit_to round trips and channel throughput, for each
/// doorbell.
#[derive(Parser, Debug)]
#[command(name = "xcore", version)]
struct Opts {
    /// Samples per latency test.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    samples: usize,
    /// Duration of the throughput test, in seconds (or 2.5s, 500ms).
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_duration)]
    duration: Duration,
    /// The two CPUs: sender core, then receiver core (taskset syntax).
    #[arg(long, value_name = "LIST", default_value = "0,1", value_parser = two_cpus)]
    cpus: CpuList,
}

/// A CPU list of exactly two CPUs.
fn two_cpus(v: &str) -> Result<CpuList, String> {
    let list = parse_cpu_list(v)?;
    if list.0.len() != 2 {
        return Err("exactly two CPUs: sender, receiver".into());
    }
    Ok(list)
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn report(name: &str, doorbell: Doorbell, h: &Histogram<u64>) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name:>10} | {:>8} | n={:>6} | p50 {:>7.1} us | p99 {:>7.1} us | p99.9 {:>7.1} us | max {:>8.1} us",
        format!("{doorbell:?}"),
        h.len(),
        us(0.5),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    );
    println!(
        "RESULT bench=xcore test={name} doorbell={doorbell:?} n={} p50_us={:.2} p99_us={:.2} p999_us={:.2} max_us={:.2}",
        h.len(),
        us(0.5),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    );
}

fn run(o: &Opts, doorbell: Doorbell) -> Result<(), String> {
    let rt = Runtime::builder()
        .placement(Placement::Cpus(o.cpus.0.clone()))
        .doorbell(doorbell)
        .build()
        .map_err(|e| e.to_string())?;

    // Wake-up latency of a parked receiver.
    let samples = o.samples;
    let (mut tx, mut rx) = channel::<Instant>(1024);
    let receiver = rt.spawn_on(1, move || async move {
        let mut h = hist();
        while let Some(sent) = rx.recv().await {
            let _ = h.record(sent.elapsed().as_nanos() as u64);
        }
        h
    });
    rt.block_on(0, move || async move {
        for _ in 0..samples {
            sleep(Duration::from_micros(200)).await;
            if tx.try_send(Instant::now()).is_err() {
                break;
            }
        }
    })
    .map_err(|e| e.to_string())?;
    let h = receiver.join().map_err(|e| e.to_string())?;
    report("wake", doorbell, &h);

    // submit_to round trip.
    let h = rt
        .block_on(0, move || async move {
            let mut h = hist();
            for _ in 0..samples {
                sleep(Duration::from_micros(200)).await;
                let t = Instant::now();
                if submit_to(1, || async {}).await.is_err() {
                    break;
                }
                let _ = h.record(t.elapsed().as_nanos() as u64);
            }
            h
        })
        .map_err(|e| e.to_string())?;
    report("submit_to", doorbell, &h);

    // Streaming 64-byte messages.
    let duration = o.duration;
    let (mut tx, mut rx) = channel::<[u8; 64]>(1024);
    let receiver = rt.spawn_on(1, move || async move {
        let mut n = 0u64;
        let mut check = 0u8;
        while let Some(m) = rx.recv().await {
            check ^= m[0];
            n += 1;
        }
        (n, check)
    });
    let sent = rt
        .block_on(0, move || async move {
            let start = Instant::now();
            let mut sent = 0u64;
            let msg = [7u8; 64];
            while start.elapsed() < duration {
                match tx.send_batch(std::iter::repeat_n(msg, 64)) {
                    Ok(0) => ringwire::runtime::yield_now().await,
                    Ok(k) => sent += k as u64,
                    Err(_) => break,
                }
            }
            (sent, start.elapsed())
        })
        .map_err(|e| e.to_string())?;
    let (received, _) = receiver.join().map_err(|e| e.to_string())?;
    if received != sent.0 {
        return Err(format!("stream: sent {} but received {received}", sent.0));
    }
    let rate = received as f64 / sent.1.as_secs_f64();
    println!(
        "{:>10} | {:>8} | {:>12.0} msgs/s (64 B, batches of 64)",
        "stream",
        format!("{doorbell:?}"),
        rate
    );
    println!(
        "RESULT bench=xcore test=stream doorbell={doorbell:?} msgs={received} msgs_per_s={rate:.0}"
    );
    rt.shutdown(Duration::from_secs(2));
    Ok(())
}

fn main() -> ExitCode {
    // Bad arguments: clap prints the error and exits with code 2.
    let o = Opts::parse();
    println!(
        "cross-core messaging, sender core on CPU {}, receiver core on CPU {}",
        o.cpus.0[0], o.cpus.0[1]
    );
    for doorbell in [Doorbell::MsgRing, Doorbell::EventFd] {
        if let Err(e) = run(&o, doorbell) {
            eprintln!("xcore: {doorbell:?}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
