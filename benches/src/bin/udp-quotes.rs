//! udp-quotes: 64-byte market-data quotes over `udp://`, unicast or
//! multicast, from a sender core to a receiver core of one runtime.
//!
//! The quote is the Psyne seed's: timestamp, symbol id, bid and ask price,
//! bid and ask volume; archived it is 32 bytes, so with the 32-byte datagram
//! header every datagram is 64 bytes. The sender stamps each quote with the
//! time since the start of the process (both cores read one clock); the
//! receiver records now - stamp, the one-way latency, in an HDR histogram.
//!
//! - `--rate 0` (default): flat out, `--batch` quotes per loop turn (they
//!   leave in one submission: GSO runs or one `SENDMSG` each, `--send-mode`);
//!   reports quotes/s received, what the receiver lost (its socket buffer
//!   overflowed), and each side's CPU time per quote.
//! - `--rate N`: N quotes/s, sent one at a time when due (the sender core
//!   spins on its clock); the latency figures mean most here.
//!
//! Multicast needs a route for the group (the `benches/udp.sh` script runs
//! the multicast cases inside a network namespace it creates).
//!
//! ```text
//! udp-quotes [--target unicast|multicast] [--send-mode gso|per-datagram]
//!            [--rate 0] [--batch 32] [--duration 3] [--warmup 1]
//!            [--cpus 0,1] [--idle park|spin|poll] [--port 9600]
//!            [--group 239.255.0.1] [--recv-buffers 256]
//! ```
//!
//! The receiver's core has `--recv-buffers` 4 KiB receive buffers (one per
//! datagram in flight); a small ring keeps the buffers the kernel copies
//! into warm in the cache.
//!
//! Ends with one `RESULT key=value ...` line.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringwire::proto::rkyv;
use ringwire::runtime::{yield_now, IdleStrategy, Runtime};
use ringwire::transports::udp::{self, SendMode, UdpConfig};
use ringwire::transports::{stats, type_id, Config, Endpoint, Message};

/// A market-data quote (the Psyne seed's `MarketData`).
#[derive(rkyv::Archive, rkyv::Serialize, Debug, Clone, Copy)]
#[rkyv(crate = rkyv)]
struct Quote {
    /// Nanoseconds since the start of this process, when sent.
    timestamp: u64,
    symbol_id: u32,
    bid_price: f32,
    ask_price: f32,
    bid_volume: u32,
    ask_volume: u32,
}

impl Message for Quote {
    const TYPE_ID: u32 = type_id("bench.udp.Quote");
    const NAME: &'static str = "bench.udp.Quote";
}

/// The symbol of the end-of-run markers.
const STOP: u32 = u32::MAX;

fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn quote(i: u64) -> Quote {
    let bid = 100.0 + (i % 10) as f32 * 0.1;
    Quote {
        timestamp: now_ns(),
        symbol_id: (i % 100) as u32,
        bid_price: bid,
        ask_price: bid + 0.01,
        bid_volume: 1000 + (i % 1000) as u32,
        ask_volume: 1000 + ((i + 500) % 1000) as u32,
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[derive(Clone)]
struct Opts {
    multicast: bool,
    mode: SendMode,
    rate: u64,
    batch: usize,
    duration: Duration,
    warmup: Duration,
    cpus: Vec<usize>,
    idle: IdleStrategy,
    idle_name: String,
    port: u16,
    group: Ipv4Addr,
    recv_buffers: u16,
}

const USAGE: &str =
    "usage: udp-quotes [--target unicast|multicast] [--send-mode gso|per-datagram] \
[--rate 0] [--batch 32] [--duration 3] [--warmup 1] [--cpus 0,1] [--idle park|spin|poll] \
[--port 9600] [--group 239.255.0.1] [--recv-buffers 256]";

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        multicast: false,
        mode: SendMode::Gso,
        rate: 0,
        batch: 32,
        duration: Duration::from_secs(3),
        warmup: Duration::from_secs(1),
        cpus: vec![0, 1],
        idle: IdleStrategy::Park,
        idle_name: "park".into(),
        port: 9600,
        group: Ipv4Addr::new(239, 255, 0, 1),
        recv_buffers: 256,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let val = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let secs = |v: &str| -> Result<Duration, String> {
            let s: f64 = v.parse().map_err(|e| format!("{flag} {v}: {e}"))?;
            Duration::try_from_secs_f64(s).map_err(|e| format!("{flag} {v}: {e}"))
        };
        match flag.as_str() {
            "--target" => {
                o.multicast = match val.as_str() {
                    "unicast" => false,
                    "multicast" => true,
                    v => return Err(format!("--target {v}: unicast or multicast")),
                }
            }
            "--send-mode" => {
                o.mode = match val.as_str() {
                    "gso" => SendMode::Gso,
                    "per-datagram" => SendMode::PerDatagram,
                    v => return Err(format!("--send-mode {v}: gso or per-datagram")),
                }
            }
            "--rate" => o.rate = val.parse().map_err(|e| format!("--rate {val}: {e}"))?,
            "--batch" => {
                o.batch = val.parse().map_err(|e| format!("--batch {val}: {e}"))?;
                if o.batch == 0 {
                    return Err("--batch must be at least 1".into());
                }
            }
            "--duration" => o.duration = secs(&val)?,
            "--warmup" => o.warmup = secs(&val)?,
            "--cpus" => {
                o.cpus = val
                    .split(',')
                    .map(|c| c.parse().map_err(|e| format!("--cpus {c}: {e}")))
                    .collect::<Result<_, _>>()?;
                if o.cpus.len() != 2 {
                    return Err("--cpus takes two CPUs: sender,receiver".into());
                }
            }
            "--idle" => {
                o.idle = val.parse().map_err(|e| format!("--idle {e}"))?;
                o.idle_name = val;
            }
            "--port" => o.port = val.parse().map_err(|e| format!("--port {val}: {e}"))?,
            "--group" => {
                o.group = val.parse().map_err(|e| format!("--group {val}: {e}"))?;
                if !o.group.is_multicast() {
                    return Err(format!("--group {val} is not a multicast address"));
                }
            }
            "--recv-buffers" => {
                o.recv_buffers = val
                    .parse()
                    .map_err(|e| format!("--recv-buffers {val}: {e}"))?
            }
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// What the receiver measured.
struct RecvReport {
    measured: u64,
    window: Duration,
    hist: Histogram<u64>,
    cpu: Duration,
    received: u64,
    lost: u64,
    late: u64,
    duplicates: u64,
}

/// What the sender did.
struct SendReport {
    sent: u64,
    measured: u64,
    cpu: Duration,
    sendmsgs: u64,
    gso_sends: u64,
}

fn config() -> Config {
    Config::with_types::<(Quote,)>().expect("one message type")
}

async fn receive(endpoint: Endpoint, warm_end: u64, end: u64) -> Result<RecvReport, String> {
    let sock = udp::bind(&endpoint, &config()).map_err(|e| e.to_string())?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let (mut measured, mut received) = (0u64, 0u64);
    let (mut cpu0, mut cpu1) = (None, None);
    loop {
        let m = sock
            .recv::<Quote>()
            .await
            .map_err(|e| format!("receive: {e}"))?;
        let now = now_ns();
        if m.symbol_id.to_native() == STOP {
            break;
        }
        received += 1;
        let ts = m.timestamp.to_native();
        if ts >= warm_end && ts < end {
            if cpu0.is_none() {
                cpu0 = Some(thread_cpu());
            }
            measured += 1;
            let _ = hist.record(now.saturating_sub(ts).max(1));
        } else if ts >= end && cpu1.is_none() {
            cpu1 = Some(thread_cpu());
        }
    }
    let cpu1 = cpu1.unwrap_or_else(thread_cpu);
    let senders = sock.senders();
    let s = senders.first().copied();
    Ok(RecvReport {
        measured,
        window: Duration::from_nanos(end - warm_end),
        hist,
        cpu: cpu1.saturating_sub(cpu0.unwrap_or(cpu1)),
        received,
        lost: s.map_or(0, |s| s.lost()),
        late: s.map_or(0, |s| s.late),
        duplicates: s.map_or(0, |s| s.duplicates),
    })
}

async fn send(endpoint: Endpoint, o: Opts, warm_end: u64, end: u64) -> Result<SendReport, String> {
    let cfg = UdpConfig::new().send_mode(o.mode);
    let sock = udp::connect_with(&endpoint, &config(), &cfg).map_err(|e| e.to_string())?;
    let (mut sent, mut measured) = (0u64, 0u64);
    let mut cpu0 = None;
    let mut cpu1 = None;
    let interval = 1_000_000_000u64.checked_div(o.rate).unwrap_or(0);
    let mut due = now_ns();
    loop {
        let now = now_ns();
        if now >= end {
            cpu1 = cpu1.or_else(|| Some(thread_cpu()));
            break;
        }
        if now >= warm_end && cpu0.is_none() {
            cpu0 = Some(thread_cpu());
        }
        if o.rate == 0 {
            for _ in 0..o.batch {
                sock.send(&quote(sent))
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                sent += 1;
            }
            if now >= warm_end {
                measured += o.batch as u64;
            }
        } else {
            while due <= now {
                sock.send(&quote(sent))
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                sent += 1;
                if now >= warm_end {
                    measured += 1;
                }
                due += interval;
            }
        }
        yield_now().await;
    }
    let cpu = cpu1
        .unwrap_or_default()
        .saturating_sub(cpu0.unwrap_or_default());
    sock.flush().await.map_err(|e| format!("flush: {e}"))?;
    let udp_stats = stats::snapshot().udp;
    // End markers: several, in case the receiver's socket buffer is full.
    // Once the receiver has closed its socket, the kernel refuses the rest
    // (ECONNREFUSED): expected, ignored.
    for _ in 0..8 {
        ringwire::runtime::time::sleep(Duration::from_millis(20)).await;
        let mut q = quote(sent);
        q.symbol_id = STOP;
        let _ = sock.send(&q).await;
        let _ = sock.flush().await;
    }
    Ok(SendReport {
        sent,
        measured,
        cpu,
        sendmsgs: udp_stats.sendmsgs,
        gso_sends: udp_stats.gso_sends,
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn run(o: Opts) -> Result<(), String> {
    let rt = Runtime::builder()
        .cpus(o.cpus.clone())
        .idle(o.idle)
        .recv_buffers(o.recv_buffers)
        .recv_buffer_size(4096)
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let endpoint: Endpoint = if o.multicast {
        format!(
            "udp://{}:{}?iface=127.0.0.1&ttl=1&loop=1&rcvbuf=4M",
            o.group, o.port
        )
    } else {
        format!("udp://127.0.0.1:{}?rcvbuf=4M", o.port)
    }
    .parse()
    .map_err(|e| format!("endpoint: {e}"))?;
    let start = now_ns() + 100_000_000;
    let warm_end = start + o.warmup.as_nanos() as u64;
    let end = warm_end + o.duration.as_nanos() as u64;
    let ep = endpoint.clone();
    let receiver = rt.spawn_on(1, move || receive(ep, warm_end, end));
    let so = o.clone();
    let sender = rt.spawn_on(0, move || async move {
        // Let the receiver bind (and join) first.
        ringwire::runtime::time::sleep(Duration::from_millis(100)).await;
        send(endpoint, so, warm_end, end).await
    });
    let s = sender.join().map_err(|e| format!("sender: {e:?}"))??;
    let r = match receiver.join_timeout(Duration::from_secs(5)) {
        Some(r) => r.map_err(|e| format!("receiver: {e:?}"))??,
        None => {
            rt.shutdown(Duration::from_secs(1));
            return Err("the receiver never saw an end marker (all lost?)".into());
        }
    };
    rt.shutdown(Duration::from_secs(1));
    let secs = r.window.as_secs_f64();
    let rate = r.measured as f64 / secs;
    let us = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
    let per = |cpu: Duration, n: u64| {
        if n == 0 {
            0.0
        } else {
            cpu.as_nanos() as f64 / n as f64
        }
    };
    let target = if o.multicast { "multicast" } else { "unicast" };
    let mode = match o.mode {
        SendMode::Gso => "gso",
        _ => "per-datagram",
    };
    println!("cpu: {}", cpu_model());
    println!(
        "{target} {mode} rate={} batch={} idle={}: {:.0} quotes/s received, sent {} ({} measured), \
         received {}, lost {}, late {}, duplicates {}",
        o.rate, o.batch, o.idle_name, rate, s.sent, s.measured, r.received, r.lost, r.late, r.duplicates
    );
    println!(
        "latency us: p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}; cpu ns/quote: sender {:.0} receiver {:.0}; \
         sendmsg {} (gso {})",
        us(0.5),
        us(0.99),
        us(0.999),
        r.hist.max() as f64 / 1000.0,
        per(s.cpu, s.measured),
        per(r.cpu, r.measured),
        s.sendmsgs,
        s.gso_sends
    );
    println!(
        "RESULT target={target} mode={mode} rate={} batch={} idle={} quotes_per_s={:.0} sent={} received={} \
         lost={} p50_us={:.1} p99_us={:.1} p999_us={:.1} sender_ns_per_quote={:.0} \
         receiver_ns_per_quote={:.0} sendmsgs={} gso_sends={}",
        o.rate,
        o.batch,
        o.idle_name,
        rate,
        s.sent,
        r.received,
        r.lost,
        us(0.5),
        us(0.99),
        us(0.999),
        per(s.cpu, s.measured),
        per(r.cpu, r.measured),
        s.sendmsgs,
        s.gso_sends
    );
    Ok(())
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp-quotes: {e}");
            ExitCode::FAILURE
        }
    }
}
